/* kernel_binding.h - registers kernel_binding.c's functions on the addon's exports. */
#ifndef DMABUF_KERNEL_BINDING_H
#define DMABUF_KERNEL_BINDING_H

#include <node_api.h>

/* Adds the kernel interfaces' functions and `kernelConstants`; 0, or -1 with an exception. */
int kernel_binding_init(napi_env env, napi_value exports);

#endif /* DMABUF_KERNEL_BINDING_H */
