/* sync_binding.h - registers the fence-file functions of sync_binding.c on the addon. */
#ifndef DMABUF_SYNC_BINDING_H
#define DMABUF_SYNC_BINDING_H

#include <node_api.h>

/* Defines the functions on `exports`; returns exports, or NULL with an exception pending. */
napi_value sync_binding_init(napi_env env, napi_value exports);

#endif /* DMABUF_SYNC_BINDING_H */
