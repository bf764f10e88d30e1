/**
 * The options of every wait of this layer (`fence.wait`, `resv.wait`): a timeout and an
 * abort signal, checked once, and the timer that serves them.
 *
 * @module
 */
import { DmaBufError } from '../core/errors.js';

/**
 * How long to wait and when to give up.
 *
 * @example
 * ```ts
 * await fence.wait({ timeout: 500, signal: AbortSignal.timeout(10_000) });
 * ```
 */
export interface FenceWaitOptions {
  /**
   * Milliseconds to wait before resolving `false`; `0` only tests, without waiting.
   * Default: `Infinity` (wait until signalled). A finite timeout keeps the event loop alive
   * while it runs, as a timer does.
   */
  timeout?: number;
  /** Aborting it rejects the wait with `EINTR`. */
  signal?: AbortSignal;
}

/** The checked options. */
export interface ParsedWaitOptions {
  timeout: number;
  signal: AbortSignal | undefined;
}

/**
 * Checks wait options.
 *
 * @throws {DmaBufError} `EINVAL` when `options` is not an object, `timeout` is not a
 *   non-negative number (`Infinity` allowed), or `signal` is not an `AbortSignal`.
 */
export function parseWaitOptions(options: FenceWaitOptions | undefined, op: string): ParsedWaitOptions {
  if (options === undefined) return { timeout: Infinity, signal: undefined };
  if (options === null || typeof options !== 'object') {
    throw new DmaBufError('EINVAL', `${op}: options must be an object ({ timeout?, signal? })`, { op });
  }
  const { timeout = Infinity, signal } = options;
  if (typeof timeout !== 'number' || Number.isNaN(timeout) || timeout < 0) {
    throw new DmaBufError('EINVAL', `${op}: timeout must be a non-negative number of milliseconds (or Infinity), not ${String(timeout)}`, { op });
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw new DmaBufError('EINVAL', `${op}: signal must be an AbortSignal`, { op });
  }
  return { timeout, signal };
}

/** The error of a wait whose signal was aborted. */
export function interrupted(op: string, signal: AbortSignal): DmaBufError {
  return new DmaBufError('EINTR', `${op}: interrupted by an aborted signal`, { op, cause: signal.reason });
}

/** setTimeout's longest delay; longer ones are chained. */
const MAX_DELAY = 0x7fffffff;

/** Calls `fn` after `ms` milliseconds (any length; never for Infinity). Returns a cancel function. */
export function startTimer(ms: number, fn: () => void): () => void {
  if (ms === Infinity) return () => {};
  let timer: NodeJS.Timeout;
  const arm = (left: number): void => {
    timer = setTimeout(left > MAX_DELAY ? () => arm(left - MAX_DELAY) : fn, Math.min(left, MAX_DELAY));
  };
  arm(ms);
  return () => clearTimeout(timer);
}
