/**
 * `Reservation`: what a reservation object offers, whether it lives in this thread
 * ({@link DmaResv}) or is a proxy of one that lives elsewhere (a buffer's reservation object
 * is one object for every importer in every process).
 *
 * Every method may answer synchronously or with a promise: `DmaResv` answers at once, a proxy
 * after a round trip to the object's owner. Code written against `Reservation` awaits every
 * result. Fences cross to a proxy's owner as fence files (`fence.toFd()`), and come back as
 * imported fences.
 *
 * @module
 */
import type { DmaFence } from './fence.js';
import type { DmaResvUsage } from './usage.js';
import type { FenceWaitOptions } from './wait-options.js';

/**
 * A reservation object: the fences that the users of a shared resource must respect.
 *
 * @example
 * ```ts
 * async function readWhenReady(resv: Reservation): Promise<void> {
 *   if (!(await resv.wait('read', { timeout: 1000 }))) throw new Error('the writer is late');
 * }
 * ```
 */
export interface Reservation {
  /**
   * Adds `fence` with `usage`. It replaces an older fence of the same timeline whose usage
   * is respected by no more users, and signalled fences are pruned.
   *
   * @throws {DmaBufError} `EINVAL` when `fence` is not a `DmaFence` or `usage` is unknown.
   */
  add(fence: DmaFence, usage: DmaResvUsage): void | Promise<void>;
  /**
   * Adds the fence of a fence file (`DmaFence.fromFd`); the caller keeps owning `fd`.
   *
   * @returns The fence added.
   * @throws {DmaBufError} as `DmaFence.fromFd`, and `EINVAL` for an unknown usage.
   */
  addFd(fd: number, usage: DmaResvUsage): Promise<DmaFence>;
  /**
   * The unsignalled fences that a user of `usage` must respect (see `usage.ts`), in the order
   * they were added.
   *
   * @throws {DmaBufError} `EINVAL` for an unknown usage.
   */
  fences(usage: DmaResvUsage): DmaFence[] | Promise<DmaFence[]>;
  /**
   * Whether every fence a user of `usage` must respect has signalled.
   *
   * @throws {DmaBufError} `EINVAL` for an unknown usage.
   */
  test(usage: DmaResvUsage): boolean | Promise<boolean>;
  /**
   * Waits until {@link Reservation.test} is true (fences added during the wait count too).
   *
   * @returns `true`, or `false` when `timeout` ran out.
   * @throws {DmaBufError} `EINTR` when `signal` aborts; `EINVAL` for bad arguments.
   */
  wait(usage: DmaResvUsage, options?: FenceWaitOptions): Promise<boolean>;
  /**
   * Optional. Adds `fence` with `usage` after the fences a user of `usage` must respect now,
   * and waits for those (not for fences added later): a dependency and its own fence in one
   * step. A proxy does it in one round trip; without it, callers take `exportFence(usage)`,
   * `add`, then wait for the snapshot.
   *
   * @returns `true`, or `false` when `timeout` ran out (`fence` stays added).
   * @throws {DmaBufError} `EINTR` when `signal` aborts; `EINVAL` for bad arguments.
   */
  addAndWait?(fence: DmaFence, usage: DmaResvUsage, options?: FenceWaitOptions): Promise<boolean>;
  /**
   * One fence for what a user of `usage` must respect now: a snapshot, that fences added
   * later do not join. Signalled already when there is nothing to wait for.
   *
   * @throws {DmaBufError} `EINVAL` for an unknown usage.
   */
  exportFence(usage: DmaResvUsage): DmaFence | Promise<DmaFence>;
  /**
   * A new descriptor, owned by the caller, of a fence for what a user of `usage` must respect
   * now: the fence descriptor of {@link Reservation.exportFence} (a fence file, or a kernel
   * sync_file when the kernel holds the fences), without importing it here.
   *
   * @throws {DmaBufError} `EINVAL` for an unknown usage; `EMFILE` when out of descriptors.
   */
  exportFd(usage: DmaResvUsage): number | Promise<number>;
}

/**
 * Adds `fence` with `usage` to `resv` after the fences a user of `usage` must respect now, and
 * waits for those: `resv.addAndWait` where the object has it (one round trip for a proxy),
 * else `exportFence`, `add`, and a wait for the snapshot.
 *
 * @returns `true`, or `false` when `timeout` ran out (`fence` stays added).
 * @throws {DmaBufError} `EINTR` when `signal` aborts; `EINVAL` for bad arguments; what the
 *   object's methods throw.
 * @example
 * ```ts
 * await addAndWait(buf.resv, reading, 'read');
 * ```
 */
export async function addAndWait(resv: Reservation, fence: DmaFence, usage: DmaResvUsage, options?: FenceWaitOptions): Promise<boolean> {
  if (resv.addAndWait) return resv.addAndWait(fence, usage, options);
  const before = await resv.exportFence(usage);
  await resv.add(fence, usage);
  return before.wait(options);
}
