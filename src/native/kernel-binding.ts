/**
 * The addon's functions for the kernel's dma-buf interfaces (`native/kernel.c`, converted by
 * `native/kernel_binding.c`): dma-buf and sync_file ioctls, udmabuf, dma-heaps and V4L2
 * capture. Part of {@link NativeBinding}; errors are converted the same way (a failed ioctl
 * is a `DmaBufError` whose `code` is the errno name, `'E524'` for the kernel's `ENOTSUPP`,
 * and whose `syscall` names the ioctl, e.g. `'ioctl(DMA_BUF_IOCTL_SYNC)'`).
 *
 * @module
 */

/** What `SYNC_IOC_FILE_INFO` tells about a sync_file. */
export interface SyncFileInfoResult {
  /** The sync_file's name (the driver's, at most 31 bytes). */
  name: string;
  /** 1 signalled, 0 still active, negative: signalled with that error (-errno). */
  status: number;
  /** How many fences the file holds. */
  numFences: number;
}

/** `VIDIOC_QUERYCAP`. */
export interface V4l2Capability {
  driver: string;
  card: string;
  busInfo: string;
  /** The whole physical device's capabilities (V4L2_CAP_*). */
  capabilities: number;
  /** This video node's capabilities (V4L2_CAP_*). */
  deviceCaps: number;
}

/** A single-planar video capture format (`struct v4l2_pix_format`). */
export interface V4l2PixFormat {
  width: number;
  height: number;
  /** A fourcc (V4L2_PIX_FMT_*). */
  pixelformat: number;
  field: number;
  bytesperline: number;
  sizeimage: number;
  colorspace: number;
}

/** A dequeued buffer (`VIDIOC_DQBUF`). */
export interface V4l2DequeuedBuffer {
  index: number;
  bytesused: number;
  /** V4L2_BUF_FLAG_*. */
  flags: number;
  field: number;
  sequence: number;
  /** The capture time, in microseconds (CLOCK_MONOTONIC for most drivers). */
  timestampUs: number;
}

/** The functions `native/kernel_binding.c` adds to the addon. */
export interface KernelBinding {
  /** `DMA_BUF_IOCTL_SYNC` with DMA_BUF_SYNC_* flags; restarted on EINTR and EAGAIN; may block on fences. */
  dmaBufSync(fd: number, flags: number): void;
  /** `DMA_BUF_SET_NAME` (the kernel refuses a name of 32 bytes or more with EINVAL). */
  dmaBufSetName(fd: number, name: string): void;
  /** `DMA_BUF_IOCTL_EXPORT_SYNC_FILE`: a new sync_file descriptor (close-on-exec). */
  dmaBufExportSyncFile(fd: number, flags: number): number;
  /** `DMA_BUF_IOCTL_IMPORT_SYNC_FILE`: adds the file's fence as a read or write fence. */
  dmaBufImportSyncFile(fd: number, flags: number, syncFd: number): void;
  /** `SYNC_IOC_FILE_INFO` (the file's own status; no per-fence details). */
  syncFileInfo(fd: number): SyncFileInfoResult;
  /** `UDMABUF_CREATE` on `/dev/udmabuf` (`devFd`): a dma-buf over a sealed memfd's range. */
  udmabufCreate(devFd: number, memfd: number, offset: number, size: number, flags: number): number;
  /** `DMA_HEAP_IOCTL_ALLOC` on `/dev/dma_heap/<name>`: a dma-buf of `len` bytes (O_CLOEXEC added). */
  dmaHeapAlloc(heapFd: number, len: number, fdFlags: number): number;
  /** `VIDIOC_QUERYCAP`. */
  v4l2QueryCap(fd: number): V4l2Capability;
  /** `VIDIOC_G_FMT` of the video capture queue. */
  v4l2GetFormat(fd: number): V4l2PixFormat;
  /** `VIDIOC_S_FMT` of the video capture queue; returns what the driver chose. */
  v4l2SetFormat(fd: number, width: number, height: number, pixelformat: number, field: number): V4l2PixFormat;
  /** `VIDIOC_REQBUFS` with `V4L2_MEMORY_MMAP`; returns the count granted (0 frees them). */
  v4l2ReqBufs(fd: number, count: number): number;
  /** `VIDIOC_QUERYBUF`: the buffer's length in bytes. */
  v4l2QueryBuf(fd: number, index: number): number;
  /** `VIDIOC_EXPBUF` of plane 0 (O_CLOEXEC added; `flags` O_RDONLY or O_RDWR): a dma-buf. */
  v4l2ExpBuf(fd: number, index: number, flags: number): number;
  /** `VIDIOC_QBUF`. */
  v4l2QBuf(fd: number, index: number): void;
  /** `VIDIOC_DQBUF`; null when no frame is ready on a non-blocking device (EAGAIN). */
  v4l2DQBuf(fd: number): V4l2DequeuedBuffer | null;
  /** `VIDIOC_STREAMON` / `VIDIOC_STREAMOFF`. */
  v4l2Stream(fd: number, on: boolean): void;
  /** Constants of the kernel's uapi headers the addon was built with. */
  kernelConstants: KernelConstants;
}

/** The uapi constants `native/kernel_binding.c` exports. */
export interface KernelConstants {
  DMA_BUF_SYNC_READ: number; DMA_BUF_SYNC_WRITE: number; DMA_BUF_SYNC_RW: number;
  DMA_BUF_SYNC_START: number; DMA_BUF_SYNC_END: number; DMA_BUF_NAME_LEN: number;
  /** The kernel's ENOTSUPP (524), which has no user-space name. */
  KERNEL_ENOTSUPP: number;
  O_RDONLY: number; O_RDWR: number; O_ACCMODE: number;
  V4L2_CAP_VIDEO_CAPTURE: number; V4L2_CAP_VIDEO_CAPTURE_MPLANE: number;
  V4L2_CAP_STREAMING: number; V4L2_CAP_READWRITE: number;
  V4L2_FIELD_ANY: number; V4L2_FIELD_NONE: number; V4L2_BUF_FLAG_ERROR: number;
  V4L2_PIX_FMT_YUYV: number; V4L2_PIX_FMT_RGB24: number; V4L2_PIX_FMT_GREY: number;
}
