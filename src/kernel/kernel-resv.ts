/**
 * The reservation object of a kernel dma-buf (`buf.resv`): the kernel's own implicit fences,
 * which drivers add and wait for, together with the fences the kernel cannot hold.
 *
 * - **The kernel's fences** are reached through the dma-buf's descriptor: it polls readable
 *   once its write (and kernel) fences have signalled, writable once all have;
 *   `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` snapshots them as a sync_file, which `DmaFence.fromFd`
 *   imports; `DMA_BUF_IOCTL_IMPORT_SYNC_FILE` adds a sync_file's fence as a read or write
 *   fence, which drivers then respect too.
 * - **Other fences**: a fence of this package (a fence file), or a fence added with a usage
 *   the import ioctl has no flag for (`'kernel'`, `'bookkeep'`), is kept in a `DmaResv` of
 *   this thread. This buffer object's users in this thread respect it (`beginCpuAccess`,
 *   `exportSyncFile`, `wait`); drivers and other processes' buffer objects do not.
 *
 * The kernel exports fences per side only: `'read'` queries its write and kernel fences
 * (`DMA_BUF_SYNC_READ`), `'write'` and `'bookkeep'` every fence but bookkeeping ones
 * (`DMA_BUF_SYNC_WRITE`), and `'kernel'` its write fences too (it exports no kernel-only set):
 * a query may thus include more kernel fences than the usage strictly needs, never fewer.
 *
 * @module
 */
import { DmaBufError } from '../core/errors.js';
import { native } from '../native/binding.js';
import { DmaFence, fenceInternals } from '../sync/fence.js';
import { DmaResv } from '../sync/resv.js';
import { isKernelSyncFile } from '../sync/kernel-sync-file.js';
import type { Reservation } from '../sync/reservation.js';
import { usageLevel, type DmaResvUsage } from '../sync/usage.js';
import { parseWaitOptions, type FenceWaitOptions } from '../sync/wait-options.js';
import { exportSyncFd, importSyncFd } from './fence-ioctls.js';
import { waitForPoll } from './poll-wait.js';

/** The side of the kernel's fences that a user of `usage` must respect. */
function sideOf(usage: DmaResvUsage): 'read' | 'write' {
  return usage === 'read' || usage === 'kernel' ? 'read' : 'write';
}

/**
 * A kernel dma-buf's reservation object; see the module description.
 *
 * @example
 * ```ts
 * const buf = await DmaBuf.get(vgemFd);
 * await buf.resv.wait('read');            // the GPU's write fences have signalled
 * ```
 */
export class KernelResv implements Reservation {
  readonly #local = new DmaResv();
  /** The dma-buf's descriptor; throws `EINVAL` once the buffer is released. */
  readonly #fd: (op: string) => number;
  /** What the buffer is, in messages. */
  readonly #what: string;

  /** @internal created with the buffer object (`kernel-buffer.ts`). */
  constructor(fd: (op: string) => number, what: string) {
    this.#fd = fd;
    this.#what = what;
  }

  /** Whether the kernel's fences of the side `usage` respects have signalled (a poll). */
  #kernelIdle(usage: DmaResvUsage, op: string): boolean {
    const c = native.constants;
    const events = sideOf(usage) === 'read' ? c.POLLIN : c.POLLOUT;
    return (native.pollNow(this.#fd(op), events) & (events | c.POLLERR)) !== 0;
  }

  /**
   * Adds `fence`: a kernel sync_file's fence with usage `'read'` or `'write'` goes into the
   * kernel's object (drivers respect it); any other into this thread's.
   *
   * @throws {DmaBufError} `EINVAL` for a bad fence or usage, or a released buffer; `ENOTTY`
   *   on kernels before 6.0.
   */
  add(fence: DmaFence, usage: DmaResvUsage): void {
    usageLevel(usage, 'add');
    if (!(fence instanceof DmaFence)) throw new DmaBufError('EINVAL', 'add: fence must be a DmaFence', { op: 'add' });
    const syncFd = fenceInternals.syncFileOf(fence);
    if (syncFd !== undefined && (usage === 'read' || usage === 'write')) {
      importSyncFd(this.#fd('add'), usage, syncFd, 'add');
      return;
    }
    this.#local.add(fence, usage);
  }

  /**
   * Adds the fence of a fence descriptor, as {@link KernelResv.add}; a sync_file goes to the
   * kernel without being imported first.
   *
   * @throws {DmaBufError} as `DmaFence.fromFd`; `EINVAL` for a bad usage.
   */
  async addFd(fd: number, usage: DmaResvUsage): Promise<DmaFence> {
    usageLevel(usage, 'addFd');
    if ((usage === 'read' || usage === 'write') && Number.isInteger(fd) && fd >= 0 && isKernelSyncFile(fd)) {
      importSyncFd(this.#fd('addFd'), usage, fd, 'addFd');
      return DmaFence.fromFd(fd);
    }
    return this.#local.addFd(fd, usage);
  }

  /**
   * The unsignalled fences a user of `usage` must respect: this thread's, then the kernel's
   * (one fence, imported from an exported sync_file) when the kernel has some.
   *
   * @throws {DmaBufError} `EINVAL` for a bad usage or a released buffer.
   */
  async fences(usage: DmaResvUsage): Promise<DmaFence[]> {
    const out = this.#local.fences(usage);
    const kernel = await this.#kernelFence(usage, 'fences');
    if (kernel) out.push(kernel);
    return out;
  }

  async #kernelFence(usage: DmaResvUsage, op: string): Promise<DmaFence | undefined> {
    if (this.#kernelIdle(usage, op)) return undefined;
    const syncFd = exportSyncFd(this.#fd(op), sideOf(usage), op);
    try {
      const fence = await DmaFence.fromFd(syncFd, { name: `${this.#what} (${sideOf(usage)} fences)` });
      return fence.signaled ? undefined : fence;
    } finally {
      native.close(syncFd);
    }
  }

  /**
   * Whether every fence a user of `usage` must respect has signalled.
   *
   * @throws {DmaBufError} `EINVAL` for a bad usage or a released buffer.
   */
  test(usage: DmaResvUsage): boolean {
    return this.#local.test(usage) && this.#kernelIdle(usage, 'test');
  }

  /**
   * Waits until {@link KernelResv.test} is true: for this thread's fences, then for the
   * dma-buf's descriptor to poll ready (never blocking the event loop), again until both are.
   *
   * @returns `true`, or `false` when `timeout` ran out.
   * @throws {DmaBufError} `EINTR` when `signal` aborts; `EINVAL` for bad arguments.
   */
  async wait(usage: DmaResvUsage, options?: FenceWaitOptions): Promise<boolean> {
    usageLevel(usage, 'wait');
    const { timeout, signal } = parseWaitOptions(options, 'wait');
    if (timeout === 0) return this.test(usage);
    const deadline = performance.now() + timeout;
    const left = (): number => Math.max(0, deadline - performance.now());
    while (!this.test(usage)) {
      if (!(await this.#local.wait(usage, { timeout: left(), signal }))) return false;
      const ms = left();
      try {
        await waitForPoll(this.#fd('wait'), sideOf(usage) === 'read' ? 'readable' : 'writable', {
          op: 'wait', what: `the kernel's fences of ${this.#what}`, signal, timeout: ms > 0x7fffffff ? undefined : ms,
        });
      } catch (err) {
        if (DmaBufError.is(err, 'ETIMEDOUT')) return false;
        throw err;
      }
    }
    return true;
  }

  /**
   * One fence for what a user of `usage` must respect now (merged when there are several).
   *
   * @throws {DmaBufError} `EINVAL` for a bad usage or a released buffer.
   */
  async exportFence(usage: DmaResvUsage): Promise<DmaFence> {
    const pending = await this.fences(usage);
    if (pending.length === 1) return pending[0]!;
    return DmaFence.merge(pending, { name: `${this.#what}: reservation snapshot (${usage})` });
  }

  /**
   * A descriptor for {@link KernelResv.exportFence}, owned by the caller: the kernel's own
   * sync_file (which drivers accept) when this thread holds no fence for `usage`, else a
   * fence file of the merged fences.
   *
   * @throws {DmaBufError} `EINVAL` for a bad usage or a released buffer; `ENOTTY` on kernels
   *   before 6.0.
   */
  async exportFd(usage: DmaResvUsage): Promise<number> {
    usageLevel(usage, 'exportFd');
    if (this.#local.test(usage)) return exportSyncFd(this.#fd('exportFd'), sideOf(usage), 'exportFd');
    return (await this.exportFence(usage)).toFd();
  }
}
