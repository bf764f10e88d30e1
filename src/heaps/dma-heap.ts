/**
 * The kernel's dma-heaps (`/dev/dma_heap/<name>`) as heaps of this package.
 *
 * A dma-heap buffer is a kernel dma-buf whose exporter is the kernel itself (its `exporter`
 * is the heap's name, e.g. `system`): its memory is allocated at once by the kernel, not late
 * by this package; any driver can import it; its memory never moves; it cannot be sealed.
 * A system-heap buffer of this package, by contrast, is a memfd that only processes running
 * this package can import, allocated at the first map and able to move to huge pages; turn it
 * into a kernel dma-buf with `toKernelDmaBuf` (udmabuf) when a driver must import it.
 *
 * @module
 */
import { closeSync, openSync, readdirSync, constants as fsConstants } from 'node:fs';
import { O_RDONLY, O_RDWR, type DmaBuf } from '../core/dma-buf.js';
import { DmaBufError } from '../core/errors.js';
import { native } from '../native/binding.js';
import { adoptKernelDescriptor, type KernelBufferPriv } from '../kernel/kernel-buffer.js';
import { writeContents, type AllocateOptions, type Heap } from './system.js';

/** Where the kernel lists its dma-heaps. */
export const DMA_HEAP_DIR = '/dev/dma_heap';

/**
 * The names of the machine's dma-heaps (`system`, `reserved`, `linux,cma`, ...), sorted;
 * empty where the kernel has none (no `CONFIG_DMABUF_HEAPS`).
 *
 * @example
 * ```ts
 * if (dmaHeaps().includes('system')) buf = dmaHeap('system').allocate(1 << 20);
 * ```
 */
export function dmaHeaps(): string[] {
  try {
    return readdirSync(DMA_HEAP_DIR).sort();
  } catch {
    return [];
  }
}

/** A heap of the kernel: allocations are kernel dma-bufs. */
export class DmaHeap implements Heap {
  /** The heap's name, which is also the `exporter` of its buffers. */
  readonly name: string;
  /** Its device: `/dev/dma_heap/<name>`. */
  readonly path: string;

  /** @internal use {@link dmaHeap}. */
  constructor(name: string) {
    this.name = name;
    this.path = `${DMA_HEAP_DIR}/${name}`;
  }

  /**
   * Allocates `size` bytes (rounded up to whole pages by the kernel: the buffer's `size` says
   * how much it got) with `DMA_HEAP_IOCTL_ALLOC`. `flags` `O_RDONLY` gives a read-only
   * descriptor; `name` is set with `DMA_BUF_SET_NAME` (at most 31 bytes); `contents` is
   * written once, before the buffer is returned.
   *
   * @throws {DmaBufError} `EINVAL` for a size that is not a positive safe integer, bad flags,
   *   a name over 31 bytes, or contents larger than the buffer or given with `O_RDONLY`;
   *   `ENODEV` when the heap is gone; `EACCES` without permission on its device; `ENOMEM`
   *   when the heap is out of memory.
   * @example
   * ```ts
   * using buf = dmaHeap('system').allocate(1 << 20, { name: 'frame' });
   * ```
   */
  allocate(size: number, options: AllocateOptions = {}): DmaBuf<KernelBufferPriv> {
    const op = 'allocate';
    const flags = options?.flags ?? O_RDWR;
    const contents = options?.contents;
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new DmaBufError('EINVAL', `${op}: size must be a positive safe integer, got ${String(size)}`, { op });
    }
    if (flags !== O_RDWR && flags !== O_RDONLY) {
      throw new DmaBufError('EINVAL', `${op}: flags must be O_RDWR or O_RDONLY for a dma-heap buffer, got ${String(flags)}`, { op });
    }
    if (contents !== undefined && !(contents instanceof Uint8Array && contents.byteLength <= size && flags === O_RDWR)) {
      throw new DmaBufError('EINVAL', `${op}: contents must be a Uint8Array of at most ${size} bytes, and needs an O_RDWR buffer`, { op });
    }
    const heapFd = this.#open(op);
    let fd: number;
    try {
      fd = native.dmaHeapAlloc(heapFd, size, flags);
    } finally {
      closeSync(heapFd);
    }
    const buf = adoptKernelDescriptor(fd, op);
    try {
      if (options?.name) buf.setName(options.name);
      if (contents && contents.byteLength > 0) writeContents(buf.priv.file.fd, buf.size, contents);
    } catch (err) {
      buf.put();
      throw err;
    }
    return buf;
  }

  /** Opens the heap's device for one allocation. */
  #open(op: string): number {
    let fd: number;
    try {
      fd = openSync(this.path, fsConstants.O_RDONLY) // Node opens close-on-exec;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === 'ENOENT') throw new DmaBufError('ENODEV', `${op}: the dma-heap "${this.name}" is gone (${this.path} does not exist)`, { op, cause: err });
      throw new DmaBufError(code ?? 'EIO', `${op}: cannot open ${this.path}: ${(err as Error).message}${code === 'EACCES' ? ' (dma-heap devices are root-only by default: run as root or change the device\'s group)' : ''}`, { op, cause: err });
    }
    return fd;
  }
}

/**
 * The dma-heap of this name.
 *
 * @throws {DmaBufError} `EINVAL` for a name that is empty or holds `/`; `ENODEV` when the
 *   machine has no such heap (the message lists those it has).
 * @example
 * ```ts
 * const heap = dmaHeap('system');
 * ```
 */
export function dmaHeap(name: string): DmaHeap {
  const op = 'dmaHeap';
  if (typeof name !== 'string' || name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0')) {
    throw new DmaBufError('EINVAL', `${op}: a heap's name is a file name under ${DMA_HEAP_DIR}, got ${JSON.stringify(name)}`, { op });
  }
  const heaps = dmaHeaps();
  if (!heaps.includes(name)) {
    const has = heaps.length ? `this machine has: ${heaps.join(', ')}` : `this machine has none (${DMA_HEAP_DIR} is missing: the kernel lacks CONFIG_DMABUF_HEAPS, or it is not mounted)`;
    throw new DmaBufError('ENODEV', `${op}: no dma-heap "${name}"; ${has}`, { op });
  }
  return new DmaHeap(name);
}
