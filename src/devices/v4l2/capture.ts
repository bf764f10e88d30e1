/**
 * Video capture from a V4L2 device into kernel dma-bufs: the driver's own buffers
 * (`VIDIOC_REQBUFS` with `V4L2_MEMORY_MMAP`), each exported once as a dma-buf
 * (`VIDIOC_EXPBUF`) and turned into a buffer object; frames are dequeued (`VIDIOC_DQBUF`)
 * as those buffers and queued back (`VIDIOC_QBUF`) when the user is done. A frame can go to
 * another process as it is (`channel.send(frame.buffer)`): the receiver maps the driver's
 * pages; nothing is copied.
 *
 * Single-planar video capture only (`V4L2_CAP_VIDEO_CAPTURE`, as most webcams, capture
 * cards and the kernel's `vivid`). The framework knows nothing of cameras: this module only
 * uses its public buffers.
 *
 * @module
 */
import { closeSync, openSync, constants as fsConstants } from 'node:fs';
import { basename } from 'node:path';
import type { DmaBuf } from '../../core/dma-buf.js';
import { DmaBufError } from '../../core/errors.js';
import { native } from '../../native/binding.js';
import type { V4l2PixFormat } from '../../native/kernel-binding.js';
import { adoptKernelDescriptor } from '../../kernel/kernel-buffer.js';
import { waitForPoll } from '../../kernel/poll-wait.js';
import { fourcc, fourccName } from './fourcc.js';

/** Options of {@link V4l2Capture.open}. */
export interface CaptureOptions {
  /** Frame width in pixels (default: the device's current format). */
  width?: number;
  /** Frame height in pixels (default: the device's current format). */
  height?: number;
  /** Pixel format as a four-character code, e.g. `'YUYV'` (default: the device's current one). */
  pixelFormat?: string;
  /** How many buffers to ask the driver for (default 4, at least 2); it may grant more or fewer. */
  buffers?: number;
}

/** The negotiated format. */
export interface CaptureFormat {
  width: number;
  height: number;
  /** The four-character code, e.g. `'YUYV'`. */
  pixelFormat: string;
  /** Bytes from one line to the next. */
  bytesPerLine: number;
  /** Bytes of one frame. */
  sizeImage: number;
}

/** Options of {@link V4l2Capture.next}. */
export interface NextFrameOptions {
  /** Gives up waiting (`EINTR`). */
  signal?: AbortSignal;
  /** Gives up after this many milliseconds (`ETIMEDOUT`). */
  timeout?: number;
}

/** A captured frame: one of the capture's buffers, lent to the user until {@link requeue}. */
export interface V4l2Frame {
  /** The frame's kernel dma-buf (the same object for every frame captured into that buffer). */
  readonly buffer: DmaBuf;
  /** The driver's index of the buffer. */
  readonly index: number;
  /** The frame's sequence number. */
  readonly sequence: number;
  /** Bytes of image data in the buffer. */
  readonly bytesUsed: number;
  /** When it was captured, in microseconds (the driver's clock, CLOCK_MONOTONIC for most). */
  readonly timestampUs: number;
  /** Whether the driver flagged the data as damaged (`V4L2_BUF_FLAG_ERROR`). */
  readonly damaged: boolean;
  /** Gives the buffer back to the driver for a later frame. Idempotent. */
  requeue(): void;
}

const kOpen = Symbol('dmabuf.v4l2.open');

/**
 * A V4L2 video capture device streaming into dma-bufs.
 *
 * @example
 * ```ts
 * await using cam = await V4l2Capture.open('/dev/video0', { width: 640, height: 360, pixelFormat: 'YUYV' });
 * const frame = await cam.next({ timeout: 2000 });
 * await channel.send(frame.buffer, { sequence: frame.sequence }); // zero-copy to another process
 * frame.requeue();
 * ```
 */
export class V4l2Capture implements AsyncDisposable {
  /** The device node. */
  readonly path: string;
  /** The driver's name (`VIDIOC_QUERYCAP`), e.g. `'vivid'`, `'uvcvideo'`. */
  readonly driver: string;
  /** The device's name. */
  readonly card: string;
  /** The format the driver chose. */
  readonly format: CaptureFormat;
  #fd: number;
  #buffers: DmaBuf[];
  #lent = new Set<number>();

  /** @internal use {@link V4l2Capture.open}. */
  constructor(token: symbol, path: string, fd: number, cap: { driver: string; card: string }, format: CaptureFormat, buffers: DmaBuf[]) {
    if (token !== kOpen) throw new DmaBufError('EINVAL', 'new V4l2Capture: use V4l2Capture.open(path)', { op: 'new V4l2Capture' });
    this.path = path;
    this.#fd = fd;
    this.driver = cap.driver;
    this.card = cap.card;
    this.format = format;
    this.#buffers = buffers;
  }

  /**
   * Opens a capture device, sets the format, gets the driver's buffers as dma-bufs and
   * starts streaming.
   *
   * @throws {DmaBufError} `ENODEV` when `path` does not exist; `EINVAL` when it is not a V4L2
   *   single-planar capture device that can stream, or does not offer the pixel format;
   *   `ENOTSUP` for a multi-planar-only device; `EBUSY` when another process streams from it;
   *   `ENOMEM` when the driver grants no buffer.
   */
  static async open(path: string, options: CaptureOptions = {}): Promise<V4l2Capture> {
    const op = 'V4l2Capture.open';
    const k = native.kernelConstants;
    let fd: number;
    try {
      fd = openSync(path, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
    } catch (err) {
      const code = (err as { code?: string }).code;
      throw new DmaBufError(code === 'ENOENT' ? 'ENODEV' : code ?? 'EIO', `${op}: cannot open ${path}: ${(err as Error).message}${code === 'ENOENT' ? ' (no such video device; list them with "ls /dev/video*")' : ''}`, { op, cause: err });
    }
    const buffers: DmaBuf[] = [];
    try {
      let cap;
      try {
        cap = native.v4l2QueryCap(fd);
      } catch (err) {
        if (DmaBufError.is(err, 'ENOTTY')) throw new DmaBufError('EINVAL', `${op}: ${path} is not a V4L2 device`, { op, cause: err });
        throw err;
      }
      if ((cap.deviceCaps & k.V4L2_CAP_VIDEO_CAPTURE) === 0) {
        if (cap.deviceCaps & k.V4L2_CAP_VIDEO_CAPTURE_MPLANE) {
          throw new DmaBufError('ENOTSUP', `${op}: ${path} (${cap.card}) captures through the multi-planar API only, which this module does not support yet`, { op });
        }
        throw new DmaBufError('EINVAL', `${op}: ${path} (${cap.card}) is not a video capture device`, { op });
      }
      if ((cap.deviceCaps & k.V4L2_CAP_STREAMING) === 0) {
        throw new DmaBufError('EINVAL', `${op}: ${path} (${cap.card}) cannot stream (no V4L2_CAP_STREAMING)`, { op });
      }
      const format = negotiate(op, fd, path, options);
      const wanted = options?.buffers ?? 4;
      if (!Number.isSafeInteger(wanted) || wanted < 2 || wanted > 32) {
        throw new DmaBufError('EINVAL', `${op}: buffers must be an integer from 2 to 32, got ${String(wanted)}`, { op });
      }
      const count = native.v4l2ReqBufs(fd, wanted);
      if (count < 1) throw new DmaBufError('ENOMEM', `${op}: the driver of ${path} granted no buffer`, { op });
      const device = basename(path);
      for (let i = 0; i < count; i++) {
        const buf = adoptKernelDescriptor(native.v4l2ExpBuf(fd, i, k.O_RDWR), op);
        buffers.push(buf);
        try {
          buf.setName(`v4l2:${device}:${i}`.slice(0, k.DMA_BUF_NAME_LEN - 1));
        } catch {
          // a name is a courtesy
        }
        native.v4l2QBuf(fd, i);
      }
      native.v4l2Stream(fd, true);
      return new V4l2Capture(kOpen, path, fd, cap, format, buffers);
    } catch (err) {
      for (const b of buffers) b.put();
      closeSync(fd);
      throw err;
    }
  }

  /** Whether the capture is open (streaming). */
  get open(): boolean {
    return this.#fd >= 0;
  }

  /** The capture's buffers (kernel dma-bufs), by the driver's index. */
  get buffers(): readonly DmaBuf[] {
    return this.#buffers;
  }

  /**
   * The next captured frame. Waits for it without blocking the event loop. Requeue every
   * frame when done with it: the driver captures only into queued buffers.
   *
   * @throws {DmaBufError} `EINVAL` after {@link close}; `ETIMEDOUT` after `timeout`; `EINTR`
   *   when `signal` aborts; `EPIPE` when every buffer is lent out (nothing can be captured
   *   until one is requeued).
   */
  async next(options: NextFrameOptions = {}): Promise<V4l2Frame> {
    const op = 'next';
    for (;;) {
      const fd = this.#heldFd(op);
      const got = native.v4l2DQBuf(fd);
      if (got) return this.#frame(got.index, got.sequence, got.bytesused, got.timestampUs, (got.flags & native.kernelConstants.V4L2_BUF_FLAG_ERROR) !== 0);
      if (this.#lent.size === this.#buffers.length) {
        throw new DmaBufError('EPIPE', `${op}: all ${this.#buffers.length} buffers are lent out as frames; requeue one first`, { op });
      }
      await waitForPoll(fd, 'readable', { op, what: `a frame from ${this.path}`, signal: options?.signal, timeout: options?.timeout });
    }
  }

  #frame(index: number, sequence: number, bytesUsed: number, timestampUs: number, damaged: boolean): V4l2Frame {
    const buffer = this.#buffers[index];
    if (!buffer) throw new DmaBufError('EIO', `next: the driver returned buffer ${index}, which it never granted`, { op: 'next' });
    this.#lent.add(index);
    let queued = false;
    return {
      buffer, index, sequence, bytesUsed, timestampUs, damaged,
      requeue: () => {
        if (queued) return;
        queued = true;
        this.#lent.delete(index);
        if (this.#fd >= 0) native.v4l2QBuf(this.#fd, index);
      },
    };
  }

  /** Yields frames until the capture is closed (each must be requeued). */
  async *frames(options: NextFrameOptions = {}): AsyncGenerator<V4l2Frame> {
    while (this.open) yield await this.next(options);
  }

  #heldFd(op: string): number {
    if (this.#fd < 0) throw new DmaBufError('EINVAL', `${op}: the capture of ${this.path} is closed`, { op });
    return this.#fd;
  }

  /**
   * Stops streaming, puts the capture's references on its buffers and closes the device.
   * Frames still mapped elsewhere stay readable (a mapping holds the memory). Idempotent.
   */
  async close(): Promise<void> {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    try {
      native.v4l2Stream(fd, false);
    } finally {
      for (const b of this.#buffers) b.put();
      this.#buffers = [];
      this.#lent.clear();
      closeSync(fd);
    }
  }

  /** Closes the capture. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function describe(f: V4l2PixFormat): CaptureFormat {
  return { width: f.width, height: f.height, pixelFormat: fourccName(f.pixelformat), bytesPerLine: f.bytesperline, sizeImage: f.sizeimage };
}

/** Sets the options' format (what they leave out stays as the device has it). */
function negotiate(op: string, fd: number, path: string, options: CaptureOptions): CaptureFormat {
  const current = native.v4l2GetFormat(fd);
  const { width, height, pixelFormat } = options ?? {};
  for (const [key, v] of [['width', width], ['height', height]] as const) {
    if (v !== undefined && !(Number.isSafeInteger(v) && v > 0 && v <= 65535)) {
      throw new DmaBufError('EINVAL', `${op}: ${key} must be a positive integer, got ${String(v)}`, { op });
    }
  }
  if (width === undefined && height === undefined && pixelFormat === undefined) return describe(current);
  const want = pixelFormat === undefined ? current.pixelformat : fourcc(pixelFormat);
  const got = native.v4l2SetFormat(fd, width ?? current.width, height ?? current.height, want, native.kernelConstants.V4L2_FIELD_ANY);
  if (got.pixelformat !== want) {
    throw new DmaBufError('EINVAL', `${op}: ${path} does not capture ${fourccName(want)}; it offered ${fourccName(got.pixelformat)}`, { op });
  }
  return describe(got);
}
