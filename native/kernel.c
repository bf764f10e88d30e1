/*
 * kernel.c - see kernel.h. Plain C over glibc and the kernel's uapi headers; no Node-API.
 */
#include "kernel.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>

#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/sync_file.h>
#include <linux/udmabuf.h>
#include <linux/videodev2.h>

/* ioctl(2) retried on EINTR; -errno on failure. */
static int xioctl(int fd, unsigned long request, void *arg) {
  int r;
  do {
    r = ioctl(fd, request, arg);
  } while (r == -1 && errno == EINTR);
  return r == -1 ? -errno : r;
}

/* Copies a fixed-size, maybe unterminated, kernel string into a terminated one. */
static void copy_name(char *dst, size_t cap, const void *src, size_t len) {
  size_t n = strnlen((const char *)src, len);
  if (n >= cap) n = cap - 1;
  memcpy(dst, src, n);
  dst[n] = '\0';
}

int kernel_dmabuf_sync(int fd, uint32_t flags) {
  struct dma_buf_sync s = {.flags = flags};
  int r;
  do {
    r = ioctl(fd, DMA_BUF_IOCTL_SYNC, &s);
  } while (r == -1 && (errno == EINTR || errno == EAGAIN));
  return r == -1 ? -errno : 0;
}

int kernel_dmabuf_set_name(int fd, const char *name) {
  /* The argument is the string's address itself, not a pointer to it. */
  int r = xioctl(fd, DMA_BUF_SET_NAME, (void *)name);
  return r < 0 ? r : 0;
}

int kernel_dmabuf_export_sync_file(int fd, uint32_t flags) {
  struct dma_buf_export_sync_file a = {.flags = flags, .fd = -1};
  int r = xioctl(fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &a);
  return r < 0 ? r : a.fd;
}

int kernel_dmabuf_import_sync_file(int fd, uint32_t flags, int sync_fd) {
  struct dma_buf_import_sync_file a = {.flags = flags, .fd = sync_fd};
  int r = xioctl(fd, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &a);
  return r < 0 ? r : 0;
}

int kernel_sync_file_info(int fd, struct kernel_sync_file_info *out) {
  struct sync_file_info info;
  memset(&info, 0, sizeof(info)); /* num_fences 0: the file's own status only */
  int r = xioctl(fd, SYNC_IOC_FILE_INFO, &info);
  if (r < 0) return r;
  copy_name(out->name, sizeof(out->name), info.name, sizeof(info.name));
  out->status = info.status;
  out->num_fences = info.num_fences;
  return 0;
}

int kernel_udmabuf_create(int dev_fd, int memfd, uint64_t offset, uint64_t size, uint32_t flags) {
  struct udmabuf_create c = {
      .memfd = (uint32_t)memfd,
      .flags = flags | UDMABUF_FLAGS_CLOEXEC,
      .offset = offset,
      .size = size,
  };
  return xioctl(dev_fd, UDMABUF_CREATE, &c);
}

int kernel_dma_heap_alloc(int heap_fd, uint64_t len, uint32_t fd_flags, uint64_t heap_flags) {
  struct dma_heap_allocation_data d = {
      .len = len,
      .fd = 0,
      .fd_flags = fd_flags | O_CLOEXEC,
      .heap_flags = heap_flags,
  };
  int r = xioctl(heap_fd, DMA_HEAP_IOCTL_ALLOC, &d);
  return r < 0 ? r : (int)d.fd;
}

int kernel_v4l2_querycap(int fd, struct kernel_v4l2_cap *out) {
  struct v4l2_capability cap;
  memset(&cap, 0, sizeof(cap));
  int r = xioctl(fd, VIDIOC_QUERYCAP, &cap);
  if (r < 0) return r;
  copy_name(out->driver, sizeof(out->driver), cap.driver, sizeof(cap.driver));
  copy_name(out->card, sizeof(out->card), cap.card, sizeof(cap.card));
  copy_name(out->bus_info, sizeof(out->bus_info), cap.bus_info, sizeof(cap.bus_info));
  out->capabilities = cap.capabilities;
  out->device_caps = (cap.capabilities & V4L2_CAP_DEVICE_CAPS) ? cap.device_caps : cap.capabilities;
  return 0;
}

static void format_out(const struct v4l2_format *f, struct kernel_v4l2_format *out) {
  out->width = f->fmt.pix.width;
  out->height = f->fmt.pix.height;
  out->pixelformat = f->fmt.pix.pixelformat;
  out->field = f->fmt.pix.field;
  out->bytesperline = f->fmt.pix.bytesperline;
  out->sizeimage = f->fmt.pix.sizeimage;
  out->colorspace = f->fmt.pix.colorspace;
}

int kernel_v4l2_get_format(int fd, struct kernel_v4l2_format *fmt) {
  struct v4l2_format f;
  memset(&f, 0, sizeof(f));
  f.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
  int r = xioctl(fd, VIDIOC_G_FMT, &f);
  if (r < 0) return r;
  format_out(&f, fmt);
  return 0;
}

int kernel_v4l2_set_format(int fd, struct kernel_v4l2_format *fmt) {
  struct v4l2_format f;
  memset(&f, 0, sizeof(f));
  f.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
  f.fmt.pix.width = fmt->width;
  f.fmt.pix.height = fmt->height;
  f.fmt.pix.pixelformat = fmt->pixelformat;
  f.fmt.pix.field = fmt->field;
  int r = xioctl(fd, VIDIOC_S_FMT, &f);
  if (r < 0) return r;
  format_out(&f, fmt);
  return 0;
}

int kernel_v4l2_reqbufs(int fd, uint32_t count) {
  struct v4l2_requestbuffers rb;
  memset(&rb, 0, sizeof(rb));
  rb.count = count;
  rb.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
  rb.memory = V4L2_MEMORY_MMAP;
  int r = xioctl(fd, VIDIOC_REQBUFS, &rb);
  return r < 0 ? r : (int)rb.count;
}

/* A v4l2_buffer of the capture queue's MMAP buffer `index`. */
static void capture_buffer(struct v4l2_buffer *b, uint32_t index) {
  memset(b, 0, sizeof(*b));
  b->index = index;
  b->type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
  b->memory = V4L2_MEMORY_MMAP;
}

int kernel_v4l2_querybuf(int fd, uint32_t index, uint32_t *length) {
  struct v4l2_buffer b;
  capture_buffer(&b, index);
  int r = xioctl(fd, VIDIOC_QUERYBUF, &b);
  if (r < 0) return r;
  *length = b.length;
  return 0;
}

int kernel_v4l2_expbuf(int fd, uint32_t index, uint32_t flags) {
  struct v4l2_exportbuffer e;
  memset(&e, 0, sizeof(e));
  e.type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
  e.index = index;
  e.plane = 0;
  e.flags = flags | O_CLOEXEC;
  int r = xioctl(fd, VIDIOC_EXPBUF, &e);
  return r < 0 ? r : e.fd;
}

int kernel_v4l2_qbuf(int fd, uint32_t index) {
  struct v4l2_buffer b;
  capture_buffer(&b, index);
  int r = xioctl(fd, VIDIOC_QBUF, &b);
  return r < 0 ? r : 0;
}

int kernel_v4l2_dqbuf(int fd, struct kernel_v4l2_frame *out) {
  struct v4l2_buffer b;
  capture_buffer(&b, 0);
  int r = xioctl(fd, VIDIOC_DQBUF, &b);
  if (r < 0) return r;
  out->index = b.index;
  out->bytesused = b.bytesused;
  out->flags = b.flags;
  out->field = b.field;
  out->sequence = b.sequence;
  out->timestamp_us = (int64_t)b.timestamp.tv_sec * 1000000 + (int64_t)b.timestamp.tv_usec;
  return 0;
}

int kernel_v4l2_stream(int fd, int on) {
  int type = V4L2_BUF_TYPE_VIDEO_CAPTURE;
  int r = xioctl(fd, on ? VIDIOC_STREAMON : VIDIOC_STREAMOFF, &type);
  return r < 0 ? r : 0;
}
