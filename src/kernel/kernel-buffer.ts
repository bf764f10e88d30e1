/**
 * Kernel dma-bufs as buffer objects: the ops of a buffer whose memory is a kernel dma-buf
 * (udmabuf, a dma-heap, a DRM/GEM or V4L2 driver), and their creation from a descriptor.
 *
 * - **References** follow the kernel's: the buffer holds its own descriptor of the dma-buf
 *   ({@link KernelFile}); the last `put` closes it once no attachment is left.
 * - **CPU maps** are `mmap`s of that descriptor (`MAP_SHARED`: dma-buf exporters refuse
 *   private mappings), `PROT_READ` only for a read-only descriptor. An exporter that refuses
 *   mmap (NVIDIA's, with `ENOTSUPP`) gives an error naming it.
 * - **CPU access** brackets (`beginCpuAccess`/`endCpuAccess`) are `DMA_BUF_IOCTL_SYNC`; the
 *   start first waits for the buffer's fences by polling its descriptor, so the event loop
 *   never blocks.
 * - **Fences**: the buffer's reservation object is the kernel's ({@link KernelResv}), with
 *   the fences the kernel cannot hold kept in this thread.
 * - **Names** are `DMA_BUF_SET_NAME`: at most 31 bytes.
 *
 * @module
 */
import { DmaBuf, O_RDONLY, O_RDWR, kCreateImported, kReacquire } from '../core/dma-buf.js';
import type { DmaBufAttachment } from '../core/attachment.js';
import { BASE_PAGE_SIZE, forgetOnLastDetach, planSegments, tableOfMapping, type Device, type DeviceMapping } from '../core/device.js';
import { isWritableDirection, type DmaDirection } from '../core/direction.js';
import { DmaBufError } from '../core/errors.js';
import { Invalidations, type MemoryObject } from '../core/memory.js';
import type { CpuAccess, CpuAccessContext, DmaBufOps, OpContext } from '../core/ops.js';
import type { SgTable } from '../core/sg-table.js';
import * as registry from '../core/registry.js';
import { native, type StatResult } from '../native/binding.js';
import { describeKernelDescriptor, type KernelDescriptorInfo } from './descriptor.js';
import { KernelFile } from './kernel-file.js';
import { waitForPoll } from './poll-wait.js';
import { KernelResv } from './kernel-resv.js';

let nextMemoryId = 1;

/** A kernel dma-buf's memory, as devices map it: the buffer's own descriptor. */
class KernelMemory implements MemoryObject {
  readonly id = nextMemoryId++;
  readonly size: number;
  readonly pageSize = BASE_PAGE_SIZE;
  readonly writeSealed: boolean;
  readonly sharedOnly = true;
  readonly #file: KernelFile;
  readonly #invalidations = new Invalidations();

  constructor(file: KernelFile, size: number, readOnly: boolean) {
    this.#file = file;
    this.size = Math.ceil(size / BASE_PAGE_SIZE) * BASE_PAGE_SIZE;
    this.writeSealed = readOnly;
  }

  get fd(): number {
    return this.#file.fd;
  }

  onInvalidate(drop: () => void): () => void {
    return this.#invalidations.add(drop);
  }

  /** Makes every device drop its cached mappings (at release). */
  invalidate(): void {
    this.#invalidations.run();
  }
}

/** The private data of a kernel dma-buf's buffer object. */
export interface KernelBufferPriv {
  /** The buffer's own descriptor of the dma-buf. */
  readonly file: KernelFile;
  readonly memory: KernelMemory;
  /** The dma-buf's inode number (fdinfo `ino`). */
  readonly inode: number;
  /** The device mappings behind each live table. */
  readonly mappings: Map<SgTable, DeviceMapping>;
}

/**
 * The error of a map whose mmap the exporter refused, naming the exporter. `ENOTSUPP`
 * (errno 524, NVIDIA's answer) becomes `ENOTSUP`; other errnos keep their code.
 */
export function mapRefusedError(err: unknown, exporter: string): unknown {
  if (!DmaBufError.is(err) || err.syscall !== 'mmap') return err;
  const op = 'map';
  const opts = { op, syscall: 'mmap', errno: err.errno, cause: err };
  if (err.errno === native.kernelConstants.KERNEL_ENOTSUPP) {
    return new DmaBufError('ENOTSUP', `${op}: the exporter "${exporter}" of this kernel dma-buf does not let the CPU map it (mmap failed with ENOTSUPP, errno 524, as NVIDIA's driver answers); use the exporter's own API to reach the memory, or import the buffer into a device that can`, opts);
  }
  return new DmaBufError(err.code, `${op}: the exporter "${exporter}" of this kernel dma-buf refused to let the CPU map it (mmap failed with ${err.code}); it may not support CPU access at all`, opts);
}

/**
 * Checks a name for `DMA_BUF_SET_NAME`: at most 31 bytes of UTF-8 (`DMA_BUF_NAME_LEN`, 32,
 * counts the terminator).
 *
 * @throws {DmaBufError} `EINVAL` for a longer name.
 */
export function checkKernelName(op: string, name: string): void {
  const max = native.kernelConstants.DMA_BUF_NAME_LEN - 1;
  const bytes = Buffer.byteLength(name);
  if (bytes > max) {
    throw new DmaBufError('EINVAL', `${op}: a kernel dma-buf's name holds at most ${max} bytes (DMA_BUF_NAME_LEN is ${max + 1} with the terminator); "${name}" has ${bytes}`, { op });
  }
}

/** The descriptor of a kernel buffer, for ioctls. */
function heldFd(buf: DmaBuf<KernelBufferPriv>, op: string): number {
  const fd = buf.priv.file.fd;
  if (fd < 0) throw new DmaBufError('EINVAL', `${op}: the kernel dma-buf "${buf.name}" has been released`, { op });
  return fd;
}

function syncFlags(access: CpuAccess): number {
  const k = native.kernelConstants;
  return access === 'read' ? k.DMA_BUF_SYNC_READ : access === 'write' ? k.DMA_BUF_SYNC_WRITE : k.DMA_BUF_SYNC_RW;
}

function checkDevice(op: string, buf: DmaBuf<KernelBufferPriv>, device: Device): NonNullable<ReturnType<typeof planSegments>> {
  const c = device.constraints;
  if (c.pageSize > BASE_PAGE_SIZE) {
    throw new DmaBufError('EBUSY', `${op}: device "${device.name}" needs ${c.pageSize}-byte pages; the pages of a kernel dma-buf are its exporter's ("${buf.exporter}") and cannot be chosen`, { op });
  }
  const plan = planSegments(buf.size, c);
  if (!plan) {
    throw new DmaBufError('EINVAL', `${op}: device "${device.name}" cannot address ${buf.size} bytes in at most ${c.maxSegments} segments of at most ${c.maxSegmentSize} bytes`, { op });
  }
  return plan;
}

/** The ops of every kernel dma-buf's buffer object. */
const kernelOps: DmaBufOps<KernelBufferPriv> = {
  attach(buf: DmaBuf<KernelBufferPriv>, device: Device): void {
    checkDevice('attach', buf, device);
  },

  async mapDmaBuf(attachment: DmaBufAttachment<KernelBufferPriv>, direction: DmaDirection, ctx: OpContext): Promise<SgTable> {
    const buf = attachment.dmabuf;
    const plan = checkDevice('map', buf, attachment.device);
    heldFd(buf, 'map');
    const access = isWritableDirection(direction) ? 'write' : 'read';
    let mapping: DeviceMapping;
    try {
      mapping = await attachment.device.mapMemory({ memory: buf.priv.memory, access, signal: ctx.signal });
    } catch (err) {
      throw mapRefusedError(err, buf.exporter);
    }
    return tableOfMapping(buf.size, plan, mapping, buf.priv.mappings);
  },

  unmapDmaBuf(attachment: DmaBufAttachment<KernelBufferPriv>, sgt: SgTable): void {
    const mappings = attachment.dmabuf.priv.mappings;
    mappings.get(sgt)?.release();
    mappings.delete(sgt);
  },

  detach(buf: DmaBuf<KernelBufferPriv>, attachment: DmaBufAttachment<KernelBufferPriv>): void {
    forgetOnLastDetach(buf.attachments, attachment, buf.priv.memory);
  },

  async beginCpuAccess(buf: DmaBuf<KernelBufferPriv>, access: CpuAccess, ctx: CpuAccessContext): Promise<void> {
    const op = 'beginCpuAccess';
    const fd = heldFd(buf, op);
    // A reader waits for the write fences (the descriptor polls readable), a writer for all.
    await waitForPoll(fd, access === 'read' ? 'readable' : 'writable', { signal: ctx.signal, op, what: `the fences of "${buf.name}" (${buf.exporter})` });
    native.dmaBufSync(heldFd(buf, op), native.kernelConstants.DMA_BUF_SYNC_START | syncFlags(access));
  },

  endCpuAccess(buf: DmaBuf<KernelBufferPriv>, access: CpuAccess): void {
    native.dmaBufSync(heldFd(buf, 'endCpuAccess'), native.kernelConstants.DMA_BUF_SYNC_END | syncFlags(access));
  },

  setName(buf: DmaBuf<KernelBufferPriv>, name: string): void {
    const op = 'setName';
    checkKernelName(op, name);
    try {
      native.dmaBufSetName(heldFd(buf, op), name);
    } catch (err) {
      if (DmaBufError.is(err, 'EBUSY')) {
        throw new DmaBufError('EBUSY', `${op}: this kernel renames a dma-buf only while no device is attached to it in the kernel (before Linux 5.19); name it before handing it to a driver`, { op, cause: err, syscall: err.syscall, errno: err.errno });
      }
      throw err;
    }
  },

  release(buf: DmaBuf<KernelBufferPriv>): void {
    buf.priv.memory.invalidate();
  },
};

/** Whether `buf` is a kernel dma-buf's buffer object (imported, allocated from a dma-heap, ...). */
export function isKernelBuffer(buf: unknown): buf is DmaBuf<KernelBufferPriv> {
  return buf instanceof DmaBuf && buf.ops === (kernelOps as DmaBufOps<unknown>);
}

/** The held descriptor of a kernel buffer for an ioctl; `EINVAL` for any other buffer. */
export function kernelDescriptorOf(buf: unknown, op: string): number {
  if (!isKernelBuffer(buf)) {
    throw new DmaBufError('EINVAL', `${op}: not a kernel dma-buf (get one with DmaBuf.get(fd) of a kernel descriptor, dmaHeap(name).allocate() or toKernelDmaBuf(buf))`, { op });
  }
  return heldFd(buf, op);
}

function createKernelBuffer(file: KernelFile, info: KernelDescriptorInfo): DmaBuf<KernelBufferPriv> {
  const priv: KernelBufferPriv = { file, memory: new KernelMemory(file, info.size, info.readOnly), inode: info.inode, mappings: new Map() };
  const fd = (op: string): number => {
    if (file.fd < 0) throw new DmaBufError('EINVAL', `${op}: the kernel dma-buf "${info.name}" has been released`, { op });
    return file.fd;
  };
  const resv = new KernelResv(fd, `kernel dma-buf "${info.name}" (${info.exporter})`);
  return DmaBuf[kCreateImported]<KernelBufferPriv>({
    ops: kernelOps, size: info.size, priv, flags: info.readOnly ? O_RDONLY : O_RDWR, name: info.name, exporter: info.exporter, resv,
  }, file, false);
}

/** This thread's live buffer object of the dma-buf with this key, if any. */
function lookup(key: string): DmaBuf<KernelBufferPriv> | undefined {
  const local = registry.lookup(key);
  return isKernelBuffer(local) && !local.released ? local : undefined;
}

/**
 * `DmaBuf.get`'s importer of kernel dma-bufs (registered by the package root): the buffer of
 * a kernel dma-buf descriptor, with one more reference; the same object for the same kernel
 * buffer in one thread. `undefined` for any other descriptor.
 */
export function importKernelDescriptor(fd: number, st: StatResult): DmaBuf | undefined {
  const info = describeKernelDescriptor(fd, st);
  if (!info) return undefined;
  const local = lookup(info.key);
  if (local) {
    local[kReacquire](fd);
    return local as DmaBuf;
  }
  return createKernelBuffer(new KernelFile(fd, info.key, false), info) as DmaBuf;
}

/**
 * The buffer of a kernel dma-buf descriptor that the caller hands over (a new descriptor from
 * a dma-heap, udmabuf or V4L2): the buffer owns `fd` from now on, also when this throws.
 *
 * @throws {DmaBufError} `EINVAL` when `fd` is not a kernel dma-buf.
 */
export function adoptKernelDescriptor(fd: number, op: string): DmaBuf<KernelBufferPriv> {
  let info: KernelDescriptorInfo | null;
  try {
    info = describeKernelDescriptor(fd);
    if (!info) throw new DmaBufError('EINVAL', `${op}: the kernel returned a descriptor that is not a dma-buf`, { op });
  } catch (err) {
    native.close(fd);
    throw err;
  }
  const local = lookup(info.key);
  if (local) {
    local[kReacquire](fd);
    native.close(fd);
    return local;
  }
  return createKernelBuffer(new KernelFile(fd, info.key, true), info);
}
