/**
 * CPU access to a buffer's memory, the user-space `DMA_BUF_IOCTL_SYNC`: the arguments of
 * `beginCpuAccess`/`endCpuAccess` and of the sync-file moves, and the wait for the fences of
 * the buffer's reservation object that an access of each kind must respect.
 *
 * | access | waits for the fences a user of this usage respects | that is, fences added as |
 * | --- | --- | --- |
 * | `'read'` | `'read'` | `kernel`, `write` |
 * | `'write'`, `'read-write'` | `'write'` | `kernel`, `write`, `read` |
 *
 * @module
 */
import { DmaBufError } from './errors.js';
import type { CpuAccess } from './ops.js';
import { DmaFence } from '../sync/fence.js';
import { addAndWait } from '../sync/reservation.js';
import type { Reservation } from '../sync/reservation.js';
import type { DmaResvUsage } from '../sync/usage.js';

/**
 * Which side of a buffer's fences a sync file stands for: `'read'`, what a reader must wait
 * for (the write fences) or a fence readers add; `'write'`, what a writer must wait for (all
 * fences) or a fence writers add.
 *
 * @example
 * ```ts
 * const side: FenceAccess = writing ? 'write' : 'read';
 * ```
 */
export type FenceAccess = 'read' | 'write';

/**
 * Options of {@link DmaBuf.beginCpuAccess}.
 *
 * @example
 * ```ts
 * await buf.beginCpuAccess('read', { offset: 0, length: 4096, timeout: 500 });
 * ```
 */
export interface CpuAccessOptions {
  /** First byte the CPU will touch (default 0). */
  offset?: number;
  /** Bytes from `offset` (default: to the end of the buffer). */
  length?: number;
  /**
   * Milliseconds to wait for the fences (and the exporter) before failing with `ETIMEDOUT`.
   * Default: wait until they signal.
   */
  timeout?: number;
  /** Aborting it fails the wait with `EINTR`. */
  signal?: AbortSignal;
  /**
   * This access's own fence, which its user signals when the access ends: it is added to the
   * buffer's reservation object (as a `'read'` fence for a read, a `'write'` fence for a write)
   * after the fences the access must respect, which are then waited for; users that come
   * later wait for it. One step, so that no writer slips in between (for an imported buffer,
   * one round trip). On a timeout or an abort it stays added: signal it then too.
   */
  fence?: DmaFence;
}

/** Options of {@link DmaBuf.endCpuAccess}: the range given to `beginCpuAccess`. */
export interface CpuAccessEndOptions {
  /** First byte the CPU touched (default 0). */
  offset?: number;
  /** Bytes from `offset` (default: to the end of the buffer). */
  length?: number;
}

/** The checked options. */
export interface ParsedCpuAccess {
  offset: number;
  length: number;
  timeout: number | undefined;
  signal: AbortSignal | undefined;
  fence: DmaFence | undefined;
}

/**
 * Checks an access kind.
 *
 * @throws {DmaBufError} `EINVAL` unless `access` is `'read'`, `'write'` or `'read-write'`.
 */
export function checkCpuAccess(op: string, access: unknown): asserts access is CpuAccess {
  if (access !== 'read' && access !== 'write' && access !== 'read-write') {
    throw new DmaBufError('EINVAL', `${op}: access must be 'read', 'write' or 'read-write', got ${String(access)}`, { op });
  }
}

/**
 * Checks a sync file's side.
 *
 * @throws {DmaBufError} `EINVAL` unless `access` is `'read'` or `'write'`.
 */
export function checkFenceAccess(op: string, access: unknown): asserts access is FenceAccess {
  if (access !== 'read' && access !== 'write') {
    throw new DmaBufError('EINVAL', `${op}: access must be 'read' or 'write', got ${String(access)}`, { op });
  }
}

/** The usage whose fences an access must respect (`dma_resv_usage_rw`). */
export function usageOfAccess(access: CpuAccess): DmaResvUsage {
  return access === 'read' ? 'read' : 'write';
}

/**
 * Checks the options of a CPU-access bracket on a buffer of `size` bytes.
 *
 * @throws {DmaBufError} `EINVAL` for a range outside the buffer, a timeout that is not a
 *   non-negative number, or a signal that is not an `AbortSignal`.
 */
export function parseCpuAccessOptions(op: string, size: number, options: CpuAccessOptions | undefined): ParsedCpuAccess {
  if (options === undefined) return { offset: 0, length: size, timeout: undefined, signal: undefined, fence: undefined };
  if (options === null || typeof options !== 'object') {
    throw new DmaBufError('EINVAL', `${op}: options must be an object ({ offset?, length?, timeout?, signal?, fence? })`, { op });
  }
  const { offset = 0, timeout, signal, fence } = options as CpuAccessOptions;
  if (!Number.isSafeInteger(offset) || offset < 0 || offset >= size) {
    throw new DmaBufError('EINVAL', `${op}: offset must be an integer from 0 to ${size - 1} (the buffer has ${size} bytes), got ${String(offset)}`, { op });
  }
  const length = options.length ?? size - offset;
  if (!Number.isSafeInteger(length) || length <= 0 || offset + length > size) {
    throw new DmaBufError('EINVAL', `${op}: length must be an integer from 1 to ${size - offset} (the bytes from offset ${offset} to the end), got ${String(length)}`, { op });
  }
  if (timeout !== undefined && (typeof timeout !== 'number' || Number.isNaN(timeout) || timeout < 0)) {
    throw new DmaBufError('EINVAL', `${op}: timeout must be a non-negative number of milliseconds, got ${String(timeout)}`, { op });
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new DmaBufError('EINVAL', `${op}: signal must be an AbortSignal`, { op });
  }
  if (fence !== undefined && !(fence instanceof DmaFence)) {
    throw new DmaBufError('EINVAL', `${op}: fence must be a DmaFence`, { op });
  }
  return { offset, length, timeout, signal, fence };
}

/**
 * Runs `fn` with a signal that aborts when `signal` does or when `timeout` milliseconds have
 * passed; a failure caused by the timeout becomes `ETIMEDOUT` (`what` says what was late).
 * Without a timeout, `fn` gets `signal` itself.
 *
 * @throws {DmaBufError} `ETIMEDOUT` after `timeout`; whatever `fn` throws.
 */
export async function withTimeout<T>(op: string, what: string, timeout: number | undefined, signal: AbortSignal | undefined, fn: (signal: AbortSignal | undefined) => Promise<T>): Promise<T> {
  if (timeout === undefined || timeout === Infinity) return fn(signal);
  const late = new DmaBufError('ETIMEDOUT', `${op}: ${what} did not signal within ${timeout} ms`, { op });
  const controller = new AbortController();
  const forward = (): void => controller.abort(signal!.reason);
  if (signal?.aborted) forward();
  else signal?.addEventListener('abort', forward, { once: true });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort(late);
  }, Math.min(timeout, 0x7fffffff));
  try {
    return await fn(controller.signal);
  } catch (err) {
    if (timedOut && DmaBufError.is(err, 'EINTR')) throw late;
    throw err;
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', forward);
  }
}

/**
 * Waits until the fences of `resv` that `access` must respect have signalled (the core's
 * implicit-fence wait of `dma_buf_begin_cpu_access`); with the access's own `fence`, adds it
 * first (after the fences it must wait for, which are then those present before it).
 *
 * @throws {DmaBufError} `EINTR` when `signal` aborts; what the reservation object throws
 *   (`EPIPE` for a buffer whose exporter is gone).
 */
export async function waitForCpuAccess(resv: Reservation, access: CpuAccess, fence: DmaFence | undefined, signal: AbortSignal | undefined): Promise<void> {
  // No timeout here: the caller's timeout aborts `signal` (see withTimeout).
  const options = signal ? { signal } : undefined;
  if (fence) await addAndWait(resv, fence, usageOfAccess(access), options);
  else await resv.wait(usageOfAccess(access), options);
}
