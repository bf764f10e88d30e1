/**
 * Scatter-gather tables, as `struct sg_table`: the buffer as a device sees it after a map.
 *
 * @module
 */
import { DmaBufError } from './errors.js';

/** One contiguous piece of the buffer in a device's address space. */
export interface SgSegment {
  /** Offset of the segment in the buffer, in bytes. */
  readonly offset: number;
  /** Length of the segment, in bytes (> 0). */
  readonly length: number;
  /** Address of the segment in the device's address space (CPU: a virtual address). */
  readonly address?: bigint;
  /** For CPU devices: a view of the segment's memory (zero-copy). */
  readonly view?: Uint8Array;
}

function checkSegment(s: unknown, i: number, prevEnd: number): SgSegment {
  const op = 'new SgTable';
  if (typeof s !== 'object' || s === null) {
    throw new DmaBufError('EINVAL', `${op}: segment ${i} is not an object`, { op });
  }
  const seg = s as Record<string, unknown>;
  const { offset, length, address, view } = seg;
  if (!Number.isSafeInteger(offset) || (offset as number) < 0) {
    throw new DmaBufError('EINVAL', `${op}: segment ${i} has offset ${String(offset)}; expected a non-negative safe integer`, { op });
  }
  if (!Number.isSafeInteger(length) || (length as number) <= 0) {
    throw new DmaBufError('EINVAL', `${op}: segment ${i} has length ${String(length)}; expected a positive safe integer`, { op });
  }
  if ((offset as number) < prevEnd) {
    throw new DmaBufError('EINVAL', `${op}: segment ${i} at offset ${String(offset)} overlaps or precedes the previous segment (ends at ${prevEnd})`, { op });
  }
  if (address !== undefined && (typeof address !== 'bigint' || address < 0n)) {
    throw new DmaBufError('EINVAL', `${op}: segment ${i} has an address that is not a non-negative bigint`, { op });
  }
  if (view !== undefined && !(view instanceof Uint8Array && view.byteLength === length)) {
    throw new DmaBufError('EINVAL', `${op}: segment ${i} has a view that is not a Uint8Array of its length`, { op });
  }
  const out: { offset: number; length: number; address?: bigint; view?: Uint8Array } = {
    offset: offset as number,
    length: length as number,
  };
  if (address !== undefined) out.address = address as bigint;
  if (view !== undefined) out.view = view as Uint8Array;
  return Object.freeze(out);
}

/**
 * A scatter-gather table: the segments of one map, in ascending offset order, not
 * overlapping. Exporters build it in `mapDmaBuf`; importers read it; `unmap` takes it back.
 *
 * @example
 * ```ts
 * const sgt = await attachment.map('bidirectional');
 * for (const { offset, length, view } of sgt.segments) view?.fill(0);
 * await attachment.unmap(sgt);
 * ```
 */
export class SgTable {
  /** The segments, frozen. */
  readonly segments: readonly SgSegment[];

  /**
   * @param segments the segments, in ascending offset order, not overlapping.
   * @throws {DmaBufError} `EINVAL` for an empty list or a malformed segment.
   */
  constructor(segments: Iterable<SgSegment>) {
    const list: SgSegment[] = [];
    let end = 0;
    let i = 0;
    for (const s of segments) {
      const seg = checkSegment(s, i++, end);
      end = seg.offset + seg.length;
      list.push(seg);
    }
    if (list.length === 0) {
      throw new DmaBufError('EINVAL', 'new SgTable: a table needs at least one segment', { op: 'new SgTable' });
    }
    this.segments = Object.freeze(list);
  }

  /** Number of segments (`nents`). */
  get nents(): number {
    return this.segments.length;
  }

  /** Total bytes covered by the segments. */
  get length(): number {
    let n = 0;
    for (const s of this.segments) n += s.length;
    return n;
  }

  /**
   * The CPU views of the segments, in order: `views()[i]` is `segments[i].view`. For tables
   * of a CPU device (`CpuDevice`), where every segment has a view; typed without the
   * `undefined` that `segments[i].view` allows. After `unmap` the views are detached
   * (`byteLength` 0).
   *
   * @throws {DmaBufError} `EINVAL` when a segment has no view (a table mapped for a device
   *   that is not the CPU).
   * @example
   * ```ts
   * const sgt = await attachment.map('bidirectional');
   * for (const view of sgt.views()) view.fill(0x2a);
   * ```
   */
  views(): Uint8Array[] {
    return this.segments.map((s, i) => {
      if (s.view === undefined) {
        throw new DmaBufError('EINVAL', `SgTable.views: segment ${i} has no CPU view; only a map by a CPU device (CpuDevice) has views`, { op: 'SgTable.views' });
      }
      return s.view;
    });
  }
}
