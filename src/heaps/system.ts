/**
 * The system heap: the first exporter. Each buffer's storage is a memfd, allocated late (at
 * the first map, for the strictest constraints of every attached device), sealed against
 * shrinking and growing, moved to huge-page storage when a device that needs it attaches
 * later (migration), sealed against writes by {@link DmaBuf.seal}, freed at release.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { DmaBuf, O_RDONLY, O_RDWR, type ExportInfo } from '../core/dma-buf.js';
import type { DmaBufAttachment } from '../core/attachment.js';
import { BASE_PAGE_SIZE, HUGE_PAGE_SIZE, collateConstraints, forgetOnLastDetach, planSegments, tableOfMapping, type Device, type DeviceMapping } from '../core/device.js';
import { isWritableDirection, type DmaDirection } from '../core/direction.js';
import { DmaBufError } from '../core/errors.js';
import { Invalidations, type MemoryObject } from '../core/memory.js';
import type { DmaBufOps, OpContext } from '../core/ops.js';
import { SgTable } from '../core/sg-table.js';
import { andThen, type Now } from '../core/now.js';
import { native, own, closeOwned } from '../native/binding.js';

const EXPORTER = 'system';

/**
 * The largest buffer the system heap exports, in bytes: sizes are safe integers, and storage is
 * made of whole pages, 2 MiB ones when a device needs them. Bigger buffers than the address
 * space of a process (about 128 TiB on x86-64) are exported, but cannot be mapped there.
 */
export const SYSTEM_HEAP_MAX_SIZE = Math.floor(Number.MAX_SAFE_INTEGER / HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE;
const MEMFD_NAME_MAX = 249;

let nextStorageId = 1;

/** One piece of backing storage: a sealed memfd. */
class Storage implements MemoryObject {
  readonly id = nextStorageId++;
  readonly fd: number;
  readonly size: number;
  readonly pageSize: number;
  writeSealed = false;
  readonly #invalidations = new Invalidations();

  constructor(fd: number, size: number, pageSize: number) {
    this.fd = fd;
    this.size = size;
    this.pageSize = pageSize;
  }

  onInvalidate(drop: () => void): () => void {
    return this.#invalidations.add(drop);
  }

  /** Makes every device drop its cached mappings of this storage. */
  invalidate(): void {
    this.#invalidations.run();
  }

  /** Invalidates and closes the memfd. */
  free(): void {
    this.invalidate();
    closeOwned(this.fd);
  }
}

/** The system heap's private data of one buffer. */
export interface SystemBufferPriv {
  /** The storage, or null before the first map (late allocation) and after release. */
  storage: Storage | null;
  /** How many times the storage was allocated or moved. */
  generation: number;
  /** The device mappings behind each live table. */
  readonly mappings: Map<SgTable, DeviceMapping>;
  /** Set when release has run. */
  released: boolean;
  /** Initial contents, copied into the storage when it is allocated, then dropped. */
  contents: Uint8Array | null;
}

/** What {@link SystemHeap.storage} tells about a buffer's backing storage. */
export interface StorageInfo {
  /** Whether storage exists (false before the first map and after release). */
  allocated: boolean;
  /** Bytes of storage (the size rounded to the page size), 0 when not allocated. */
  size: number;
  /** 4096, or 2 MiB for hugetlb storage; 0 when not allocated. */
  pageSize: number;
  /** Whether the memfd lives on hugetlbfs (measured with fstatfs). */
  hugetlb: boolean;
  /** The memfd's seals (F_SEAL_* bits), 0 when not allocated. */
  seals: number;
  /** How many times storage was allocated or moved (1 after late allocation, 2 after one migration). */
  generation: number;
  /** The exporter's descriptor of the memfd (-1 when not allocated); do not close it. */
  fd: number;
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

/** Huge pages the kernel can still hand out (HugePages_Free - HugePages_Rsvd), in bytes. */
export function hugePagesAvailable(): number {
  try {
    const info = readFileSync('/proc/meminfo', 'utf8');
    const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(info)?.[1] ?? 0);
    const size = field('Hugepagesize') * 1024;
    if (size !== HUGE_PAGE_SIZE) return 0;
    return Math.max(0, field('HugePages_Free') - field('HugePages_Rsvd')) * size;
  } catch {
    return 0;
  }
}

function memfdName(buf: DmaBuf<SystemBufferPriv>): string {
  let name = `dmabuf:${buf.name || `buffer-${buf.id}`}`;
  // memfd_create limits the name to 249 bytes: cut whole characters until it fits.
  while (Buffer.byteLength(name) > MEMFD_NAME_MAX) name = [...name].slice(0, -1).join('');
  return name;
}

/** Creates storage for `size` bytes with `pageSize` pages. `ENOMEM` when huge pages run out. */
function allocateStorage(name: string, size: number, pageSize: number): Storage {
  const c = native.constants;
  const huge = pageSize > BASE_PAGE_SIZE;
  const bytes = roundUp(size, huge ? HUGE_PAGE_SIZE : BASE_PAGE_SIZE);
  const flags = c.MFD_ALLOW_SEALING | (huge ? c.MFD_HUGETLB | c.MFD_HUGE_2MB : 0);
  const fd = own(native.memfdCreate(name, flags));
  try {
    try {
      native.ftruncate(fd, bytes);
    } catch (err) {
      if (!DmaBufError.is(err, 'EFBIG')) throw err;
      throw new DmaBufError('EFBIG', `map: the buffer's storage of ${bytes} bytes is larger than this process may make a file (RLIMIT_FSIZE, "ulimit -f": ${fileSizeLimit()}); raise the limit or use a smaller buffer`, { op: 'map', syscall: 'ftruncate', errno: err.errno, cause: err });
    }
    if (huge) {
      try {
        native.fallocate(fd, 0, 0, bytes);
      } catch (err) {
        throw new DmaBufError('ENOMEM', `map: cannot allocate ${bytes} bytes of 2 MiB huge pages (${hugePagesAvailable()} bytes available; raise /proc/sys/vm/nr_hugepages)`, { op: 'map', cause: err });
      }
    }
    native.addSeals(fd, c.F_SEAL_SHRINK | c.F_SEAL_GROW);
    return new Storage(fd, bytes, huge ? HUGE_PAGE_SIZE : BASE_PAGE_SIZE);
  } catch (err) {
    closeOwned(fd);
    throw err;
  }
}

/** This process's file size limit (soft RLIMIT_FSIZE) in words. */
function fileSizeLimit(): string {
  try {
    const m = /^Max file size\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m) return m[1] === 'unlimited' ? 'unlimited' : `${m[1]} bytes`;
  } catch {
    // no /proc
  }
  return 'unknown';
}

/** Writes the initial contents of a buffer into new storage (nothing to do without them). */
function fillStorage(storage: Storage, contents: Uint8Array | null): void {
  if (!contents || contents.byteLength === 0) return;
  writeContents(storage.fd, storage.size, contents);
}

/** Writes `contents` at the start of the `size` bytes of `fd` through a temporary shared mapping. */
export function writeContents(fd: number, size: number, contents: Uint8Array): void {
  const c = native.constants;
  const dst = native.mmap(fd, size, 0, c.PROT_READ | c.PROT_WRITE, c.MAP_SHARED);
  try {
    const view = native.mappingView(dst, 0, contents.byteLength);
    new Uint8Array(view).set(contents);
    native.detachView(view);
  } finally {
    native.munmap(dst);
  }
}

/** Copies `bytes` from one storage to another through temporary shared mappings. */
function copyStorage(from: Storage, to: Storage, bytes: number): void {
  const c = native.constants;
  const src = native.mmap(from.fd, from.size, 0, c.PROT_READ, c.MAP_SHARED);
  try {
    const dst = native.mmap(to.fd, to.size, 0, c.PROT_READ | c.PROT_WRITE, c.MAP_SHARED);
    try {
      const a = native.mappingView(src, 0, bytes);
      const b = native.mappingView(dst, 0, bytes);
      new Uint8Array(b).set(new Uint8Array(a));
      native.detachView(a);
      native.detachView(b);
    } finally {
      native.munmap(dst);
    }
  } finally {
    native.munmap(src);
  }
}

function pageSizeNeeded(buf: DmaBuf<SystemBufferPriv>): number {
  return collateConstraints(buf.attachments.map((a) => a.device.constraints)).pageSize;
}

function checkPageSize(op: string, pageSize: number): void {
  if (pageSize !== BASE_PAGE_SIZE && pageSize !== HUGE_PAGE_SIZE) {
    throw new DmaBufError('EBUSY', `${op}: the system heap provides 4 KiB or 2 MiB pages, not ${pageSize}-byte pages`, { op });
  }
}

/** The storage when a map now would neither allocate nor migrate it, else null. */
function readyStorage(buf: DmaBuf<SystemBufferPriv>): Storage | null {
  const storage = buf.priv.storage;
  return storage !== null && storage.pageSize >= pageSizeNeeded(buf) ? storage : null;
}

/** Maps `storage` for the attachment's device: a table over the device's mapping. */
function mapStorage(attachment: DmaBufAttachment<SystemBufferPriv>, direction: DmaDirection, storage: Storage, ctx: OpContext): Now<SgTable> {
  const buf = attachment.dmabuf;
  const constraints = { ...attachment.device.constraints, pageSize: storage.pageSize };
  const plan = planSegments(buf.size, constraints);
  if (!plan) {
    throw new DmaBufError('EINVAL', `map: device "${attachment.device.name}" cannot address the buffer's storage`, { op: 'map' });
  }
  const access = isWritableDirection(direction) && !storage.writeSealed ? 'write' : 'read';
  return andThen(attachment.device.mapMemory({ memory: storage, access, signal: ctx.signal }), (mapping) => tableOfMapping(buf.size, plan, mapping, buf.priv.mappings));
}

/** Gets the storage for the current attachments: allocates it, or moves it after waiting for every map to go. */
async function storageFor(buf: DmaBuf<SystemBufferPriv>, ctx: OpContext): Promise<Storage> {
  const priv = buf.priv;
  let need = pageSizeNeeded(buf);
  if (priv.storage && priv.storage.pageSize < need) {
    // Migration: no map may see the old storage while its contents move.
    await buf.waitForNoMaps(ctx);
    need = pageSizeNeeded(buf);
  }
  const old = priv.storage;
  if (old && old.pageSize >= need) return old;
  checkPageSize('map', need);
  const storage = allocateStorage(memfdName(buf), buf.size, need);
  if (!old) {
    try {
      fillStorage(storage, priv.contents);
      priv.contents = null;
      if ((buf.flags & 3) === O_RDONLY) sealWrites(storage);
    } catch (err) {
      storage.free();
      throw err;
    }
  }
  if (old) {
    try {
      copyStorage(old, storage, buf.size);
      if (old.writeSealed) sealWrites(storage);
    } catch (err) {
      storage.free();
      throw err;
    }
    old.free();
  }
  priv.storage = storage;
  priv.generation += 1;
  return storage;
}

function sealWrites(storage: Storage): void {
  storage.invalidate();
  native.addSeals(storage.fd, native.constants.F_SEAL_WRITE);
  storage.writeSealed = true;
}

/** The system heap's ops table. */
const systemOps: DmaBufOps<SystemBufferPriv> = {
  attach(buf: DmaBuf<SystemBufferPriv>, device: Device): void {
    const op = 'attach';
    const c = device.constraints;
    checkPageSize(op, c.pageSize);
    // Storage will have the largest page size any attached device needs: every device,
    // the new one and those already attached, must be able to address it with those pages.
    const pageSize = Math.max(pageSizeNeeded(buf), c.pageSize, buf.priv.storage?.pageSize ?? 0);
    for (const d of [device, ...buf.attachments.map((a) => a.device)]) {
      const dc = d.constraints;
      if (!planSegments(buf.size, { ...dc, pageSize })) {
        throw new DmaBufError('EINVAL', `${op}: device "${d.name}" cannot address ${buf.size} bytes with ${pageSize}-byte pages in at most ${dc.maxSegments} segments of at most ${dc.maxSegmentSize} bytes aligned to ${Math.max(dc.segmentAlignment, pageSize)}`, { op });
      }
    }
    if (c.pageSize > BASE_PAGE_SIZE) {
      const storage = buf.priv.storage;
      if (storage && storage.pageSize >= c.pageSize) return;
      const bytes = roundUp(buf.size, HUGE_PAGE_SIZE);
      const available = hugePagesAvailable();
      if (available < bytes) {
        throw new DmaBufError('EBUSY', `${op}: device "${device.name}" needs 2 MiB pages and the system has ${available} of the ${bytes} bytes needed ${storage ? 'to move the storage' : 'to allocate it'} (raise /proc/sys/vm/nr_hugepages)`, { op });
      }
    }
  },

  storageReady(buf: DmaBuf<SystemBufferPriv>): boolean {
    return readyStorage(buf) !== null;
  },

  mapDmaBuf(attachment: DmaBufAttachment<SystemBufferPriv>, direction: DmaDirection, ctx: OpContext): Now<SgTable> {
    // Storage that needs neither allocating nor moving is mapped in this call (when the
    // device maps synchronously, as a CPU does).
    const ready = readyStorage(attachment.dmabuf);
    if (ready) return mapStorage(attachment, direction, ready, ctx);
    return storageFor(attachment.dmabuf, ctx).then((storage) => mapStorage(attachment, direction, storage, ctx));
  },

  unmapDmaBuf(attachment: DmaBufAttachment<SystemBufferPriv>, sgt: SgTable): void {
    const mappings = attachment.dmabuf.priv.mappings;
    mappings.get(sgt)?.release();
    mappings.delete(sgt);
  },

  detach(buf: DmaBuf<SystemBufferPriv>, attachment: DmaBufAttachment<SystemBufferPriv>): void {
    forgetOnLastDetach(buf.attachments, attachment, buf.priv.storage);
  },

  async seal(buf: DmaBuf<SystemBufferPriv>, ctx: OpContext): Promise<void> {
    const storage = await storageFor(buf, ctx);
    sealWrites(storage);
  },

  release(buf: DmaBuf<SystemBufferPriv>): void {
    const priv = buf.priv;
    priv.released = true;
    priv.storage?.free();
    priv.storage = null;
  },
};

/** Options of {@link SystemHeap.allocate}. */
export interface AllocateOptions {
  /** Names the buffer and its memfd (`/proc/PID/fd` shows `/memfd:dmabuf:NAME`). */
  name?: string;
  /**
   * `O_RDWR` (default) or `O_RDONLY`. An `O_RDONLY` buffer's storage is sealed against writes
   * as soon as it is allocated: give its contents with {@link AllocateOptions.contents}.
   */
  flags?: number;
  /**
   * Initial contents (at most `size` bytes), copied once into the storage when it is allocated
   * (at the first map or seal). The rest of the buffer is zero.
   */
  contents?: Uint8Array;
}

/** A heap: an exporter that allocates buffers (the heaps' small registration table). */
export interface Heap {
  /** The exporter name buffers of this heap carry. */
  readonly name: string;
  /** Allocates a buffer of `size` bytes. */
  allocate(size: number, options?: AllocateOptions): DmaBuf;
}

/** The system heap (memfd storage). */
export class SystemHeap implements Heap {
  /** `'system'`. */
  readonly name = EXPORTER;

  /**
   * Exports a new buffer of `size` bytes. No memory is allocated until the first map.
   *
   * @throws {DmaBufError} `EINVAL` for a bad size or name, or a size above
   *   {@link SYSTEM_HEAP_MAX_SIZE}; `ENODEV` without platform support.
   * @example
   * ```ts
   * using buf = systemHeap.allocate(1 << 20, { name: 'frame-0' });
   * ```
   */
  allocate(size: number, options: AllocateOptions = {}): DmaBuf<SystemBufferPriv> {
    if (Number.isSafeInteger(size) && size > SYSTEM_HEAP_MAX_SIZE) {
      throw new DmaBufError('EINVAL', `allocate: ${size} bytes is more than the system heap can back: at most ${SYSTEM_HEAP_MAX_SIZE} bytes (its storage is whole 2 MiB pages, and the rounded size must stay a safe integer); a buffer larger than a process's address space (about 128 TiB on x86-64) cannot be mapped anyway`, { op: 'allocate' });
    }
    const contents = options?.contents;
    if (contents !== undefined && !(contents instanceof Uint8Array && contents.byteLength <= size)) {
      throw new DmaBufError('EINVAL', `allocate: contents must be a Uint8Array of at most ${size} bytes`, { op: 'allocate' });
    }
    const priv: SystemBufferPriv = {
      storage: null, generation: 0, mappings: new Map(), released: false,
      contents: contents ? Uint8Array.prototype.slice.call(contents) : null,
    };
    const info: ExportInfo<SystemBufferPriv> = {
      ops: systemOps, size, priv, exporter: EXPORTER, flags: options?.flags ?? O_RDWR,
    };
    if (options?.name !== undefined) info.name = options.name;
    return DmaBuf.export(info);
  }

  /**
   * What backs a buffer of this heap now.
   *
   * @throws {DmaBufError} `EINVAL` for a buffer of another exporter.
   */
  storage(buf: DmaBuf): StorageInfo {
    if (!(buf instanceof DmaBuf) || buf.ops !== (systemOps as DmaBufOps<unknown>)) {
      throw new DmaBufError('EINVAL', 'storage: not a buffer of the system heap', { op: 'storage' });
    }
    const priv = buf.priv as SystemBufferPriv;
    const s = priv.storage;
    if (!s) return { allocated: false, size: 0, pageSize: 0, hugetlb: false, seals: 0, generation: priv.generation, fd: -1 };
    return {
      allocated: true,
      size: s.size,
      pageSize: s.pageSize,
      hugetlb: native.fstatfsType(s.fd) === native.constants.HUGETLBFS_MAGIC,
      seals: native.getSeals(s.fd),
      generation: priv.generation,
      fd: s.fd,
    };
  }
}

/** The system heap. */
export const systemHeap: SystemHeap = new SystemHeap();
