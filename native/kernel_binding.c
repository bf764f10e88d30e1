/*
 * kernel_binding.c - the Node-API face of kernel.c (see src/native/kernel-binding.ts for the
 * contract). Only converts arguments and results; every ioctl goes through kernel.c.
 *
 * Errors have the shape binding.c gives them: a failed call throws an Error whose message is
 * "<syscall>: <strerror> (<ERRNAME>)" with code (the errno name, "E524" for the kernel's
 * ENOTSUPP), errno and syscall; a bad argument throws a TypeError with code "EINVAL".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <linux/dma-buf.h>
#include <linux/udmabuf.h>
#include <linux/videodev2.h>
#include <node_api.h>

#include "kernel.h"
#include "sys.h"
#include "throw.h"

#define CHECK(call)                                                 \
  do {                                                              \
    if ((call) != napi_ok) {                                        \
      bool pending_ = false;                                        \
      napi_is_exception_pending(env, &pending_);                    \
      if (!pending_) napi_throw_error(env, "EIO", "Node-API call failed"); \
      return NULL;                                                  \
    }                                                               \
  } while (0)

/* A failed ioctl; the kernel's ENOTSUPP (524) has no strerror text of its own. */
static napi_value fail_errno(napi_env env, const char *syscall, int err) {
  return throw_errno_desc(env, syscall, err,
                          err == KERNEL_ENOTSUPP ? "Operation not supported by the driver (ENOTSUPP)" : NULL);
}

static napi_value fail_arg(napi_env env, const char *what) {
  char message[128];
  snprintf(message, sizeof(message), "%s must be a non-negative integer", what);
  napi_throw_type_error(env, "EINVAL", message);
  return NULL;
}

/* The callback's arguments; missing ones are undefined. */
#define ARGS(n)                                                  \
  napi_value argv[n];                                            \
  do {                                                           \
    size_t argc_ = (n);                                          \
    CHECK(napi_get_cb_info(env, info, &argc_, argv, NULL, NULL)); \
  } while (0)

/* A non-negative integer up to `max`; 0 on success, -1 with an exception thrown. */
static int arg_uint(napi_env env, napi_value v, const char *what, double max, uint64_t *out) {
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number ||
      napi_get_value_double(env, v, &d) != napi_ok || !(d >= 0 && d <= max) ||
      (double)(uint64_t)d != d) {
    fail_arg(env, what);
    return -1;
  }
  *out = (uint64_t)d;
  return 0;
}

#define U32_MAX 4294967295.0
#define SAFE_MAX 9007199254740991.0

static int arg_fd(napi_env env, napi_value v, const char *what, int *out) {
  uint64_t x;
  if (arg_uint(env, v, what, 2147483647.0, &x) != 0) return -1;
  *out = (int)x;
  return 0;
}

static int arg_u32(napi_env env, napi_value v, const char *what, uint32_t *out) {
  uint64_t x;
  if (arg_uint(env, v, what, U32_MAX, &x) != 0) return -1;
  *out = (uint32_t)x;
  return 0;
}

static napi_value num(napi_env env, double d) {
  napi_value v;
  CHECK(napi_create_double(env, d, &v));
  return v;
}

static napi_value undef(napi_env env) {
  napi_value v;
  CHECK(napi_get_undefined(env, &v));
  return v;
}

/* r >= 0: r as a number; else throws. */
static napi_value int_result(napi_env env, const char *syscall, int r) {
  return r < 0 ? fail_errno(env, syscall, -r) : num(env, r);
}

static napi_value void_result(napi_env env, const char *syscall, int r) {
  return r < 0 ? fail_errno(env, syscall, -r) : undef(env);
}

static int set_num(napi_env env, napi_value obj, const char *key, double d) {
  napi_value v;
  if (napi_create_double(env, d, &v) != napi_ok) return -1;
  return napi_set_named_property(env, obj, key, v) == napi_ok ? 0 : -1;
}

static int set_str(napi_env env, napi_value obj, const char *key, const char *s) {
  napi_value v;
  if (napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &v) != napi_ok) return -1;
  return napi_set_named_property(env, obj, key, v) == napi_ok ? 0 : -1;
}

/*
 * The calls that take a descriptor and one uint32 (`what`): runs fn, then returns its result
 * as a number (`value`) or undefined.
 */
static napi_value call_fd_u32(napi_env env, napi_callback_info info, const char *what,
                              const char *syscall, int (*fn)(int, uint32_t), int value) {
  ARGS(2);
  int fd;
  uint32_t x;
  if (arg_fd(env, argv[0], "fd", &fd) || arg_u32(env, argv[1], what, &x)) return NULL;
  int r = fn(fd, x);
  return value ? int_result(env, syscall, r) : void_result(env, syscall, r);
}

/* ---- dma-buf ---------------------------------------------------------------------- */

static napi_value js_dmabuf_sync(napi_env env, napi_callback_info info) {
  return call_fd_u32(env, info, "flags", "ioctl(DMA_BUF_IOCTL_SYNC)", kernel_dmabuf_sync, 0);
}

static napi_value js_dmabuf_set_name(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd)) return NULL;
  napi_valuetype t;
  CHECK(napi_typeof(env, argv[1], &t));
  if (t != napi_string) {
    napi_throw_type_error(env, "EINVAL", "name must be a string");
    return NULL;
  }
  /* Room for one byte more than the kernel takes, so that an over-long name reaches it
   * (and is refused there) instead of being cut here. */
  char name[DMA_BUF_NAME_LEN + 2];
  size_t len;
  CHECK(napi_get_value_string_utf8(env, argv[1], name, sizeof(name), &len));
  if (strlen(name) != len) {
    napi_throw_type_error(env, "EINVAL", "name must not contain NUL characters");
    return NULL;
  }
  return void_result(env, "ioctl(DMA_BUF_SET_NAME)", kernel_dmabuf_set_name(fd, name));
}

static napi_value js_dmabuf_export_sync_file(napi_env env, napi_callback_info info) {
  return call_fd_u32(env, info, "flags", "ioctl(DMA_BUF_IOCTL_EXPORT_SYNC_FILE)",
                     kernel_dmabuf_export_sync_file, 1);
}

static napi_value js_dmabuf_import_sync_file(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd, sync_fd;
  uint32_t flags;
  if (arg_fd(env, argv[0], "fd", &fd) || arg_u32(env, argv[1], "flags", &flags) ||
      arg_fd(env, argv[2], "syncFd", &sync_fd)) {
    return NULL;
  }
  return void_result(env, "ioctl(DMA_BUF_IOCTL_IMPORT_SYNC_FILE)",
                     kernel_dmabuf_import_sync_file(fd, flags, sync_fd));
}

static napi_value js_sync_file_info(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd)) return NULL;
  struct kernel_sync_file_info si;
  int r = kernel_sync_file_info(fd, &si);
  if (r < 0) return fail_errno(env, "ioctl(SYNC_IOC_FILE_INFO)", -r);
  napi_value obj;
  CHECK(napi_create_object(env, &obj));
  if (set_str(env, obj, "name", si.name) || set_num(env, obj, "status", si.status) ||
      set_num(env, obj, "numFences", si.num_fences)) {
    CHECK(napi_generic_failure);
  }
  return obj;
}

/* ---- udmabuf, dma-heaps --------------------------------------------------------------- */

static napi_value js_udmabuf_create(napi_env env, napi_callback_info info) {
  ARGS(5);
  int dev, memfd;
  uint64_t offset, size;
  uint32_t flags;
  if (arg_fd(env, argv[0], "devFd", &dev) || arg_fd(env, argv[1], "memfd", &memfd) ||
      arg_uint(env, argv[2], "offset", SAFE_MAX, &offset) ||
      arg_uint(env, argv[3], "size", SAFE_MAX, &size) || arg_u32(env, argv[4], "flags", &flags)) {
    return NULL;
  }
  return int_result(env, "ioctl(UDMABUF_CREATE)",
                    kernel_udmabuf_create(dev, memfd, offset, size, flags));
}

static napi_value js_dma_heap_alloc(napi_env env, napi_callback_info info) {
  ARGS(3);
  int heap;
  uint64_t len;
  uint32_t fd_flags;
  if (arg_fd(env, argv[0], "heapFd", &heap) || arg_uint(env, argv[1], "len", SAFE_MAX, &len) ||
      arg_u32(env, argv[2], "fdFlags", &fd_flags)) {
    return NULL;
  }
  return int_result(env, "ioctl(DMA_HEAP_IOCTL_ALLOC)", kernel_dma_heap_alloc(heap, len, fd_flags, 0));
}

/* ---- V4L2 ----------------------------------------------------------------------------- */

static napi_value js_v4l2_querycap(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd)) return NULL;
  struct kernel_v4l2_cap cap;
  int r = kernel_v4l2_querycap(fd, &cap);
  if (r < 0) return fail_errno(env, "ioctl(VIDIOC_QUERYCAP)", -r);
  napi_value obj;
  CHECK(napi_create_object(env, &obj));
  if (set_str(env, obj, "driver", cap.driver) || set_str(env, obj, "card", cap.card) ||
      set_str(env, obj, "busInfo", cap.bus_info) ||
      set_num(env, obj, "capabilities", cap.capabilities) ||
      set_num(env, obj, "deviceCaps", cap.device_caps)) {
    CHECK(napi_generic_failure);
  }
  return obj;
}

static napi_value format_object(napi_env env, const struct kernel_v4l2_format *f) {
  napi_value obj;
  CHECK(napi_create_object(env, &obj));
  if (set_num(env, obj, "width", f->width) || set_num(env, obj, "height", f->height) ||
      set_num(env, obj, "pixelformat", f->pixelformat) || set_num(env, obj, "field", f->field) ||
      set_num(env, obj, "bytesperline", f->bytesperline) ||
      set_num(env, obj, "sizeimage", f->sizeimage) ||
      set_num(env, obj, "colorspace", f->colorspace)) {
    CHECK(napi_generic_failure);
  }
  return obj;
}

static napi_value js_v4l2_get_format(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd)) return NULL;
  struct kernel_v4l2_format f;
  int r = kernel_v4l2_get_format(fd, &f);
  if (r < 0) return fail_errno(env, "ioctl(VIDIOC_G_FMT)", -r);
  return format_object(env, &f);
}

static napi_value js_v4l2_set_format(napi_env env, napi_callback_info info) {
  ARGS(5);
  int fd;
  struct kernel_v4l2_format f;
  memset(&f, 0, sizeof(f));
  if (arg_fd(env, argv[0], "fd", &fd) || arg_u32(env, argv[1], "width", &f.width) ||
      arg_u32(env, argv[2], "height", &f.height) ||
      arg_u32(env, argv[3], "pixelformat", &f.pixelformat) ||
      arg_u32(env, argv[4], "field", &f.field)) {
    return NULL;
  }
  int r = kernel_v4l2_set_format(fd, &f);
  if (r < 0) return fail_errno(env, "ioctl(VIDIOC_S_FMT)", -r);
  return format_object(env, &f);
}

static napi_value js_v4l2_reqbufs(napi_env env, napi_callback_info info) {
  return call_fd_u32(env, info, "count", "ioctl(VIDIOC_REQBUFS)", kernel_v4l2_reqbufs, 1);
}

static napi_value js_v4l2_querybuf(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  uint32_t index, length = 0;
  if (arg_fd(env, argv[0], "fd", &fd) || arg_u32(env, argv[1], "index", &index)) return NULL;
  int r = kernel_v4l2_querybuf(fd, index, &length);
  return r < 0 ? fail_errno(env, "ioctl(VIDIOC_QUERYBUF)", -r) : num(env, length);
}

static napi_value js_v4l2_expbuf(napi_env env, napi_callback_info info) {
  ARGS(3);
  int fd;
  uint32_t index, flags;
  if (arg_fd(env, argv[0], "fd", &fd) || arg_u32(env, argv[1], "index", &index) ||
      arg_u32(env, argv[2], "flags", &flags)) {
    return NULL;
  }
  return int_result(env, "ioctl(VIDIOC_EXPBUF)", kernel_v4l2_expbuf(fd, index, flags));
}

static napi_value js_v4l2_qbuf(napi_env env, napi_callback_info info) {
  return call_fd_u32(env, info, "index", "ioctl(VIDIOC_QBUF)", kernel_v4l2_qbuf, 0);
}

/* A frame object, or null when none is ready (EAGAIN on a non-blocking device). */
static napi_value js_v4l2_dqbuf(napi_env env, napi_callback_info info) {
  ARGS(1);
  int fd;
  if (arg_fd(env, argv[0], "fd", &fd)) return NULL;
  struct kernel_v4l2_frame fr;
  int r = kernel_v4l2_dqbuf(fd, &fr);
  napi_value obj;
  if (r == -EAGAIN) {
    CHECK(napi_get_null(env, &obj));
    return obj;
  }
  if (r < 0) return fail_errno(env, "ioctl(VIDIOC_DQBUF)", -r);
  CHECK(napi_create_object(env, &obj));
  if (set_num(env, obj, "index", fr.index) || set_num(env, obj, "bytesused", fr.bytesused) ||
      set_num(env, obj, "flags", fr.flags) || set_num(env, obj, "field", fr.field) ||
      set_num(env, obj, "sequence", fr.sequence) ||
      set_num(env, obj, "timestampUs", (double)fr.timestamp_us)) {
    CHECK(napi_generic_failure);
  }
  return obj;
}

static napi_value js_v4l2_stream(napi_env env, napi_callback_info info) {
  ARGS(2);
  int fd;
  bool on;
  if (arg_fd(env, argv[0], "fd", &fd)) return NULL;
  if (napi_get_value_bool(env, argv[1], &on) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "on must be a boolean");
    return NULL;
  }
  return void_result(env, on ? "ioctl(VIDIOC_STREAMON)" : "ioctl(VIDIOC_STREAMOFF)",
                     kernel_v4l2_stream(fd, on));
}

/* ---- registration --------------------------------------------------------------------- */

static napi_value kernel_constants(napi_env env) {
  napi_value c;
  CHECK(napi_create_object(env, &c));
#define K(name) \
  if (set_num(env, c, #name, (double)(name)) != 0) CHECK(napi_generic_failure)
  K(DMA_BUF_SYNC_READ);
  K(DMA_BUF_SYNC_WRITE);
  K(DMA_BUF_SYNC_RW);
  K(DMA_BUF_SYNC_START);
  K(DMA_BUF_SYNC_END);
  K(DMA_BUF_NAME_LEN);
  K(KERNEL_ENOTSUPP);
  K(O_RDONLY);
  K(O_RDWR);
  K(O_ACCMODE);
  K(V4L2_CAP_VIDEO_CAPTURE);
  K(V4L2_CAP_VIDEO_CAPTURE_MPLANE);
  K(V4L2_CAP_STREAMING);
  K(V4L2_CAP_READWRITE);
  K(V4L2_FIELD_ANY);
  K(V4L2_FIELD_NONE);
  K(V4L2_BUF_FLAG_ERROR);
  K(V4L2_PIX_FMT_YUYV);
  K(V4L2_PIX_FMT_RGB24);
  K(V4L2_PIX_FMT_GREY);
#undef K
  CHECK(napi_object_freeze(env, c));
  return c;
}

#define FN(name, fn) {name, NULL, fn, NULL, NULL, NULL, napi_enumerable, NULL}

/* Adds the kernel interfaces' functions and `kernelConstants` to the addon's exports. */
int kernel_binding_init(napi_env env, napi_value exports) {
  napi_value constants = kernel_constants(env);
  if (constants == NULL) return -1;
  napi_property_descriptor props[] = {
      FN("dmaBufSync", js_dmabuf_sync),
      FN("dmaBufSetName", js_dmabuf_set_name),
      FN("dmaBufExportSyncFile", js_dmabuf_export_sync_file),
      FN("dmaBufImportSyncFile", js_dmabuf_import_sync_file),
      FN("syncFileInfo", js_sync_file_info),
      FN("udmabufCreate", js_udmabuf_create),
      FN("dmaHeapAlloc", js_dma_heap_alloc),
      FN("v4l2QueryCap", js_v4l2_querycap),
      FN("v4l2GetFormat", js_v4l2_get_format),
      FN("v4l2SetFormat", js_v4l2_set_format),
      FN("v4l2ReqBufs", js_v4l2_reqbufs),
      FN("v4l2QueryBuf", js_v4l2_querybuf),
      FN("v4l2ExpBuf", js_v4l2_expbuf),
      FN("v4l2QBuf", js_v4l2_qbuf),
      FN("v4l2DQBuf", js_v4l2_dqbuf),
      FN("v4l2Stream", js_v4l2_stream),
      {"kernelConstants", NULL, NULL, NULL, NULL, constants, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof(props) / sizeof(props[0]), props) == napi_ok
             ? 0
             : -1;
}
