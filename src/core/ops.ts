/**
 * The exporter's operations, as `struct dma_buf_ops`.
 *
 * @module
 */
import type { DmaBuf } from './dma-buf.js';
import type { DmaBufAttachment } from './attachment.js';
import type { Device } from './device.js';
import type { DmaDirection } from './direction.js';
import type { SgTable } from './sg-table.js';

/** What the CPU is about to do with a buffer's memory (`DMA_BUF_SYNC_READ`, `_WRITE`, `_RW`). */
export type CpuAccess = 'read' | 'write' | 'read-write';

/** Context of an op call. */
export interface OpContext {
  /** Aborted when the caller gives up (map's `signal`); ops that wait should honour it. */
  readonly signal?: AbortSignal | undefined;
}

/** Context of a CPU-access op: the range the CPU touches, and the caller's signal. */
export interface CpuAccessContext extends OpContext {
  /** First byte (0 when the caller gave no range). */
  readonly offset: number;
  /** Bytes from `offset` (the buffer's size when the caller gave no range). */
  readonly length: number;
}

/**
 * The callbacks an exporter gives to {@link DmaBuf.export}. The core calls them and never
 * knows which exporter it holds. Every call of one buffer's ops is made with the buffer's
 * lock held (no two run interleaved, even when they await), but `release`, `beginCpuAccess`,
 * `endCpuAccess` and `setName`: those touch no attachment, and a wait for fences must not
 * hold up maps.
 */
export interface DmaBufOps<Priv = unknown> {
  /**
   * Optional. Called by `attach` before the attachment is added. Checks that the exporter can
   * share the buffer's storage with `device` and records what it needs.
   *
   * Returns: nothing. Throws: a {@link DmaBufError} `EBUSY` when the storage already exists
   * and cannot be shared with (or moved for) the device; `EINVAL` when the device can never
   * address the buffer. Any throw fails the attach and adds nothing.
   */
  attach?(buf: DmaBuf<Priv>, device: Device, attachment: DmaBufAttachment<Priv>): Promise<void> | void;

  /** Optional. Called by `detach` after the last map of the attachment is gone. Must not fail. */
  detach?(buf: DmaBuf<Priv>, attachment: DmaBufAttachment<Priv>): Promise<void> | void;

  /**
   * Mandatory. Maps the buffer for the attachment's device; allocates the backing storage if
   * it does not exist yet (late allocation) after collating the constraints of every
   * attachment, and may move it (migration) after waiting, with
   * {@link DmaBuf.waitForNoMaps}, until every outstanding map is gone.
   *
   * Returns: the table, in the device's address space. Throws: `EACCES` for a writable
   * direction on read-only storage; `ENOMEM` when storage cannot be allocated; `EINTR` when
   * `ctx.signal` aborts.
   */
  mapDmaBuf(attachment: DmaBufAttachment<Priv>, direction: DmaDirection, ctx: OpContext): Promise<SgTable> | SgTable;

  /** Mandatory. Takes back a table `mapDmaBuf` returned. Must not fail. */
  unmapDmaBuf(attachment: DmaBufAttachment<Priv>, sgt: SgTable, direction: DmaDirection): Promise<void> | void;

  /**
   * Mandatory. Called exactly once, when every JavaScript reference has been put, every
   * descriptor of the buffer's file (in every process) is closed and no attachment remains.
   * Frees the storage. Called without the lock (nobody can reach the buffer any more).
   */
  release(buf: DmaBuf<Priv>): Promise<void> | void;

  /**
   * Optional. Whether a map made now would use storage that already exists (no allocation),
   * so that it can be made ahead, before the importer says which device it has: a hand-off
   * to another thread or process then carries the map in the same message. Called without
   * the lock; must be cheap and must not fail. When absent, hand-offs never map ahead (late
   * allocation then still sees every device that attaches).
   */
  storageReady?(buf: DmaBuf<Priv>): boolean;

  /**
   * Optional. Called by {@link DmaBuf.seal}: makes the contents immutable for everyone.
   * Throws: `EINTR` when `ctx.signal` aborts while waiting for writable maps to go.
   */
  seal?(buf: DmaBuf<Priv>, ctx: OpContext): Promise<void> | void;

  /**
   * Optional. Called by {@link DmaBuf.beginCpuAccess} (`begin_cpu_access`), without the lock
   * (it may wait for long), before the core waits for the fences of the buffer's reservation
   * object that this access must respect (as `dma_buf_begin_cpu_access` does: the exporter
   * may wait for them its own, cheaper way first; the core's wait then finds them signalled).
   * Makes the memory coherent for the CPU over `ctx.offset` and `ctx.length` (an exporter may
   * treat the whole buffer).
   * Throws: `EINTR` when `ctx.signal` aborts (also on the caller's timeout, which the core
   * reports as `ETIMEDOUT`).
   */
  beginCpuAccess?(buf: DmaBuf<Priv>, access: CpuAccess, ctx: CpuAccessContext): Promise<void> | void;

  /**
   * Optional. Called by {@link DmaBuf.endCpuAccess} (`end_cpu_access`), without the lock:
   * makes the CPU's writes over `ctx.offset` and `ctx.length` visible to devices.
   */
  endCpuAccess?(buf: DmaBuf<Priv>, access: CpuAccess, ctx: CpuAccessContext): Promise<void> | void;

  /**
   * Optional. Called by {@link DmaBuf.setName}, without the lock, before the buffer's `name`
   * changes. Throws: `EINVAL` for a name the exporter refuses.
   */
  setName?(buf: DmaBuf<Priv>, name: string): void;
}
