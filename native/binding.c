/*
 * binding.c - the Node-API face of the addon (see src/native/binding.ts for the contract).
 *
 * This file only converts arguments and results and owns the lifetime of two native
 * resources (mappings and poll watchers); every system call goes through sys.c.
 * It is context-aware (NAPI_MODULE_INIT) and keeps no mutable global state, so it loads in
 * worker threads.
 *
 * Errors: a failed system call throws an Error whose message is
 * "<syscall>: <strerror> (<ERRNAME>)" with properties code (the errno name), errno
 * (positive) and syscall. A bad argument throws a TypeError (or RangeError) with code
 * "EINVAL" and no syscall. A call on a closed handle throws an Error with code "EBADF".
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <errno.h>
#include <poll.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/magic.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <asm-generic/hugetlb_encode.h>
#include <node_api.h>
#include <uv.h>

#include "sys.h"
#include "throw.h"
#include "diag.h"
#include "views.h"
#include "sync_binding.h"
#include <poll.h>
#include "kernel_binding.h"

/* Newer than the C library's headers on some systems (values from the kernel's uapi). */
#ifndef MFD_HUGE_2MB
#define MFD_HUGE_2MB HUGETLB_FLAG_ENCODE_2MB
#endif
#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U /* linux/memfd.h, Linux 6.3 */
#endif
#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010 /* linux/fcntl.h, Linux 5.1 */
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* asm-generic/mman-common.h, Linux 5.14 */
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define MAX_SAFE_INTEGER 9007199254740991.0
#define MAX_VIEW_LENGTH 4294967296ULL /* V8's largest ArrayBuffer on 64-bit (Node 20) */

/* ------------------------------------------------------------------------------------ */
/* errors                                                                               */
/* ------------------------------------------------------------------------------------ */

static int exception_pending(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  return pending;
}

/* A failure that is not a system call's (a closed handle, ...): code and errno only. */
static napi_value throw_code(napi_env env, int err, const char *message) {
  throw_error(env, err, NULL, message);
  return NULL;
}

/* A bad argument: TypeError (or RangeError) with code EINVAL, no errno, no syscall. */
static napi_value throw_arg(napi_env env, int range, const char *message) {
  if (exception_pending(env)) return NULL;
  if (range) {
    napi_throw_range_error(env, "EINVAL", message);
  } else {
    napi_throw_type_error(env, "EINVAL", message);
  }
  return NULL;
}

/* A Node-API call itself failed: throws (unless an exception is already pending). */
static void throw_napi(napi_env env) {
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  const char *message = (info != NULL && info->error_message != NULL)
                            ? info->error_message
                            : "Node-API call failed";
  if (exception_pending(env)) return;
  napi_throw_error(env, "EIO", message);
}

#define NAPI(call)                   \
  do {                               \
    if ((call) != napi_ok) {         \
      throw_napi(env);               \
      return NULL;                   \
    }                                \
  } while (0)

/* ------------------------------------------------------------------------------------ */
/* arguments                                                                            */
/* ------------------------------------------------------------------------------------ */

#define ARGS(n)                                                          \
  napi_value argv[(n) > 0 ? (n) : 1];                                   \
  do {                                                                   \
    size_t argc_ = (n);                                                  \
    NAPI(napi_get_cb_info(env, info, &argc_, argv, NULL, NULL));         \
  } while (0)

/* An integral JS number in [min, max]. Returns 0, or -1 with an exception thrown. */
static int arg_int(napi_env env, napi_value v, const char *what, double min, double max,
                   int64_t *out) {
  napi_valuetype type;
  char message[160];
  if (napi_typeof(env, v, &type) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  if (type != napi_number) {
    snprintf(message, sizeof(message), "%s must be a number", what);
    throw_arg(env, 0, message);
    return -1;
  }
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  if (!isfinite(d) || trunc(d) != d) {
    snprintf(message, sizeof(message), "%s must be an integer", what);
    throw_arg(env, 1, message);
    return -1;
  }
  if (d < min || d > max) {
    snprintf(message, sizeof(message), "%s must be in [%.0f, %.0f]", what, min, max);
    throw_arg(env, 1, message);
    return -1;
  }
  *out = (int64_t)d;
  return 0;
}

/* A descriptor (any int32; the kernel reports EBADF for a bad one). */
static int arg_fd(napi_env env, napi_value v, const char *what, int *out) {
  int64_t x;
  if (arg_int(env, v, what, -2147483648.0, 2147483647.0, &x) != 0) return -1;
  *out = (int)x;
  return 0;
}

static int arg_i32(napi_env env, napi_value v, const char *what, int32_t *out) {
  int64_t x;
  if (arg_int(env, v, what, -2147483648.0, 2147483647.0, &x) != 0) return -1;
  *out = (int32_t)x;
  return 0;
}

/* Flags / request codes: an int32 or uint32 (JS bit operations give negative int32s). */
static int arg_bits(napi_env env, napi_value v, const char *what, uint32_t *out) {
  int64_t x;
  if (arg_int(env, v, what, -2147483648.0, 4294967295.0, &x) != 0) return -1;
  *out = (uint32_t)x;
  return 0;
}

/* A size or offset: a non-negative safe integer. */
static int arg_size(napi_env env, napi_value v, const char *what, uint64_t *out) {
  int64_t x;
  if (arg_int(env, v, what, 0.0, MAX_SAFE_INTEGER, &x) != 0) return -1;
  *out = (uint64_t)x;
  return 0;
}

static int arg_bool(napi_env env, napi_value v, const char *what, int *out) {
  napi_valuetype type;
  if (napi_typeof(env, v, &type) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  if (type != napi_boolean) {
    char message[160];
    snprintf(message, sizeof(message), "%s must be a boolean", what);
    throw_arg(env, 0, message);
    return -1;
  }
  bool b;
  if (napi_get_value_bool(env, v, &b) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  *out = b ? 1 : 0;
  return 0;
}

/* A string as UTF-8 (malloc'ed, NUL-terminated, embedded NULs kept; *len excludes the
 * terminator). */
static int arg_string(napi_env env, napi_value v, const char *what, char **out, size_t *len) {
  napi_valuetype type;
  if (napi_typeof(env, v, &type) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  if (type != napi_string) {
    char message[160];
    snprintf(message, sizeof(message), "%s must be a string", what);
    throw_arg(env, 0, message);
    return -1;
  }
  size_t n;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &n) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  char *buf = malloc(n + 1);
  if (buf == NULL) {
    throw_errno(env, "malloc", ENOMEM);
    return -1;
  }
  if (napi_get_value_string_utf8(env, v, buf, n + 1, &n) != napi_ok) {
    free(buf);
    throw_napi(env);
    return -1;
  }
  *out = buf;
  *len = n;
  return 0;
}

static size_t element_size(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array:
    case napi_uint8_array:
    case napi_uint8_clamped_array:
      return 1;
    case napi_int16_array:
    case napi_uint16_array:
      return 2;
    case napi_int32_array:
    case napi_uint32_array:
    case napi_float32_array:
      return 4;
    case napi_float64_array:
    case napi_bigint64_array:
    case napi_biguint64_array:
      return 8;
  }
  return 1;
}

/* The bytes of a TypedArray (Uint8Array, Buffer, ...) or DataView. */
static int arg_bytes(napi_env env, napi_value v, const char *what, void **data, size_t *len) {
  bool is;
  if (napi_is_typedarray(env, v, &is) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  if (is) {
    napi_typedarray_type t;
    size_t n;
    if (napi_get_typedarray_info(env, v, &t, &n, data, NULL, NULL) != napi_ok) {
      throw_napi(env);
      return -1;
    }
    *len = n * element_size(t);
    return 0;
  }
  if (napi_is_dataview(env, v, &is) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  if (is) {
    if (napi_get_dataview_info(env, v, len, data, NULL, NULL) != napi_ok) {
      throw_napi(env);
      return -1;
    }
    return 0;
  }
  char message[160];
  snprintf(message, sizeof(message), "%s must be a Uint8Array", what);
  throw_arg(env, 0, message);
  return -1;
}

/* A JS array of descriptors (at most SYS_SCM_MAX_FD) into fds; *n receives the count. */
static int arg_fd_array(napi_env env, napi_value v, const char *what, int *fds, size_t *n) {
  bool is;
  char message[160];
  if (napi_is_array(env, v, &is) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  if (!is) {
    snprintf(message, sizeof(message), "%s must be an array of descriptors", what);
    throw_arg(env, 0, message);
    return -1;
  }
  uint32_t len;
  if (napi_get_array_length(env, v, &len) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  if (len > SYS_SCM_MAX_FD) {
    snprintf(message, sizeof(message), "%s: at most %d descriptors", what, SYS_SCM_MAX_FD);
    throw_arg(env, 1, message);
    return -1;
  }
  for (uint32_t i = 0; i < len; i++) {
    napi_value e;
    if (napi_get_element(env, v, i, &e) != napi_ok) {
      throw_napi(env);
      return -1;
    }
    if (arg_fd(env, e, what, &fds[i]) != 0) return -1;
  }
  *n = len;
  return 0;
}

static int arg_function(napi_env env, napi_value v, const char *what) {
  napi_valuetype type;
  if (napi_typeof(env, v, &type) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  if (type != napi_function) {
    char message[160];
    snprintf(message, sizeof(message), "%s must be a function", what);
    throw_arg(env, 0, message);
    return -1;
  }
  return 0;
}

/* Type tags tell our externals apart from each other and from anyone else's. */
static const napi_type_tag MAPPING_TAG = {0x646d616275664d41ULL, 0x9b1c7e0a5d3f4a21ULL};
static const napi_type_tag VIEW_TAG = {0x646d616275665649ULL, 0x2e8a4c6b1f9d0e37ULL};
static const napi_type_tag POLL_TAG = {0x646d61627566504fULL, 0x71c3d5e9a2b8f604ULL};

/* The native pointer of an external made by this addon with `tag`. */
static int arg_external(napi_env env, napi_value v, const napi_type_tag *tag, const char *what,
                        void **out) {
  napi_valuetype type;
  if (napi_typeof(env, v, &type) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  bool ok = false;
  if (type == napi_external) {
    if (napi_check_object_type_tag(env, v, tag, &ok) != napi_ok) {
      throw_napi(env);
      return -1;
    }
  }
  if (!ok) {
    char message[160];
    snprintf(message, sizeof(message), "%s must be a handle made by this addon", what);
    throw_arg(env, 0, message);
    return -1;
  }
  if (napi_get_value_external(env, v, out) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------------------ */
/* results                                                                              */
/* ------------------------------------------------------------------------------------ */

static napi_value undefined(napi_env env) {
  napi_value u;
  NAPI(napi_get_undefined(env, &u));
  return u;
}

static napi_value number(napi_env env, double d) {
  napi_value v;
  NAPI(napi_create_double(env, d, &v));
  return v;
}

static napi_value boolean(napi_env env, int b) {
  napi_value v;
  NAPI(napi_get_boolean(env, b != 0, &v));
  return v;
}

static int set_number(napi_env env, napi_value obj, const char *key, double d) {
  napi_value v;
  if (napi_create_double(env, d, &v) != napi_ok ||
      napi_set_named_property(env, obj, key, v) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  return 0;
}

/* Returns the descriptor r as a number, or throws for r < 0. */
static napi_value fd_result(napi_env env, const char *syscall, int r) {
  if (r < 0) return throw_errno(env, syscall, -r);
  return number(env, r);
}

static napi_value void_result(napi_env env, const char *syscall, int r) {
  if (r < 0) return throw_errno(env, syscall, -r);
  return undefined(env);
}

/* ------------------------------------------------------------------------------------ */
/* memfd, descriptors                                                                   */
/* ------------------------------------------------------------------------------------ */

static napi_value js_memfd_create(napi_env env, napi_callback_info info) {
  ARGS(2);
  char *name;
  size_t len;
  uint32_t flags;
  if (arg_string(env, argv[0], "name", &name, &len) != 0) return NULL;
  if (arg_bits(env, argv[1], "flags", &flags) != 0) {
    free(name);
    return NULL;
  }
  if (strlen(name) != len) {
    free(name);
    return throw_arg(env, 0, "name must not contain NUL characters");
  }
  int fd = sys_memfd_create(name, flags);
  free(name);
  return fd_result(env, "memfd_create", fd);
}

static napi_value js_add_seals(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  uint32_t seals;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_bits(env, argv[1], "seals", &seals) != 0) return NULL;
  return void_result(env, "fcntl", sys_add_seals(fd, seals));
}

static napi_value js_get_seals(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  return fd_result(env, "fcntl", sys_get_seals(fd));
}

static napi_value js_ftruncate(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  uint64_t size;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_size(env, argv[1], "size", &size) != 0) return NULL;
  return void_result(env, "ftruncate", sys_ftruncate(fd, (int64_t)size));
}

static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  ARGS(4);
  int fd;
  uint32_t mode;
  uint64_t offset, length;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_bits(env, argv[1], "mode", &mode) != 0) return NULL;
  if (arg_size(env, argv[2], "offset", &offset) != 0) return NULL;
  if (arg_size(env, argv[3], "length", &length) != 0) return NULL;
  return void_result(env, "fallocate",
                     sys_fallocate(fd, (int)mode, (int64_t)offset, (int64_t)length));
}

static napi_value js_dup(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd, cloexec;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_bool(env, argv[1], "cloexec", &cloexec) != 0) return NULL;
  return fd_result(env, "fcntl", sys_dup(fd, cloexec));
}

static napi_value js_close(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  return void_result(env, "close", sys_close(fd));
}

/* The descriptor in the call's first argument; 0, or -1 with an exception pending. */
static int fd_arg(napi_env env, napi_callback_info info, int *fd) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    throw_napi(env);
    return -1;
  }
  return arg_fd(env, argv[0], "fd", fd) != 0 ? -1 : 0;
}

/* fstat(2) of the descriptor in the call's first argument; 0, or -1 with an exception pending. */
static int fstat_arg(napi_env env, napi_callback_info info, int *fd, struct sys_stat *st) {
  if (fd_arg(env, info, fd) != 0) return -1;
  int r = sys_fstat(*fd, st);
  if (r < 0) {
    throw_errno(env, "fstat", -r);
    return -1;
  }
  return 0;
}

static napi_value js_fstat(napi_env env, napi_callback_info info) {
  int fd;
  struct sys_stat st;
  if (fstat_arg(env, info, &fd, &st) != 0) return NULL;
  napi_value obj, dev, ino;
  NAPI(napi_create_object(env, &obj));
  NAPI(napi_create_bigint_uint64(env, st.dev, &dev));
  NAPI(napi_create_bigint_uint64(env, st.ino, &ino));
  NAPI(napi_set_named_property(env, obj, "dev", dev));
  NAPI(napi_set_named_property(env, obj, "ino", ino));
  if (set_number(env, obj, "mode", (double)st.mode) != 0 ||
      set_number(env, obj, "size", (double)st.size) != 0 ||
      set_number(env, obj, "blksize", (double)st.blksize) != 0) {
    return NULL;
  }
  return obj;
}

/* "dev:ino" of a descriptor's file, as a string: the key of a file with no object built. */
static napi_value js_stat_key(napi_env env, napi_callback_info info) {
  int fd;
  struct sys_stat st;
  if (fstat_arg(env, info, &fd, &st) != 0) return NULL;
  char key[48];
  int n = snprintf(key, sizeof key, "%llu:%llu", (unsigned long long)st.dev, (unsigned long long)st.ino);
  napi_value out;
  NAPI(napi_create_string_latin1(env, key, (size_t)n, &out));
  return out;
}

/*
 * What a mapping's checks read of a memory descriptor, in one call: [mode, size, seals], with
 * seals -1 when F_GET_SEALS fails (the file is not a memfd).
 */
static napi_value js_memory_info(napi_env env, napi_callback_info info) {
  int fd;
  struct sys_stat st;
  if (fstat_arg(env, info, &fd, &st) != 0) return NULL;
  int seals = sys_get_seals(fd);
  napi_value out;
  NAPI(napi_create_array_with_length(env, 3, &out));
  NAPI(napi_set_element(env, out, 0, number(env, (double)st.mode)));
  NAPI(napi_set_element(env, out, 1, number(env, (double)st.size)));
  NAPI(napi_set_element(env, out, 2, number(env, seals < 0 ? -1 : (double)seals)));
  return out;
}

static napi_value js_fstatfs_type(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  uint32_t type;
  int r = sys_fstatfs_type(fd, &type);
  if (r < 0) return throw_errno(env, "fstatfs", -r);
  return number(env, type);
}

static napi_value js_set_cloexec(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd, on, previous;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_bool(env, argv[1], "on", &on) != 0) return NULL;
  int r = sys_set_cloexec(fd, on, &previous);
  if (r < 0) return throw_errno(env, "fcntl", -r);
  return boolean(env, previous);
}

static napi_value js_set_nonblock(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd, on, previous;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_bool(env, argv[1], "on", &on) != 0) return NULL;
  int r = sys_set_nonblock(fd, on, &previous);
  if (r < 0) return throw_errno(env, "fcntl", -r);
  return boolean(env, previous);
}

/* ------------------------------------------------------------------------------------ */
/* sockets                                                                              */
/* ------------------------------------------------------------------------------------ */

static napi_value js_socket_info(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd, domain, type;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  int r = sys_socket_info(fd, &domain, &type);
  if (r < 0) return throw_errno(env, "getsockopt", -r);
  napi_value obj;
  NAPI(napi_create_object(env, &obj));
  if (set_number(env, obj, "domain", domain) != 0 || set_number(env, obj, "type", type) != 0) {
    return NULL;
  }
  return obj;
}

/* SO_PEERCRED of the socket in the call's first argument; 0, or -1 with an exception pending. */
static int peer_cred_arg(napi_env env, napi_callback_info info, int32_t *pid, uint32_t *uid, uint32_t *gid) {
  int fd;
  if (fd_arg(env, info, &fd) != 0) return -1;
  int r = sys_peer_cred(fd, pid, uid, gid);
  if (r < 0) {
    throw_errno(env, "getsockopt", -r);
    return -1;
  }
  return 0;
}

static napi_value js_peer_cred(napi_env env, napi_callback_info info) {
  int32_t pid;
  uint32_t uid, gid;
  if (peer_cred_arg(env, info, &pid, &uid, &gid) != 0) return NULL;
  napi_value obj;
  NAPI(napi_create_object(env, &obj));
  if (set_number(env, obj, "pid", pid) != 0 || set_number(env, obj, "uid", uid) != 0 ||
      set_number(env, obj, "gid", gid) != 0) {
    return NULL;
  }
  return obj;
}

/* SO_PEERCRED's pid alone. */
static napi_value js_peer_pid(napi_env env, napi_callback_info info) {
  int32_t pid;
  uint32_t uid, gid;
  if (peer_cred_arg(env, info, &pid, &uid, &gid) != 0) return NULL;
  return number(env, pid);
}

static napi_value js_set_passcred(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd, on;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_bool(env, argv[1], "on", &on) != 0) return NULL;
  int r = sys_set_passcred(fd, on);
  if (r < 0) return throw_errno(env, "setsockopt", -r);
  return NULL;
}

static napi_value js_socketpair(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t type;
  int nonblock;
  if (arg_i32(env, argv[0], "type", &type) != 0) return NULL;
  if (arg_bool(env, argv[1], "nonblock", &nonblock) != 0) return NULL;
  int fds[2];
  int r = sys_socketpair(type, nonblock, fds);
  if (r < 0) return throw_errno(env, "socketpair", -r);
  napi_value arr, a, b;
  if (napi_create_array_with_length(env, 2, &arr) != napi_ok ||
      napi_create_int32(env, fds[0], &a) != napi_ok ||
      napi_create_int32(env, fds[1], &b) != napi_ok ||
      napi_set_element(env, arr, 0, a) != napi_ok ||
      napi_set_element(env, arr, 1, b) != napi_ok) {
    throw_napi(env);
    sys_close(fds[0]);
    sys_close(fds[1]);
    return NULL;
  }
  return arr;
}

static napi_value js_socket(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t type;
  int nonblock;
  if (arg_i32(env, argv[0], "type", &type) != 0) return NULL;
  if (arg_bool(env, argv[1], "nonblock", &nonblock) != 0) return NULL;
  return fd_result(env, "socket", sys_socket(type, nonblock));
}

typedef int (*addr_fn)(int fd, const char *address, size_t length);

static napi_value address_call(napi_env env, napi_callback_info info, addr_fn fn,
                               const char *syscall) {
  ARGS(2);
  int fd;
  char *address;
  size_t len;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_string(env, argv[1], "address", &address, &len) != 0) return NULL;
  int r = fn(fd, address, len);
  free(address);
  return void_result(env, syscall, r);
}

static napi_value js_bind(napi_env env, napi_callback_info info) {
  return address_call(env, info, sys_bind, "bind");
}

static napi_value js_connect(napi_env env, napi_callback_info info) {
  return address_call(env, info, sys_connect, "connect");
}

static napi_value js_listen(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  int32_t backlog;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_i32(env, argv[1], "backlog", &backlog) != 0) return NULL;
  return void_result(env, "listen", sys_listen(fd, backlog));
}

static napi_value js_accept(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd, nonblock;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_bool(env, argv[1], "nonblock", &nonblock) != 0) return NULL;
  return fd_result(env, "accept4", sys_accept(fd, nonblock));
}

static napi_value js_sock_name(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  char buf[128];
  size_t len;
  int r = sys_sock_name(fd, buf, sizeof(buf), &len);
  if (r < 0) return throw_errno(env, "getsockname", -r);
  napi_value s;
  NAPI(napi_create_string_utf8(env, buf, len, &s));
  return s;
}

/* An optional trailing boolean: true makes EAGAIN a plain result instead of an exception
 * (an exception per empty poll is the costly part of a busy event loop). */
static int arg_soft_eagain(napi_env env, napi_value v) {
  bool b = false;
  napi_valuetype type;
  if (napi_typeof(env, v, &type) != napi_ok || type != napi_boolean) return 0;
  if (napi_get_value_bool(env, v, &b) != napi_ok) return 0;
  return b ? 1 : 0;
}

static napi_value js_sendmsg(napi_env env, napi_callback_info info) {
  ARGS(5);
  int fd;
  void *data;
  size_t len, nfds;
  int fds[SYS_SCM_MAX_FD];
  uint32_t flags;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_bytes(env, argv[1], "data", &data, &len) != 0) return NULL;
  if (arg_fd_array(env, argv[2], "fds", fds, &nfds) != 0) return NULL;
  if (arg_bits(env, argv[3], "flags", &flags) != 0) return NULL;
  ssize_t r = sys_sendmsg(fd, data, len, fds, nfds, (int)flags);
  if (r == -EAGAIN && arg_soft_eagain(env, argv[4])) return number(env, -1);
  if (r < 0) return throw_errno(env, "sendmsg", (int)-r);
  return number(env, (double)r);
}

static void close_all(const int *fds, size_t n) {
  for (size_t i = 0; i < n; i++) sys_close(fds[i]);
}

static napi_value js_recvmsg(napi_env env, napi_callback_info info) {
  ARGS(6);
  int fd;
  uint64_t max_bytes, max_fds;
  uint32_t flags;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_size(env, argv[1], "maxBytes", &max_bytes) != 0) return NULL;
  if (arg_size(env, argv[2], "maxFds", &max_fds) != 0) return NULL;
  if (arg_bits(env, argv[3], "flags", &flags) != 0) return NULL;
  if (max_bytes > (uint64_t)SIZE_MAX / 2) return throw_arg(env, 1, "maxBytes is too large");
  if (max_fds > SYS_SCM_MAX_FD) max_fds = SYS_SCM_MAX_FD;
  void *buf = NULL;
  if (max_bytes > 0) {
    buf = malloc((size_t)max_bytes);
    if (buf == NULL) return throw_errno(env, "malloc", ENOMEM);
  }
  int fds[SYS_SCM_MAX_FD];
  size_t nfds = 0;
  int msg_flags = 0;
  int want_cred = arg_soft_eagain(env, argv[5]); /* the same "is it true" test */
  sys_cred cred;
  ssize_t r = sys_recvmsg_cred(fd, buf, (size_t)max_bytes, fds, (size_t)max_fds, &nfds,
                               (int)flags, &msg_flags, want_cred ? &cred : NULL);
  if (r < 0) {
    free(buf);
    if (r == -EAGAIN && arg_soft_eagain(env, argv[4])) {
      napi_value null_v;
      NAPI(napi_get_null(env, &null_v));
      return null_v;
    }
    return throw_errno(env, "recvmsg", (int)-r);
  }
  /* With MSG_TRUNC recvmsg(2) returns the real length, which may exceed the buffer. */
  size_t got = (size_t)r < (size_t)max_bytes ? (size_t)r : (size_t)max_bytes;
  napi_value obj, data, arr, flags_v;
  int ok = napi_create_object(env, &obj) == napi_ok &&
           napi_create_buffer_copy(env, got, got > 0 ? buf : "", NULL, &data) == napi_ok &&
           napi_create_array_with_length(env, nfds, &arr) == napi_ok &&
           napi_create_int32(env, msg_flags, &flags_v) == napi_ok;
  for (size_t i = 0; ok && i < nfds; i++) {
    napi_value v;
    ok = napi_create_int32(env, fds[i], &v) == napi_ok &&
         napi_set_element(env, arr, (uint32_t)i, v) == napi_ok;
  }
  ok = ok && napi_set_named_property(env, obj, "data", data) == napi_ok &&
       napi_set_named_property(env, obj, "fds", arr) == napi_ok &&
       napi_set_named_property(env, obj, "flags", flags_v) == napi_ok;
  if (ok && want_cred && cred.pid != 0) {
    napi_value c;
    ok = napi_create_object(env, &c) == napi_ok && set_number(env, c, "pid", cred.pid) == 0 &&
         set_number(env, c, "uid", cred.uid) == 0 && set_number(env, c, "gid", cred.gid) == 0 &&
         napi_set_named_property(env, obj, "cred", c) == napi_ok;
  }
  free(buf);
  if (!ok) {
    throw_napi(env);
    close_all(fds, nfds); /* never leak what was received */
    return NULL;
  }
  return obj;
}

/* ------------------------------------------------------------------------------------ */
/* mappings                                                                             */
/* ------------------------------------------------------------------------------------ */

/*
 * One mmap'ed region. `refs` counts the owner (the handle, until munmap or its finalizer)
 * plus every live view. munmap(2) happens exactly once, when refs reaches 0. The struct is
 * freed once refs is 0 AND the handle's external has been finalized (mappingUnmapped and
 * friends read it until then).
 */
typedef struct {
  void *addr;
  size_t len;
  int prot;
  int refs;
  int owner_alive;
  int unmapped;
  int handle_finalized;
} mapping_t;

typedef struct view_env view_env_t;

/*
 * Per-view state. The ArrayBuffer carries it with napi_wrap, so that detachView can find it.
 * A view holds one reference on its mapping. Two kinds:
 * - counted (napi_create_external_arraybuffer; venv NULL): owned by the backing store's
 *   finalizer (view_finalize), the only place it is freed. The wrap has no finalizer;
 *   detachView removes it before it detaches, so the ArrayBuffer never points at a freed
 *   struct.
 * - uncounted (made by the view factory of views.h): V8 never frees nor reports its store,
 *   so the wrap's finalizer (uncounted_finalize) owns it: it runs once the ArrayBuffer object
 *   is collected (typed arrays keep their buffer object alive), or at the environment's
 *   teardown. detachView detaches, removes the wrap (which cancels that finalizer) and does
 *   the same. Then, if another ArrayBuffer still holds the store, the view lingers in its
 *   view_env_t, keeping the mapping, until a later poll finds the store free; otherwise it
 *   is freed at once (uncounted_free). Another holder is either a buffer the view was
 *   transferred to (ArrayBuffer.prototype.transfer), or the collected buffer itself: V8
 *   sweeps the store references of dead ArrayBuffers on a background thread, maybe after
 *   the finalizer ran.
 */
typedef struct view {
  mapping_t *m;
  int detached; /* counted: its reference was already dropped by detachView */
  view_env_t *venv; /* uncounted only, from here on */
  const dmabuf_view_factory_t *factory;
  void *store; /* the factory's reference to the backing store */
  struct view *next; /* in venv->lingering */
} view_t;

/*
 * Uncounted views of one environment (made by setViewFactory). Lingering views are polled
 * whenever a view is made or goes, and by an unref'd timer that backs off from 1 ms to 1 s
 * while any lingers. At teardown an async cleanup hook (view_env_teardown) frees the
 * lingering views and closes the timer; finalizers may run before or after it. The struct is
 * freed once the timer is closed and every uncounted view is gone.
 */
struct view_env {
  uv_timer_t timer;
  const dmabuf_view_factory_t *factory; /* for new views; NULL: new views are counted */
  view_t *lingering; /* ArrayBuffer gone, store still held elsewhere */
  uint64_t delay_ms; /* the timer's next delay */
  napi_async_cleanup_hook_handle hook;
  int refs;          /* the timer (until closed) + every uncounted view */
  int torn_down;     /* the teardown hook ran: no JS of this environment runs again */
};

static void mapping_release(mapping_t *m) {
  if (--m->refs > 0) return;
  sys_munmap(m->addr, m->len);
  m->unmapped = 1;
  if (m->handle_finalized) free(m);
}

static void mapping_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  mapping_t *m = data;
  m->handle_finalized = 1;
  if (m->owner_alive) {
    m->owner_alive = 0;
    mapping_release(m); /* frees m when no view remains */
  } else if (m->refs == 0) {
    free(m);
  }
}

static void view_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  view_t *v = hint;
  if (!v->detached) mapping_release(v->m);
  free(v);
}

static void view_env_release(view_env_t *venv) {
  if (--venv->refs == 0) free(venv);
}

/* The end of an uncounted view: its store, then its mapping and environment references. */
static void uncounted_free(view_t *v) {
  view_env_t *venv = v->venv;
  v->factory->store_release(v->store);
  mapping_release(v->m);
  free(v);
  view_env_release(venv);
}

/* Frees the lingering views whose store nobody else holds any more. The caller holds a
 * reference on venv. */
static void view_env_poll(view_env_t *venv) {
  view_t **p = &venv->lingering;
  while (*p != NULL) {
    view_t *v = *p;
    if (v->factory->store_in_use(v->store)) {
      p = &v->next;
    } else {
      *p = v->next;
      uncounted_free(v);
    }
  }
}

static void on_view_timer(uv_timer_t *timer) {
  view_env_t *venv = (view_env_t *)timer;
  view_env_poll(venv);
  if (venv->lingering == NULL) return;
  venv->delay_ms = venv->delay_ms >= 500 ? 1000 : venv->delay_ms * 2;
  uv_timer_start(&venv->timer, on_view_timer, venv->delay_ms, 0);
}

/* An uncounted view's ArrayBuffer is gone (collected, or detached by detachView). After
 * teardown nothing can read the memory again (in-flight requests were drained before the
 * cleanup hooks, and views are untransferable), so it goes at once. */
static void uncounted_gone(view_t *v) {
  view_env_t *venv = v->venv;
  if (!venv->torn_down) {
    view_env_poll(venv);
    if (v->factory->store_in_use(v->store)) {
      v->next = venv->lingering;
      venv->lingering = v;
      if (!uv_is_active((uv_handle_t *)&venv->timer)) {
        venv->delay_ms = 1;
        uv_timer_start(&venv->timer, on_view_timer, venv->delay_ms, 0);
      }
      return;
    }
  }
  uncounted_free(v);
}

static void uncounted_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  uncounted_gone(data);
}

static void on_view_timer_closed(uv_handle_t *h) {
  view_env_t *venv = (view_env_t *)h;
  /* Removing a started hook tells the environment this one is done. */
  napi_remove_async_cleanup_hook(venv->hook);
  view_env_release(venv);
}

static void view_env_teardown(napi_async_cleanup_hook_handle hook, void *arg) {
  (void)hook;
  view_env_t *venv = arg;
  venv->torn_down = 1;
  while (venv->lingering != NULL) {
    view_t *v = venv->lingering;
    venv->lingering = v->next;
    uncounted_free(v);
  }
  uv_close((uv_handle_t *)&venv->timer, on_view_timer_closed);
}

static napi_value js_mmap(napi_env env, napi_callback_info info) {
  ARGS(5);
  int fd;
  uint64_t length, offset;
  uint32_t prot, flags;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_size(env, argv[1], "length", &length) != 0) return NULL;
  if (arg_size(env, argv[2], "offset", &offset) != 0) return NULL;
  if (arg_bits(env, argv[3], "prot", &prot) != 0) return NULL;
  if (arg_bits(env, argv[4], "flags", &flags) != 0) return NULL;
  mapping_t *m = calloc(1, sizeof(*m));
  if (m == NULL) return throw_errno(env, "malloc", ENOMEM);
  void *addr;
  int r = sys_mmap(fd, (size_t)length, (int64_t)offset, (int)prot, (int)flags, &addr);
  if (r < 0) {
    free(m);
    return throw_errno(env, "mmap", -r);
  }
  m->addr = addr;
  m->len = (size_t)length;
  m->prot = (int)prot;
  m->refs = 1;
  m->owner_alive = 1;
  napi_value ext;
  if (napi_create_external(env, m, mapping_finalize, NULL, &ext) != napi_ok) {
    throw_napi(env);
    sys_munmap(addr, m->len);
    free(m);
    return NULL;
  }
  /* From here the finalizer owns m. */
  NAPI(napi_type_tag_object(env, ext, &MAPPING_TAG));
  return ext;
}

static int arg_mapping(napi_env env, napi_value v, mapping_t **m) {
  return arg_external(env, v, &MAPPING_TAG, "handle", (void **)m);
}

/* Validates [offset, offset + length) inside the mapping. */
static int arg_range(napi_env env, napi_value *argv, mapping_t *m, uint64_t *offset,
                     uint64_t *length) {
  if (arg_size(env, argv[0], "offset", offset) != 0) return -1;
  if (arg_size(env, argv[1], "length", length) != 0) return -1;
  if (*offset > m->len || *length > m->len - *offset) {
    throw_arg(env, 1, "offset + length exceeds the mapping");
    return -1;
  }
  return 0;
}

static napi_value js_mapping_address(napi_env env, napi_callback_info info) {
  ARGS(1);
  mapping_t *m;
  if (arg_mapping(env, argv[0], &m) != 0) return NULL;
  napi_value v;
  NAPI(napi_create_bigint_uint64(env, (uint64_t)(uintptr_t)m->addr, &v));
  return v;
}

static napi_value js_mapping_length(napi_env env, napi_callback_info info) {
  ARGS(1);
  mapping_t *m;
  if (arg_mapping(env, argv[0], &m) != 0) return NULL;
  return number(env, (double)m->len);
}

static view_env_t *view_env(napi_env env);

/* An uncounted view of [data, data + length) of m, or NULL with an exception thrown. */
static napi_value uncounted_view(napi_env env, view_env_t *venv, mapping_t *m, void *data,
                                 size_t length) {
  view_env_poll(venv);
  view_t *v = calloc(1, sizeof(*v));
  if (v == NULL) return throw_errno(env, "malloc", ENOMEM);
  v->m = m;
  v->venv = venv;
  v->factory = venv->factory;
  napi_value ab;
  if (v->factory->create(env, data, length, &ab, &v->store) != napi_ok) {
    free(v);
    return throw_code(env, ENOMEM, "mappingView: the view factory could not make a view");
  }
  if (napi_type_tag_object(env, ab, &VIEW_TAG) != napi_ok ||
      napi_wrap(env, ab, v, uncounted_finalize, NULL, NULL) != napi_ok) {
    napi_detach_arraybuffer(env, ab); /* nothing may reach the memory without a reference */
    throw_napi(env);
    v->factory->store_release(v->store);
    free(v);
    return NULL;
  }
  /* From here uncounted_finalize owns v. */
  m->refs++;
  venv->refs++;
  return ab;
}

static napi_value js_mapping_view(napi_env env, napi_callback_info info) {
  ARGS(3);
  mapping_t *m;
  uint64_t offset, length;
  if (arg_mapping(env, argv[0], &m) != 0) return NULL;
  if (arg_range(env, argv + 1, m, &offset, &length) != 0) return NULL;
  if (!m->owner_alive) return throw_code(env, EBADF, "mappingView: the mapping was unmapped");
  if (!(m->prot & PROT_READ)) {
    return throw_code(env, EACCES, "mappingView: the mapping is not readable (PROT_READ)");
  }
  /* V8 refuses ArrayBuffers over 4 GiB; when it does, Node may already have run the
   * finalizer. Refuse them here, before anything is created. */
  if (length > MAX_VIEW_LENGTH) {
    return throw_code(env, ERANGE, "mappingView: a view is at most 4 GiB; map large memory in several views");
  }
  view_env_t *venv = view_env(env);
  if (venv != NULL && venv->factory != NULL) {
    return uncounted_view(env, venv, m, (char *)m->addr + offset, (size_t)length);
  }
  view_t *v = calloc(1, sizeof(*v));
  if (v == NULL) return throw_errno(env, "malloc", ENOMEM);
  v->m = m;
  napi_value ab;
  napi_status s = napi_create_external_arraybuffer(env, (char *)m->addr + offset,
                                                   (size_t)length, view_finalize, v, &ab);
  if (s == napi_no_external_buffers_allowed) {
    free(v);
    return throw_code(env, ENOTSUP,
                      "mappingView: this Node.js does not allow external ArrayBuffers");
  }
  if (s != napi_ok) {
    throw_napi(env);
    free(v);
    return NULL;
  }
  /* From here view_finalize owns v and will drop this reference. */
  m->refs++;
  NAPI(napi_type_tag_object(env, ab, &VIEW_TAG));
  NAPI(napi_wrap(env, ab, v, NULL, NULL, NULL));
  return ab;
}

static napi_value js_detach_view(napi_env env, napi_callback_info info) {
  ARGS(1);
  bool is = false, detached = false, tagged = false;
  NAPI(napi_is_arraybuffer(env, argv[0], &is));
  if (!is) return throw_arg(env, 0, "view must be an ArrayBuffer made by mappingView");
  NAPI(napi_is_detached_arraybuffer(env, argv[0], &detached));
  if (detached) return undefined(env); /* idempotent */
  NAPI(napi_check_object_type_tag(env, argv[0], &VIEW_TAG, &tagged));
  void *p = NULL;
  if (!tagged || napi_unwrap(env, argv[0], &p) != napi_ok || p == NULL) {
    return throw_arg(env, 0, "view must be an ArrayBuffer made by mappingView");
  }
  view_t *v = p;
  mapping_t *m = v->m;
  if (v->venv != NULL) {
    NAPI(napi_detach_arraybuffer(env, argv[0]));
    /* Removing the wrap cancels uncounted_finalize; should it fail, that finalizer will do
     * this when the object is collected. */
    if (napi_remove_wrap(env, argv[0], NULL) == napi_ok) uncounted_gone(v);
    return undefined(env);
  }
  /* Unlink the ArrayBuffer from v first: once detached, its finalizer may free v. */
  NAPI(napi_remove_wrap(env, argv[0], NULL));
  v->detached = 1;
  if (napi_detach_arraybuffer(env, argv[0]) != napi_ok) {
    /* Still attached: v is alive and still owns its reference; restore the link. */
    v->detached = 0;
    throw_napi(env);
    napi_wrap(env, argv[0], v, NULL, NULL, NULL);
    return NULL;
  }
  mapping_release(m); /* v's reference; v itself is freed by view_finalize */
  return undefined(env);
}

static napi_value js_munmap(napi_env env, napi_callback_info info) {
  ARGS(1);
  mapping_t *m;
  if (arg_mapping(env, argv[0], &m) != 0) return NULL;
  if (m->owner_alive) {
    m->owner_alive = 0;
    mapping_release(m); /* the handle's external keeps m itself alive */
  }
  return undefined(env);
}

static napi_value js_madvise(napi_env env, napi_callback_info info) {
  ARGS(4);
  mapping_t *m;
  uint64_t offset, length;
  int32_t advice;
  if (arg_mapping(env, argv[0], &m) != 0) return NULL;
  if (arg_range(env, argv + 1, m, &offset, &length) != 0) return NULL;
  if (arg_i32(env, argv[3], "advice", &advice) != 0) return NULL;
  if (!m->owner_alive) return throw_code(env, EBADF, "madvise: the mapping was unmapped");
  return void_result(env, "madvise",
                     sys_madvise((char *)m->addr + offset, (size_t)length, advice));
}

static napi_value js_mapping_unmapped(napi_env env, napi_callback_info info) {
  ARGS(1);
  mapping_t *m;
  if (arg_mapping(env, argv[0], &m) != 0) return NULL;
  return boolean(env, m->unmapped);
}

/* ------------------------------------------------------------------------------------ */
/* poll watchers                                                                        */
/* ------------------------------------------------------------------------------------ */

/*
 * A uv_poll_t and what it needs to call JS. `refs` counts the JS external (until its
 * finalizer) and the libuv handle (until its close callback); the struct is freed at 0.
 * An async cleanup hook closes a still-open watcher when the environment is torn down
 * (a worker exits); the hook is removed in the close callback, so the environment waits
 * for libuv to let go of the handle.
 */
typedef struct {
  uv_poll_t handle; /* first: the uv handle's address is the struct's */
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  napi_async_cleanup_hook_handle cleanup;
  int refs;
  int closing;     /* uv_close was called */
  int in_callback; /* inside the JS callback: JS resources are released after it returns */
} poll_t;

#define UV_POLL_EVENTS (UV_READABLE | UV_WRITABLE | UV_DISCONNECT | UV_PRIORITIZED)

static void poll_unref(poll_t *p) {
  if (--p->refs == 0) free(p);
}

static void poll_release_js(poll_t *p) {
  if (p->callback != NULL) {
    napi_delete_reference(p->env, p->callback);
    p->callback = NULL;
  }
  if (p->context != NULL) {
    napi_async_destroy(p->env, p->context);
    p->context = NULL;
  }
}

static void on_poll_closed(uv_handle_t *h) {
  poll_t *p = (poll_t *)h;
  if (p->cleanup != NULL) {
    /* Removing a started hook tells the environment this one is done. */
    napi_remove_async_cleanup_hook(p->cleanup);
    p->cleanup = NULL;
  }
  poll_unref(p);
}

static void poll_close(poll_t *p) {
  if (p->closing) return;
  p->closing = 1;
  if (!p->in_callback) poll_release_js(p);
  uv_close((uv_handle_t *)&p->handle, on_poll_closed);
}

static void on_poll_teardown(napi_async_cleanup_hook_handle handle, void *arg) {
  (void)handle;
  poll_t *p = arg;
  poll_close(p); /* no-op when already closing: on_poll_closed will finish the hook */
}

static void on_poll(uv_poll_t *h, int status, int events) {
  poll_t *p = (poll_t *)h;
  if (p->closing || p->callback == NULL) return;
  napi_env env = p->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, global, argv[2], result;
  if (napi_get_reference_value(env, p->callback, &cb) == napi_ok && cb != NULL &&
      napi_get_global(env, &global) == napi_ok &&
      napi_create_int32(env, status, &argv[0]) == napi_ok &&
      napi_create_int32(env, events, &argv[1]) == napi_ok) {
    p->in_callback++;
    napi_status s = napi_make_callback(env, p->context, global, cb, 2, argv, &result);
    p->in_callback--;
    (void)s;
    /* An exception thrown by the callback becomes an uncaught exception, as for any
     * other event-loop callback. */
    if (exception_pending(env)) {
      napi_value exc;
      if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) {
        napi_fatal_exception(env, exc);
      }
    }
  }
  /* pollClose was called from the callback: finish releasing now (uv_close's callback
   * has not run yet, so p is alive). */
  if (p->closing && p->in_callback == 0) poll_release_js(p);
  napi_close_handle_scope(env, scope);
}

static void poll_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  poll_t *p = data;
  poll_close(p); /* the handle was dropped while open: nothing can close it any more */
  poll_unref(p);
}

static napi_value js_poll_start(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd;
  int32_t events;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_i32(env, argv[1], "events", &events) != 0) return NULL;
  if (arg_function(env, argv[2], "callback") != 0) return NULL;
  if (events & ~UV_POLL_EVENTS) {
    return throw_arg(env, 1, "events must be UV_READABLE | UV_WRITABLE | UV_DISCONNECT | "
                             "UV_PRIORITIZED");
  }
  uv_loop_t *loop;
  NAPI(napi_get_uv_event_loop(env, &loop));
  poll_t *p = calloc(1, sizeof(*p));
  if (p == NULL) return throw_errno(env, "malloc", ENOMEM);
  p->env = env;
  int r = uv_poll_init(loop, &p->handle, fd);
  if (r < 0) {
    free(p);
    return throw_errno(env, "uv_poll_init", -r);
  }
  p->refs = 1; /* libuv's, until on_poll_closed */
  uv_unref((uv_handle_t *)&p->handle);
  napi_value name, resource, ext;
  if (napi_create_reference(env, argv[2], 1, &p->callback) != napi_ok ||
      napi_create_object(env, &resource) != napi_ok ||
      napi_create_string_utf8(env, "dmabuf.poll", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, resource, name, &p->context) != napi_ok ||
      napi_add_async_cleanup_hook(env, on_poll_teardown, p, &p->cleanup) != napi_ok) {
    throw_napi(env);
    poll_close(p);
    return NULL;
  }
  if (events != 0) {
    r = uv_poll_start(&p->handle, events, on_poll);
    if (r < 0) {
      poll_close(p);
      return throw_errno(env, "uv_poll_start", -r);
    }
  }
  if (napi_create_external(env, p, poll_finalize, NULL, &ext) != napi_ok) {
    throw_napi(env);
    poll_close(p);
    return NULL;
  }
  p->refs++; /* the external's, until poll_finalize */
  NAPI(napi_type_tag_object(env, ext, &POLL_TAG));
  return ext;
}

static int arg_open_poll(napi_env env, napi_value v, poll_t **p) {
  if (arg_external(env, v, &POLL_TAG, "handle", (void **)p) != 0) return -1;
  if ((*p)->closing) {
    throw_code(env, EBADF, "the poll handle is closed");
    return -1;
  }
  return 0;
}

static napi_value js_poll_update(napi_env env, napi_callback_info info) {
  ARGS(2);
  poll_t *p;
  int32_t events;
  if (arg_open_poll(env, argv[0], &p) != 0) return NULL;
  if (arg_i32(env, argv[1], "events", &events) != 0) return NULL;
  if (events & ~UV_POLL_EVENTS) {
    return throw_arg(env, 1, "events must be UV_READABLE | UV_WRITABLE | UV_DISCONNECT | "
                             "UV_PRIORITIZED");
  }
  int r = events == 0 ? uv_poll_stop(&p->handle) : uv_poll_start(&p->handle, events, on_poll);
  if (r < 0) return throw_errno(env, events == 0 ? "uv_poll_stop" : "uv_poll_start", -r);
  return undefined(env);
}

static napi_value js_poll_ref(napi_env env, napi_callback_info info) {
  ARGS(2);
  poll_t *p;
  int ref;
  if (arg_open_poll(env, argv[0], &p) != 0) return NULL;
  if (arg_bool(env, argv[1], "ref", &ref) != 0) return NULL;
  if (ref) {
    uv_ref((uv_handle_t *)&p->handle);
  } else {
    uv_unref((uv_handle_t *)&p->handle);
  }
  return undefined(env);
}

static napi_value js_poll_close(napi_env env, napi_callback_info info) {
  ARGS(1);
  poll_t *p;
  if (arg_external(env, argv[0], &POLL_TAG, "handle", (void **)&p) != 0) return NULL;
  poll_close(p); /* idempotent */
  return undefined(env);
}

/* ------------------------------------------------------------------------------------ */
/* misc                                                                                 */
/* ------------------------------------------------------------------------------------ */

static napi_value js_eventfd(napi_env env, napi_callback_info info) {
  ARGS(2);
  int64_t initval;
  uint32_t flags;
  if (arg_int(env, argv[0], "initval", 0.0, 4294967295.0, &initval) != 0) return NULL;
  if (arg_bits(env, argv[1], "flags", &flags) != 0) return NULL;
  return fd_result(env, "eventfd", sys_eventfd((unsigned int)initval, (int)flags));
}

static napi_value js_poll_now(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  uint32_t events;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_bits(env, argv[1], "events", &events) != 0) return NULL;
  int r = sys_poll_now(fd, (int)events);
  if (r < 0) return throw_errno(env, "poll", -r);
  return number(env, r);
}

static napi_value js_first_use(napi_env env, napi_callback_info info) {
  (void)info;
  return boolean(env, sys_first_use());
}

static napi_value js_ioctl(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd;
  uint32_t request;
  void *data;
  size_t len;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_bits(env, argv[1], "request", &request) != 0) return NULL;
  if (arg_bytes(env, argv[2], "arg", &data, &len) != 0) return NULL;
  int r = sys_ioctl(fd, (unsigned long)request, data);
  if (r < 0) return throw_errno(env, "ioctl", -r);
  return number(env, r);
}

static napi_value js_pidfd_open(napi_env env, napi_callback_info info) {
  ARGS(1);
  int32_t pid;
  if (arg_i32(env, argv[0], "pid", &pid) != 0) return NULL;
  return fd_result(env, "pidfd_open", sys_pidfd_open(pid));
}

static napi_value js_pidfd_getfd(napi_env env, napi_callback_info info) {
  ARGS(2);
  int pidfd, target;
  if (arg_fd(env, argv[0], "pidfd", &pidfd) != 0) return NULL;
  if (arg_fd(env, argv[1], "targetFd", &target) != 0) return NULL;
  return fd_result(env, "pidfd_getfd", sys_pidfd_getfd(pidfd, target));
}

/* ------------------------------------------------------------------------------------ */
/* socket diagnostics and credentials (diag.c)                                          */
/* ------------------------------------------------------------------------------------ */

static napi_value js_unix_diag_peer(napi_env env, napi_callback_info info) {
  ARGS(1);
  int64_t ino;
  if (arg_int(env, argv[0], "ino", 1.0, 4294967295.0, &ino) != 0) return NULL;
  uint32_t peer = 0;
  int r = sys_unix_diag_peer((uint32_t)ino, &peer);
  if (r < 0) return throw_errno(env, "sock_diag", -r);
  return number(env, peer);
}

static napi_value js_sock_outq(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  int r = sys_sock_outq(fd);
  if (r < 0) return throw_errno(env, "ioctl", -r);
  return number(env, r);
}

static napi_value js_hup_watch(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  return fd_result(env, "epoll_ctl", sys_hup_watch(fd));
}

static napi_value js_hup_watch_take(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "epfd", &fd) != 0) return NULL;
  int r = sys_hup_watch_take(fd);
  if (r < 0) return throw_errno(env, "epoll_wait", -r);
  return number(env, r);
}

static napi_value js_shutdown(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  int64_t how;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  if (arg_int(env, argv[1], "how", SHUT_RD, SHUT_RDWR, &how) != 0) return NULL;
  return void_result(env, "shutdown", sys_shutdown(fd, (int)how));
}

static napi_value js_peer_pidfd(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  return fd_result(env, "getsockopt", sys_peer_pidfd(fd));
}

/* ------------------------------------------------------------------------------------ */
/* descriptors owned by this environment                                                */
/* ------------------------------------------------------------------------------------ */

/*
 * Descriptors belong to the process, not to a thread: a worker that ends leaves its
 * descriptors open. The descriptors JS registers here are closed when this environment (the
 * main thread or a worker) is torn down, as the kernel closes a process's descriptors when it
 * exits. The set is the environment's instance data.
 */
typedef struct {
  int *fds;
  size_t len;
  size_t cap;
  /* Not a descriptor: the uncounted views of this environment, once setViewFactory ran. */
  view_env_t *views;
} owned_fds_t;

static void owned_fds_cleanup(void *arg) {
  owned_fds_t *set = arg;
  for (size_t i = 0; i < set->len; i++) sys_close(set->fds[i]);
  free(set->fds);
  free(set);
}

static owned_fds_t *owned_fds(napi_env env) {
  void *data = NULL;
  if (napi_get_instance_data(env, &data) != napi_ok) return NULL;
  return data;
}

static view_env_t *view_env(napi_env env) {
  owned_fds_t *set = owned_fds(env);
  return set != NULL ? set->views : NULL;
}

static void free_view_timer(uv_handle_t *h) {
  free(h); /* the timer is the first member of its view_env_t */
}

/* setViewFactory(factory | null): uncounted views from now on, or counted ones again. */
static napi_value js_set_view_factory(napi_env env, napi_callback_info info) {
  ARGS(1);
  owned_fds_t *set = owned_fds(env);
  if (set == NULL) return throw_code(env, EIO, "no instance data for this environment");
  napi_valuetype type;
  NAPI(napi_typeof(env, argv[0], &type));
  const dmabuf_view_factory_t *f = NULL;
  if (type != napi_null && type != napi_undefined) {
    bool tagged = false;
    if (type == napi_external) {
      NAPI(napi_check_object_type_tag(env, argv[0], &DMABUF_VIEW_FACTORY_TAG, &tagged));
    }
    if (!tagged) {
      return throw_arg(env, 0, "factory must be the factory of dmabuf_views.node, or null");
    }
    void *p = NULL;
    NAPI(napi_get_value_external(env, argv[0], &p));
    f = p;
    if (f == NULL || f->version != DMABUF_VIEWS_VERSION) {
      char message[160];
      snprintf(message, sizeof(message), "setViewFactory: factory version %u, this addon needs %u",
               f != NULL ? (unsigned)f->version : 0u, (unsigned)DMABUF_VIEWS_VERSION);
      return throw_code(env, EINVAL, message);
    }
  }
  if (set->views == NULL) {
    if (f == NULL) return undefined(env);
    uv_loop_t *loop;
    NAPI(napi_get_uv_event_loop(env, &loop));
    view_env_t *venv = calloc(1, sizeof(*venv));
    if (venv == NULL) return throw_errno(env, "calloc", ENOMEM);
    int r = uv_timer_init(loop, &venv->timer);
    if (r < 0) {
      free(venv);
      return throw_errno(env, "uv_timer_init", -r);
    }
    uv_unref((uv_handle_t *)&venv->timer);
    venv->refs = 1; /* the timer's, until on_view_timer_closed */
    if (napi_add_async_cleanup_hook(env, view_env_teardown, venv, &venv->hook) != napi_ok) {
      throw_napi(env);
      uv_close((uv_handle_t *)&venv->timer, free_view_timer);
      return NULL;
    }
    set->views = venv;
  }
  set->views->factory = f;
  return undefined(env);
}

static napi_value js_own_fd(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  owned_fds_t *set = owned_fds(env);
  if (set == NULL) return throw_code(env, EIO, "no descriptor set for this environment");
  if (set->len == set->cap) {
    size_t cap = set->cap ? set->cap * 2 : 64;
    int *fds = realloc(set->fds, cap * sizeof(int));
    if (fds == NULL) return throw_errno(env, "realloc", ENOMEM);
    set->fds = fds;
    set->cap = cap;
  }
  set->fds[set->len++] = fd;
  return undefined(env);
}

static napi_value js_disown_fd(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd) != 0) return NULL;
  owned_fds_t *set = owned_fds(env);
  if (set == NULL) return undefined(env);
  for (size_t i = set->len; i-- > 0;) {
    if (set->fds[i] == fd) {
      set->fds[i] = set->fds[--set->len];
      break;
    }
  }
  return undefined(env);
}

/* ------------------------------------------------------------------------------------ */
/* module                                                                               */
/* ------------------------------------------------------------------------------------ */

static napi_value make_constants(napi_env env) {
  napi_value c;
  NAPI(napi_create_object(env, &c));
#define K(name, value)                                        \
  do {                                                        \
    if (set_number(env, c, name, (double)(value)) != 0) return NULL; \
  } while (0)
#define C(name) K(#name, name)
  C(MFD_CLOEXEC);
  C(MFD_ALLOW_SEALING);
  C(MFD_HUGETLB);
  C(MFD_HUGE_2MB);
  C(MFD_NOEXEC_SEAL);
  C(F_SEAL_SEAL);
  C(F_SEAL_SHRINK);
  C(F_SEAL_GROW);
  C(F_SEAL_WRITE);
  C(F_SEAL_FUTURE_WRITE);
  C(PROT_NONE);
  C(PROT_READ);
  C(PROT_WRITE);
  C(MAP_SHARED);
  C(MAP_PRIVATE);
  C(MAP_POPULATE);
  C(MAP_NORESERVE);
  C(MADV_HUGEPAGE);
  C(MADV_DONTNEED);
  C(MADV_WILLNEED);
  C(MADV_POPULATE_READ);
  C(MADV_POPULATE_WRITE);
  C(SOCK_STREAM);
  C(SOCK_DGRAM);
  C(SOCK_SEQPACKET);
  C(AF_UNIX);
  C(MSG_DONTWAIT);
  C(MSG_PEEK);
  C(MSG_TRUNC);
  C(MSG_CTRUNC);
  C(MSG_NOSIGNAL);
  C(MSG_EOR);
  C(MSG_WAITALL);
  C(SHUT_RD);
  C(SHUT_WR);
  C(SHUT_RDWR);
  C(UV_READABLE);
  C(UV_WRITABLE);
  C(UV_DISCONNECT);
  C(UV_PRIORITIZED);
  C(EFD_NONBLOCK);
  C(EFD_SEMAPHORE);
  C(FALLOC_FL_KEEP_SIZE);
  C(S_IFMT);
  C(S_IFSOCK);
  C(S_IFREG);
  C(S_IFIFO);
  K("HUGETLBFS_MAGIC", (uint32_t)HUGETLBFS_MAGIC);
  K("TMPFS_MAGIC", (uint32_t)TMPFS_MAGIC);
  C(POLLIN);
  C(POLLOUT);
  C(POLLERR);
  C(POLLHUP);
  C(POLLRDHUP);
  K("PAGE_SIZE", sys_page_size());
#undef C
#undef K
  NAPI(napi_object_freeze(env, c));
  return c;
}

#define FN(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL}

static void owned_fds_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  (void)hint;
  /* The cleanup hook frees the set: it runs before instance data is finalized. */
}

NAPI_MODULE_INIT() {
  napi_value constants = make_constants(env);
  if (constants == NULL) return NULL;
  owned_fds_t *set = owned_fds(env);
  if (set == NULL) {
    set = calloc(1, sizeof(*set));
    if (set == NULL) {
      throw_errno(env, "calloc", ENOMEM);
      return NULL;
    }
    NAPI(napi_set_instance_data(env, set, owned_fds_finalize, NULL));
    NAPI(napi_add_env_cleanup_hook(env, owned_fds_cleanup, set));
  }
  napi_property_descriptor props[] = {
      FN("memfdCreate", js_memfd_create),
      FN("pollNow", js_poll_now),
      FN("ownFd", js_own_fd),
      FN("disownFd", js_disown_fd),
      FN("firstUse", js_first_use),
      FN("addSeals", js_add_seals),
      FN("getSeals", js_get_seals),
      FN("ftruncate", js_ftruncate),
      FN("fallocate", js_fallocate),
      FN("dup", js_dup),
      FN("close", js_close),
      FN("fstat", js_fstat),
      FN("statKey", js_stat_key),
      FN("memoryInfo", js_memory_info),
      FN("fstatfsType", js_fstatfs_type),
      FN("setCloexec", js_set_cloexec),
      FN("setNonblock", js_set_nonblock),
      FN("socketInfo", js_socket_info),
      FN("peerCred", js_peer_cred),
      FN("peerPid", js_peer_pid),
      FN("setPassCred", js_set_passcred),
      FN("socketpair", js_socketpair),
      FN("socket", js_socket),
      FN("bind", js_bind),
      FN("listen", js_listen),
      FN("accept", js_accept),
      FN("connect", js_connect),
      FN("sockName", js_sock_name),
      FN("sendmsg", js_sendmsg),
      FN("recvmsg", js_recvmsg),
      FN("mmap", js_mmap),
      FN("mappingAddress", js_mapping_address),
      FN("mappingLength", js_mapping_length),
      FN("mappingView", js_mapping_view),
      FN("detachView", js_detach_view),
      FN("setViewFactory", js_set_view_factory),
      FN("munmap", js_munmap),
      FN("madvise", js_madvise),
      FN("mappingUnmapped", js_mapping_unmapped),
      FN("pollStart", js_poll_start),
      FN("pollUpdate", js_poll_update),
      FN("pollRef", js_poll_ref),
      FN("pollClose", js_poll_close),
      FN("eventfd", js_eventfd),
      FN("ioctl", js_ioctl),
      FN("pidfdOpen", js_pidfd_open),
      FN("pidfdGetfd", js_pidfd_getfd),
      FN("unixDiagPeer", js_unix_diag_peer),
      FN("sockOutq", js_sock_outq),
      FN("hupWatch", js_hup_watch),
      FN("hupWatchTake", js_hup_watch_take),
      FN("shutdown", js_shutdown),
      FN("peerPidfd", js_peer_pidfd),
      {"constants", NULL, NULL, NULL, NULL, constants, napi_enumerable, NULL},
  };
  NAPI(napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props));
  if (kernel_binding_init(env, exports) != 0) return NULL;
  if (sync_binding_init(env, exports) == NULL) return NULL; /* fence files (src/sync) */
  return exports;
}
