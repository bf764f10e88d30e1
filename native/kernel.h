/*
 * kernel.h - thin wrappers over the ioctls of the kernel's dma-buf user-space interfaces:
 * dma-buf descriptors (SYNC, SET_NAME, EXPORT/IMPORT_SYNC_FILE), sync_file (FILE_INFO),
 * udmabuf (UDMABUF_CREATE), dma-heaps (DMA_HEAP_IOCTL_ALLOC) and V4L2 single-planar video
 * capture with MMAP buffers (QUERYCAP, G/S_FMT, REQBUFS, QUERYBUF, EXPBUF, QBUF, DQBUF,
 * STREAMON/OFF).
 *
 * Same contract as sys.h: no Node-API here; every function returns a non-negative value on
 * success and -errno on failure; every ioctl is retried on EINTR. Struct layouts and request
 * numbers come from the kernel's uapi headers, never from hand-written numbers.
 *
 * Descriptors these functions create are close-on-exec.
 */
#ifndef DMABUF_KERNEL_H
#define DMABUF_KERNEL_H

#include <stddef.h>
#include <stdint.h>

/* The kernel's own "operation not supported" (not a user-space errno; NVIDIA's dma-bufs
 * return it from mmap). */
#define KERNEL_ENOTSUPP 524

/* dma-buf descriptors */
/* DMA_BUF_IOCTL_SYNC with `flags` (DMA_BUF_SYNC_*); restarted on EINTR and EAGAIN, as the
 * uapi documents. Blocks while the kernel waits for the buffer's fences. */
int kernel_dmabuf_sync(int fd, uint32_t flags);
/* DMA_BUF_SET_NAME; `name` is NUL-terminated. */
int kernel_dmabuf_set_name(int fd, const char *name);
/* DMA_BUF_IOCTL_EXPORT_SYNC_FILE: a new sync_file descriptor (DMA_BUF_SYNC_READ: the fences
 * a reader waits for; DMA_BUF_SYNC_WRITE: those a writer waits for). */
int kernel_dmabuf_export_sync_file(int fd, uint32_t flags);
/* DMA_BUF_IOCTL_IMPORT_SYNC_FILE: adds the sync_file's fence as a read or write fence. */
int kernel_dmabuf_import_sync_file(int fd, uint32_t flags, int sync_fd);

/* sync_file */
struct kernel_sync_file_info {
  char name[32];      /* NUL-terminated */
  int32_t status;     /* 1 signalled, 0 active, < 0 signalled with an error */
  uint32_t num_fences;
};
int kernel_sync_file_info(int fd, struct kernel_sync_file_info *out);

/* udmabuf: a dma-buf over [offset, offset + size) of a memfd; returns its descriptor. */
int kernel_udmabuf_create(int dev_fd, int memfd, uint64_t offset, uint64_t size, uint32_t flags);

/* dma-heaps: allocates `len` bytes from the heap; returns the dma-buf descriptor. */
int kernel_dma_heap_alloc(int heap_fd, uint64_t len, uint32_t fd_flags, uint64_t heap_flags);

/* V4L2, single-planar video capture (V4L2_BUF_TYPE_VIDEO_CAPTURE), MMAP buffers */
struct kernel_v4l2_cap {
  char driver[17];
  char card[33];
  char bus_info[33];
  uint32_t capabilities;
  uint32_t device_caps;
};
int kernel_v4l2_querycap(int fd, struct kernel_v4l2_cap *out);

struct kernel_v4l2_format {
  uint32_t width;
  uint32_t height;
  uint32_t pixelformat;
  uint32_t field;
  uint32_t bytesperline;
  uint32_t sizeimage;
  uint32_t colorspace;
};
/* VIDIOC_G_FMT into *fmt. */
int kernel_v4l2_get_format(int fd, struct kernel_v4l2_format *fmt);
/* VIDIOC_S_FMT of width, height, pixelformat and field; *fmt receives what the driver chose. */
int kernel_v4l2_set_format(int fd, struct kernel_v4l2_format *fmt);
/* VIDIOC_REQBUFS with V4L2_MEMORY_MMAP; returns the count granted (0 frees them). */
int kernel_v4l2_reqbufs(int fd, uint32_t count);
/* VIDIOC_QUERYBUF: the buffer's length. */
int kernel_v4l2_querybuf(int fd, uint32_t index, uint32_t *length);
/* VIDIOC_EXPBUF of plane 0 with O_CLOEXEC | `flags` (O_RDONLY or O_RDWR): a dma-buf. */
int kernel_v4l2_expbuf(int fd, uint32_t index, uint32_t flags);
int kernel_v4l2_qbuf(int fd, uint32_t index);

struct kernel_v4l2_frame {
  uint32_t index;
  uint32_t bytesused;
  uint32_t flags;
  uint32_t field;
  uint32_t sequence;
  int64_t timestamp_us;
};
/* VIDIOC_DQBUF; -EAGAIN when the device is non-blocking and no frame is ready. */
int kernel_v4l2_dqbuf(int fd, struct kernel_v4l2_frame *out);
/* VIDIOC_STREAMON (on != 0) or VIDIOC_STREAMOFF. */
int kernel_v4l2_stream(int fd, int on);

#endif /* DMABUF_KERNEL_H */
