/*
 * sync_binding.c - the Node-API face of sync.c (see src/native/sync-binding.ts for the
 * contract). Only conversions; errors follow binding.c's convention: a failed system call
 * throws an Error "<syscall>: <strerror> (<ERRNAME>)" with code, errno and syscall; a bad
 * argument throws a TypeError or RangeError with code "EINVAL". Context-aware, no state.
 */
#include <limits.h>

#include <fcntl.h>
#include <sys/ioctl.h>

#include "sync.h"
#include "sync_binding.h"
#include "sys.h"
#include "throw.h"

/* The first `n` arguments; returns 0, or -1 with an exception pending. */
static int sync_args(napi_env env, napi_callback_info info, size_t n, napi_value *argv) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    napi_throw_error(env, "EIO", "napi_get_cb_info failed");
    return -1;
  }
  return 0;
}

/* A descriptor: an integral number in the int32 range. */
static int sync_fd(napi_env env, napi_value v, int *fd) {
  napi_valuetype type;
  double d;
  if (napi_typeof(env, v, &type) != napi_ok || type != napi_number ||
      napi_get_value_double(env, v, &d) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "fd must be a number");
    return -1;
  }
  if (!(d >= INT_MIN && d <= INT_MAX) || (double)(int)d != d) {
    napi_throw_range_error(env, "EINVAL", "fd must be an integer in the int32 range");
    return -1;
  }
  *fd = (int)d;
  return 0;
}

static napi_value sync_number(napi_env env, double d) {
  napi_value v;
  if (napi_create_double(env, d, &v) != napi_ok) return NULL;
  return v;
}

static napi_value js_pipe(napi_env env, napi_callback_info info) {
  (void)info;
  int fds[2];
  int r = sync_pipe(fds);
  if (r < 0) return throw_errno(env, "pipe2", -r);
  napi_value pair, a, b;
  if (napi_create_array_with_length(env, 2, &pair) != napi_ok ||
      napi_create_int32(env, fds[0], &a) != napi_ok ||
      napi_create_int32(env, fds[1], &b) != napi_ok ||
      napi_set_element(env, pair, 0, a) != napi_ok ||
      napi_set_element(env, pair, 1, b) != napi_ok) {
    sys_close(fds[0]);
    sys_close(fds[1]);
    napi_throw_error(env, "EIO", "could not return the pipe's descriptors");
    return NULL;
  }
  return pair;
}

static napi_value js_write(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  bool is = false;
  void *data = NULL;
  size_t length = 0;
  if (sync_args(env, info, 2, argv) != 0 || sync_fd(env, argv[0], &fd) != 0) return NULL;
  if (napi_is_typedarray(env, argv[1], &is) != napi_ok || !is) {
    napi_throw_type_error(env, "EINVAL", "data must be a Uint8Array");
    return NULL;
  }
  napi_typedarray_type t;
  if (napi_get_typedarray_info(env, argv[1], &t, &length, &data, NULL, NULL) != napi_ok ||
      t != napi_uint8_array) {
    napi_throw_type_error(env, "EINVAL", "data must be a Uint8Array");
    return NULL;
  }
  ssize_t r = sync_write(fd, data, length);
  if (r < 0) return throw_errno(env, "write", (int)-r);
  return sync_number(env, (double)r);
}

/* The shape shared by the two one-descriptor questions. */
static napi_value ask_fd(napi_env env, napi_callback_info info, int (*fn)(int),
                         const char *syscall) {
  napi_value argv[1];
  int fd;
  if (sync_args(env, info, 1, argv) != 0 || sync_fd(env, argv[0], &fd) != 0) return NULL;
  int r = fn(fd);
  if (r < 0) return throw_errno(env, syscall, -r);
  return sync_number(env, r);
}

static napi_value js_bytes_readable(napi_env env, napi_callback_info info) {
  return ask_fd(env, info, sync_bytes_readable, "ioctl");
}

static napi_value js_status_flags(napi_env env, napi_callback_info info) {
  return ask_fd(env, info, sync_status_flags, "fcntl");
}

static napi_value js_sync_constants(napi_env env, napi_callback_info info) {
  (void)info;
  static const struct {
    const char *name;
    double value;
  } table[] = {
      {"O_ACCMODE", O_ACCMODE},
      {"O_RDONLY", O_RDONLY},
  };
  napi_value c;
  if (napi_create_object(env, &c) != napi_ok) return NULL;
  for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
    napi_value v = sync_number(env, table[i].value);
    if (v == NULL || napi_set_named_property(env, c, table[i].name, v) != napi_ok) return NULL;
  }
  if (napi_object_freeze(env, c) != napi_ok) return NULL;
  return c;
}

napi_value sync_binding_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"pipe", NULL, js_pipe, NULL, NULL, NULL, napi_enumerable, NULL},
      {"write", NULL, js_write, NULL, NULL, NULL, napi_enumerable, NULL},
      {"bytesReadable", NULL, js_bytes_readable, NULL, NULL, NULL, napi_enumerable, NULL},
      {"statusFlags", NULL, js_status_flags, NULL, NULL, NULL, napi_enumerable, NULL},
      {"syncConstants", NULL, js_sync_constants, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) != napi_ok) {
    return NULL;
  }
  return exports;
}
