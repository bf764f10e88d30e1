/**
 * Devices: whoever accesses a buffer's memory (the CPU of a process, a GPU, a driver), with
 * the DMA constraints an exporter must meet, as `struct device` and its DMA parameters.
 *
 * @module
 */
import { DmaBufError } from './errors.js';
import type { MemoryObject } from './memory.js';
import { SgTable } from './sg-table.js';

/** What a device requires of the memory it maps. */
export interface DeviceConstraints {
  /** Largest segment the device can address in one piece, in bytes. */
  readonly maxSegmentSize: number;
  /** Most segments one map may have. */
  readonly maxSegments: number;
  /** Every segment must start at a multiple of this (a power of two), in bytes. */
  readonly segmentAlignment: number;
  /** Page size the device needs its memory backed by: 4096, or 2 MiB for huge pages. */
  readonly pageSize: number;
}

/** Options of a device: a name and any constraints (the rest take the defaults). */
export interface DeviceOptions extends Partial<DeviceConstraints> {
  /** Shown in introspection. */
  name?: string;
}

/** The default page size (the system's base page). */
export const BASE_PAGE_SIZE = 4096;
/** The huge page size the system heap can provide. */
export const HUGE_PAGE_SIZE = 2 * 1024 * 1024;

/** No constraint at all, except base pages. */
export const DEFAULT_CONSTRAINTS: DeviceConstraints = Object.freeze({
  maxSegmentSize: Number.MAX_SAFE_INTEGER,
  maxSegments: Number.MAX_SAFE_INTEGER,
  segmentAlignment: 1,
  pageSize: BASE_PAGE_SIZE,
});

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && Number.isInteger(Math.log2(n));
}

/** Validates device options into constraints; `EINVAL` for a bad value. */
export function checkConstraints(op: string, options: DeviceOptions): DeviceConstraints {
  const out = { ...DEFAULT_CONSTRAINTS };
  const positive = (key: 'maxSegmentSize' | 'maxSegments'): void => {
    const v = options[key];
    if (v === undefined) return;
    if (!Number.isSafeInteger(v) || v <= 0) {
      throw new DmaBufError('EINVAL', `${op}: ${key} must be a positive safe integer, got ${String(v)}`, { op });
    }
    out[key] = v;
  };
  positive('maxSegmentSize');
  positive('maxSegments');
  for (const key of ['segmentAlignment', 'pageSize'] as const) {
    const v = options[key];
    if (v === undefined) continue;
    if (!isPowerOfTwo(v)) {
      throw new DmaBufError('EINVAL', `${op}: ${key} must be a power of two, got ${String(v)}`, { op });
    }
    out[key] = v;
  }
  if (out.pageSize < BASE_PAGE_SIZE) {
    throw new DmaBufError('EINVAL', `${op}: pageSize must be at least ${BASE_PAGE_SIZE}, got ${out.pageSize}`, { op });
  }
  return Object.freeze(out);
}

/** The strictest constraints that satisfy every device of the list (`collate`). */
export function collateConstraints(list: Iterable<DeviceConstraints>): DeviceConstraints {
  const out = { ...DEFAULT_CONSTRAINTS };
  for (const c of list) {
    out.maxSegmentSize = Math.min(out.maxSegmentSize, c.maxSegmentSize);
    out.maxSegments = Math.min(out.maxSegments, c.maxSegments);
    out.segmentAlignment = Math.max(out.segmentAlignment, c.segmentAlignment);
    out.pageSize = Math.max(out.pageSize, c.pageSize);
  }
  return Object.freeze(out);
}

/** How a buffer of a size is cut into segments for some constraints. */
export interface SegmentPlan {
  /** Length of every segment but the last. */
  readonly chunk: number;
  /** Number of segments. */
  readonly count: number;
}

/**
 * Cuts `size` bytes into the fewest segments the constraints allow: each starts at a multiple
 * of the segment alignment and of the page size and is at most `maxSegmentSize` long.
 * Returns `null` when the constraints cannot be met (too many segments, or a maximum segment
 * smaller than the alignment).
 */
export function planSegments(size: number, c: DeviceConstraints): SegmentPlan | null {
  const align = Math.max(c.segmentAlignment, c.pageSize);
  let chunk: number;
  if (c.maxSegmentSize >= size) {
    chunk = size;
  } else {
    chunk = Math.floor(c.maxSegmentSize / align) * align;
    if (chunk === 0) return null;
  }
  const count = Math.ceil(size / chunk);
  if (count > c.maxSegments) return null;
  return { chunk, count };
}

/**
 * The table of a map, for exporters' `mapDmaBuf`: `size` bytes cut as `plan` says, each
 * segment with its address and view in `mapping` when the device gives them. Records the
 * mapping behind the table in `mappings` (for `unmapDmaBuf`); releases it if this fails.
 */
export function tableOfMapping(size: number, plan: SegmentPlan, mapping: DeviceMapping, mappings: Map<SgTable, DeviceMapping>): SgTable {
  try {
    const segments = [];
    for (let i = 0; i < plan.count; i++) {
      const offset = i * plan.chunk;
      const length = Math.min(plan.chunk, size - offset);
      segments.push({
        offset,
        length,
        ...(mapping.address !== undefined ? { address: mapping.address + BigInt(offset) } : {}),
        ...(mapping.view ? { view: mapping.view(offset, length) } : {}),
      });
    }
    const sgt = new SgTable(segments);
    mappings.set(sgt, mapping);
    return sgt;
  } catch (err) {
    mapping.release();
    throw err;
  }
}

/** How a device will access mapped memory. */
export type DeviceAccess = 'read' | 'write';

/** What an exporter asks of a device: map this memory for this access. */
export interface MapMemoryRequest {
  /** The backing memory. */
  readonly memory: MemoryObject;
  /** `'write'`: changes reach the buffer; `'read'`: they never do. */
  readonly access: DeviceAccess;
  /** Aborts a map that waits. */
  readonly signal?: AbortSignal | undefined;
}

/** A device's mapping of a memory object; `release` gives it back (views detached first). */
export interface DeviceMapping {
  /**
   * Start of the memory in the device's address space; undefined when the exporter cannot
   * know it (a device in another process: the importer's table carries the addresses).
   */
  readonly address?: bigint | undefined;
  /**
   * For CPU devices: a view of `length` bytes of the memory at `offset` (zero-copy). A view is
   * at most 4 GiB (V8's limit); the device's `maxSegmentSize` keeps segments within it.
   */
  view?(offset: number, length: number): Uint8Array;
  /** Unmaps: detaches the view, then lets the memory go (or caches it). Idempotent. */
  release(): void;
}

/**
 * A device that buffers are attached to. Importers create devices; exporters map memory
 * into them. Subclasses implement {@link Device.mapMemory}.
 */
export abstract class Device {
  /** Shown in introspection. */
  readonly name: string;
  /** What the device requires of mapped memory. */
  readonly constraints: DeviceConstraints;
  /** A short word for the kind of device (`'cpu'`, ...). */
  abstract readonly kind: string;
  /** Present only on objects this constructor built (not on `Object.create(CpuDevice.prototype)`). */
  #constructed = true;

  /**
   * Whether `value` is a device built by a constructor of this class (a subclass's included).
   * An object that merely inherits from a device class's prototype is not: it has no checked
   * constraints.
   */
  static isDevice(value: unknown): value is Device {
    return typeof value === 'object' && value !== null && #constructed in value;
  }

  /** @throws {DmaBufError} `EINVAL` for a bad constraint. */
  constructor(options: DeviceOptions = {}) {
    if (typeof options !== 'object' || options === null) {
      throw new DmaBufError('EINVAL', 'new Device: options must be an object', { op: 'new Device' });
    }
    if (options.name !== undefined && typeof options.name !== 'string') {
      throw new DmaBufError('EINVAL', 'new Device: name must be a string', { op: 'new Device' });
    }
    this.constraints = checkConstraints('new Device', options);
    this.name = options.name ?? 'device';
  }

  /**
   * Maps backing memory into this device's address space. Called by exporters from their
   * `mapDmaBuf`, with the buffer's lock held.
   *
   * @throws {DmaBufError} `EACCES` for a write access to memory that cannot be written,
   *   `ENOMEM` when the address space is exhausted, `EINTR` when the signal aborts.
   */
  abstract mapMemory(request: MapMemoryRequest): Promise<DeviceMapping> | DeviceMapping;

  /**
   * Called by exporters when this device's last attachment to the buffer backed by `memory`
   * detached: no map of `memory` for this device comes again unless it attaches again, so a
   * mapping kept for reuse can go now rather than at the buffer's release. Must not throw.
   * Default: nothing.
   */
  forgetMemory(memory: MemoryObject): void {
    void memory;
  }
}

/**
 * For an exporter's `detach`: tells `attachment`'s device to forget `memory` when the device
 * has no other attachment to the buffer. A device that throws is ignored (detach must not fail).
 */
export function forgetOnLastDetach(attachments: readonly { readonly device: Device }[], attachment: { readonly device: Device }, memory: MemoryObject | null): void {
  if (!memory) return;
  const device = attachment.device;
  for (const a of attachments) if (a !== attachment && a.device === device) return;
  try {
    device.forgetMemory(memory);
  } catch {
    // A device's own failure to let go must not fail the detach.
  }
}
