/**
 * Our buffers as kernel dma-bufs, through udmabuf: {@link toKernelDmaBuf} hands a buffer's
 * memfd to `/dev/udmabuf` (`UDMABUF_CREATE`), which makes a real kernel dma-buf over the same
 * pages: a driver can import it and nothing is copied.
 *
 * It does so the framework's way: it attaches a device that stands for the kernel and maps
 * the buffer into it, so the exporter allocates the storage (late allocation) and the map
 * keeps it from moving (a migration waits for every map to go). The attachment lasts while
 * this thread holds the kernel buffer; once that buffer object is released it is detached.
 * Other processes holding the kernel dma-buf keep its pages (udmabuf pins them) but would no
 * longer follow a later migration of the source buffer.
 *
 * @module
 */
import { closeSync, openSync, readFileSync, constants as fsConstants } from 'node:fs';
import { DmaBuf } from '../core/dma-buf.js';
import { Device, type DeviceMapping, type MapMemoryRequest } from '../core/device.js';
import { DmaBufError } from '../core/errors.js';
import { kOnRelease } from '../core/internal.js';
import { native } from '../native/binding.js';
import { adoptKernelDescriptor, type KernelBufferPriv } from '../kernel/kernel-buffer.js';

/** The udmabuf device. */
export const UDMABUF_PATH = '/dev/udmabuf';
const SIZE_LIMIT_PARAM = '/sys/module/udmabuf/parameters/size_limit_mb';

/** udmabuf's limit per buffer in bytes (the module's `size_limit_mb`), or null when unknown. */
export function udmabufSizeLimit(): number | null {
  try {
    const mb = Number(readFileSync(SIZE_LIMIT_PARAM, 'utf8').trim());
    return Number.isSafeInteger(mb) && mb > 0 ? mb * 1024 * 1024 : null;
  } catch {
    return null;
  }
}

/** The kernel, as the device a buffer is mapped into: each map creates a udmabuf. */
class UdmabufDevice extends Device {
  readonly kind = 'udmabuf';
  readonly #devFd: number;
  #created = -1;

  constructor(devFd: number) {
    super({ name: 'udmabuf' });
    this.#devFd = devFd;
  }

  mapMemory(request: MapMemoryRequest): DeviceMapping {
    const op = 'toKernelDmaBuf';
    const { memory } = request;
    if (memory.sharedOnly) {
      throw new DmaBufError('EINVAL', `${op}: the buffer's memory is already a kernel dma-buf; pass its descriptor to the driver as it is`, { op });
    }
    if (memory.writeSealed) throw readOnlyError(op);
    const limit = udmabufSizeLimit();
    if (limit !== null && memory.size > limit) {
      throw new DmaBufError('EINVAL', `${op}: the buffer's ${memory.size} bytes are over udmabuf's limit of ${limit} bytes per buffer (raise it with the module parameter udmabuf.size_limit_mb)`, { op });
    }
    let fd: number;
    try {
      fd = native.udmabufCreate(this.#devFd, memory.fd, 0, memory.size, 0);
    } catch (err) {
      if (!DmaBufError.is(err, 'EINVAL')) throw err;
      throw new DmaBufError('EINVAL', `${op}: udmabuf refused the buffer's memory (EINVAL): it takes memfds sealed against shrinking and not against writes, page-aligned, of at most udmabuf.size_limit_mb`, { op, cause: err, syscall: err.syscall, errno: err.errno });
    }
    if (this.#created >= 0) native.close(this.#created);
    this.#created = fd;
    return { release() {} };
  }

  /** The descriptor of the dma-buf the last map created; the caller owns it. */
  take(): number {
    const fd = this.#created;
    this.#created = -1;
    return fd;
  }
}

function readOnlyError(op: string): DmaBufError {
  return new DmaBufError('EINVAL', `${op}: the buffer is read-only or sealed, and udmabuf refuses memory sealed against writes (F_SEAL_WRITE); export a writable, unsealed buffer`, { op });
}

function openUdmabuf(op: string): number {
  try {
    return openSync(UDMABUF_PATH, fsConstants.O_RDWR);
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ENOENT' || code === 'ENXIO' || code === 'ENODEV') {
      throw new DmaBufError('ENODEV', `${op}: there is no ${UDMABUF_PATH} on this machine: its kernel lacks udmabuf (CONFIG_UDMABUF; try "modprobe udmabuf")`, { op, cause: err });
    }
    throw new DmaBufError(code ?? 'EIO', `${op}: cannot open ${UDMABUF_PATH}: ${(err as Error).message}${code === 'EACCES' ? ' (run as root, or give your user access to the device)' : ''}`, { op, cause: err });
  }
}

/** Options of {@link toKernelDmaBuf}. */
export interface ToKernelOptions {
  /** Gives up waiting for the buffer's lock or a migration (`EINTR`). */
  signal?: AbortSignal;
}

/**
 * Turns a buffer whose storage is a memfd (the system heap's, in this or another process)
 * into a real kernel dma-buf over the same pages, through `/dev/udmabuf`. The returned buffer
 * is a kernel dma-buf (`exporter` `'udmabuf'`, named after the buffer when the name fits in
 * 31 bytes): pass `kbuf.fd()` to any driver that imports dma-bufs. Its size is the buffer's,
 * rounded up to whole pages. Put both buffers when done.
 *
 * @throws {DmaBufError} `ENODEV` without `/dev/udmabuf`; `EINVAL` for something that is not
 *   a buffer, a read-only or sealed buffer, one over udmabuf's size limit (64 MiB by
 *   default), or memory that is already a kernel dma-buf; `EACCES` without permission on
 *   the device; `EINTR` when `signal` aborts; what `attach` and `map` throw.
 * @example
 * ```ts
 * using buf = systemHeap.allocate(1 << 20);
 * using kbuf = await toKernelDmaBuf(buf);
 * driver.importDmaBuf(kbuf.fd());
 * ```
 */
export async function toKernelDmaBuf(buf: DmaBuf, options: ToKernelOptions = {}): Promise<DmaBuf<KernelBufferPriv>> {
  const op = 'toKernelDmaBuf';
  if (!(buf instanceof DmaBuf)) throw new DmaBufError('EINVAL', `${op}: expected a DmaBuf`, { op });
  if (buf.readOnly) throw readOnlyError(op);
  const devFd = openUdmabuf(op);
  try {
    const device = new UdmabufDevice(devFd);
    const attachment = await buf.attach(device);
    try {
      await attachment.map('bidirectional', options?.signal ? { signal: options.signal } : {});
      const kbuf = adoptKernelDescriptor(device.take(), op);
      kbuf[kOnRelease](() => {
        attachment.detach().catch((err: unknown) => {
          process.emitWarning(`dmabuf: detaching udmabuf from buffer "${buf.name}" failed: ${(err as Error).message}`, 'DmaBufWarning');
        });
      });
      if (buf.name && Buffer.byteLength(buf.name) < native.kernelConstants.DMA_BUF_NAME_LEN) {
        try {
          kbuf.setName(buf.name);
        } catch {
          // a name is a courtesy: the buffer works without it
        }
      }
      return kbuf;
    } catch (err) {
      await attachment.detach().catch(() => {});
      throw err;
    }
  } finally {
    closeSync(devFd);
  }
}
