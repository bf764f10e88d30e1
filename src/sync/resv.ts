/**
 * `DmaResv`: a reservation object in this thread, the user-space `struct dma_resv`. It knows
 * nothing of buffers: it holds fences with a usage each, and answers who must wait for what.
 *
 * Rules, as the kernel's:
 * - `add(fence, usage)` replaces an entry of the same context (an older or the same fence of
 *   one timeline, or the same fence) when the new usage is respected by at least as many
 *   users as the old one (`old usage >= new usage`); otherwise it appends. Adding a fence
 *   with a weaker usage than it already has therefore adds a second entry, and the fence
 *   keeps its strongest usage.
 * - Signalled fences are pruned (on every call); queries return unsignalled fences only.
 * - `fences(usage)` follows `usage.ts`; each fence appears once, in the order of its first
 *   entry.
 * - `wait(usage)` waits until `test(usage)` is true, including fences added while it waits
 *   (as `dma_resv_wait_timeout`); `exportFence(usage)` is a snapshot.
 *
 * @module
 */
import { DmaBufError } from '../core/errors.js';
import { DmaFence, fenceInternals } from './fence.js';
import type { Reservation } from './reservation.js';
import { respectedLevel, usageLevel, type DmaResvUsage } from './usage.js';
import { parseWaitOptions, type FenceWaitOptions } from './wait-options.js';

interface Entry {
  fence: DmaFence;
  level: number;
}

/**
 * Waits for every fence of `fences`: one at a time, each wait cleaning up after itself (a
 * merged fence would leave its callbacks on the fences after a timeout).
 *
 * @returns `false` when `timeout` ran out first.
 * @throws {DmaBufError} `EINTR` when `signal` aborts.
 */
async function waitAll(fences: readonly DmaFence[], timeout: number, signal: AbortSignal | undefined): Promise<boolean> {
  const deadline = performance.now() + timeout;
  for (const fence of fences) {
    if (!(await fence.wait({ timeout: Math.max(0, deadline - performance.now()), signal }))) return false;
  }
  return true;
}

/**
 * A reservation object held by this thread.
 *
 * @example
 * ```ts
 * const resv = new DmaResv();
 * const painted = new DmaFence({ name: 'painted' });
 * resv.add(painted, 'write');
 * resv.test('read');                       // false: readers wait for the writer
 * painted.signal();
 * await resv.wait('read');                 // true
 * ```
 */
export class DmaResv implements Reservation {
  #entries: Entry[] = [];

  /**
   * Adds `fence` with `usage` (see the module's rules).
   *
   * @throws {DmaBufError} `EINVAL` when `fence` is not a `DmaFence` or `usage` is unknown.
   * @example
   * ```ts
   * resv.add(readDone, 'read');
   * ```
   */
  add(fence: DmaFence, usage: DmaResvUsage): void {
    const level = usageLevel(usage, 'add');
    if (!(fence instanceof DmaFence)) throw new DmaBufError('EINVAL', 'add: fence must be a DmaFence', { op: 'add' });
    this.#prune();
    if (fence.signaled) return;
    const { context, seqno } = fenceInternals.order(fence);
    const i = this.#entries.findIndex((e) => {
      const old = fenceInternals.order(e.fence);
      return old.context === context && old.seqno <= seqno && e.level >= level;
    });
    if (i >= 0) {
      this.#entries[i] = { fence, level };
    } else {
      this.#entries.push({ fence, level });
    }
  }

  /**
   * Imports the fence of a fence file and adds it with `usage`; the caller keeps owning `fd`.
   *
   * @returns The fence added.
   * @throws {DmaBufError} as {@link DmaFence.fromFd} (`EBADF`, `EINVAL`, `EMFILE`), and
   *   `EINVAL` for an unknown usage (checked first: nothing is imported then).
   * @example
   * ```ts
   * await resv.addFd(fenceFd, 'write');
   * ```
   */
  async addFd(fd: number, usage: DmaResvUsage): Promise<DmaFence> {
    usageLevel(usage, 'addFd');
    const fence = await DmaFence.fromFd(fd);
    this.add(fence, usage);
    return fence;
  }

  /**
   * The unsignalled fences a user of `usage` must respect, each once, in the order added.
   *
   * @throws {DmaBufError} `EINVAL` for an unknown usage.
   * @example
   * ```ts
   * for (const f of resv.fences('write')) console.log(f.name);
   * ```
   */
  fences(usage: DmaResvUsage): DmaFence[] {
    const max = respectedLevel(usage, 'fences');
    this.#prune();
    const out = new Set<DmaFence>();
    for (const e of this.#entries) if (e.level <= max) out.add(e.fence);
    return [...out];
  }

  /**
   * Whether every fence a user of `usage` must respect has signalled.
   *
   * @throws {DmaBufError} `EINVAL` for an unknown usage.
   * @example
   * ```ts
   * if (resv.test('write')) repaint();
   * ```
   */
  test(usage: DmaResvUsage): boolean {
    const max = respectedLevel(usage, 'test');
    this.#prune();
    return !this.#entries.some((e) => e.level <= max);
  }

  /**
   * Waits until {@link DmaResv.test} is true for `usage`, without blocking the event loop.
   * Fences added while it waits are waited for too.
   *
   * @returns `true`, or `false` when `timeout` ran out (`timeout: 0` only tests).
   * @throws {DmaBufError} `EINTR` (a rejection) when `signal` aborts; `EINVAL` for an unknown
   *   usage or bad options.
   * @example
   * ```ts
   * if (await resv.wait('write', { timeout: 100 })) repaint();
   * ```
   */
  async wait(usage: DmaResvUsage, options?: FenceWaitOptions): Promise<boolean> {
    respectedLevel(usage, 'wait');
    const { timeout, signal } = parseWaitOptions(options, 'wait');
    if (timeout === 0) return this.test(usage);
    const deadline = performance.now() + timeout;
    // Until nothing is left to respect (fences added meanwhile too).
    for (let pending = this.fences(usage); pending.length > 0; pending = this.fences(usage)) {
      if (!(await waitAll(pending, Math.max(0, deadline - performance.now()), signal))) return false;
    }
    return true;
  }

  /**
   * Adds `fence` with `usage` after the fences a user of `usage` must respect, and waits for
   * those (the ones present when it was added; later ones are ordered after it): what a job
   * does with implicit fences, collecting its dependencies and publishing its own fence, in
   * one step (`buf.beginCpuAccess(access, { fence })`).
   *
   * @returns `true` once they have signalled, or `false` when `timeout` ran out; `fence` stays
   *   added either way (signal it when the work it stands for ends or is given up).
   * @throws {DmaBufError} `EINTR` (a rejection) when `signal` aborts (after the add);
   *   `EINVAL` for a bad fence, usage or options (before it).
   * @example
   * ```ts
   * const reading = new DmaFence({ name: 'reading' });
   * await resv.addAndWait(reading, 'read');   // writers now wait for us; the writer is done
   * ```
   */
  async addAndWait(fence: DmaFence, usage: DmaResvUsage, options?: FenceWaitOptions): Promise<boolean> {
    respectedLevel(usage, 'addAndWait');
    const { timeout, signal } = parseWaitOptions(options, 'addAndWait');
    const before = this.fences(usage).filter((f) => f !== fence);
    this.add(fence, usage);
    return waitAll(before, timeout, signal);
  }

  /**
   * A fence for what a user of `usage` must respect now: the one fence when there is one, a
   * merged fence of them when there are several, a signalled fence when there is none.
   * Fences added later do not join it. Its fence file (`toFd()`) is the buffer layer's
   * exported sync file.
   *
   * @throws {DmaBufError} `EINVAL` for an unknown usage.
   * @example
   * ```ts
   * const fd = resv.exportFence('read').toFd();   // what a reader must wait for now
   * ```
   */
  exportFence(usage: DmaResvUsage): DmaFence {
    const pending = this.fences(usage);
    if (pending.length === 1) return pending[0]!;
    return DmaFence.merge(pending, { name: `reservation snapshot (${usage})` });
  }

  /**
   * A new descriptor of the fence file of {@link DmaResv.exportFence}, owned by the caller:
   * the exported sync file of a buffer of this thread.
   *
   * @throws {DmaBufError} `EINVAL` for an unknown usage; `EMFILE` when out of descriptors.
   * @example
   * ```ts
   * const fd = resv.exportFd('write');   // what a writer must wait for now, for another process
   * ```
   */
  exportFd(usage: DmaResvUsage): number {
    return this.exportFence(usage).toFd();
  }

  #prune(): void {
    // First ask every fence (an imported one checks its fence file, and may run callbacks
    // that use this object), then drop the signalled ones without running anything.
    for (const e of [...this.#entries]) void e.fence.signaled;
    this.#entries = this.#entries.filter((e) => !fenceInternals.isSignaled(e.fence));
  }
}
