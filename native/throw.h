/*
 * throw.h - how every binding (binding.c, kernel_binding.c, sync_binding.c) reports a failed
 * system call to JavaScript: an Error whose message is "<syscall>: <description> (<ERRNAME>)",
 * with code (the errno name), errno and syscall. One implementation, so that the three agree.
 */
#ifndef DMABUF_THROW_H
#define DMABUF_THROW_H

#include <node_api.h>

/*
 * Throws Error(message) with code = errno name, errno = err and, when not NULL, syscall.
 * Nothing when an exception is already pending.
 */
void throw_error(napi_env env, int err, const char *syscall, const char *message);

/*
 * A failed system call (err > 0). `desc` describes the error, or NULL for strerror's text.
 * Returns NULL, for `return throw_errno_desc(...)`.
 */
napi_value throw_errno_desc(napi_env env, const char *syscall, int err, const char *desc);

/* The same with strerror's text. */
napi_value throw_errno(napi_env env, const char *syscall, int err);

#endif /* DMABUF_THROW_H */
