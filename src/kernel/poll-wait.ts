/**
 * Waiting, without blocking the event loop, until a kernel descriptor polls ready: a
 * sync_file polls readable once its fences have signalled; a dma-buf polls readable once its
 * write fences have (a reader may go on) and writable once all its fences have (a writer may).
 *
 * The wait watches a `dup` of the descriptor with a libuv poll watcher (one watcher per
 * descriptor is libuv's rule; the dup lets any number of waits run at once) and keeps the
 * event loop alive while it waits.
 *
 * @module
 */
import { native, type PollHandle } from '../native/binding.js';
import { DmaBufError } from '../core/errors.js';
import { interrupted } from '../core/lock.js';

/** Options of {@link waitForPoll}. */
export interface PollWaitOptions {
  /** Gives up: the wait rejects with `EINTR`. */
  signal?: AbortSignal | undefined;
  /** Gives up after this many milliseconds: the wait rejects with `ETIMEDOUT`. Default: never. */
  timeout?: number | undefined;
  /** The operation named in errors. */
  op: string;
  /** What is waited for, in the timeout's message (`'the fence'`). */
  what: string;
}

/**
 * Resolves once `fd` polls readable (`'readable'`) or writable (`'writable'`).
 *
 * @throws {DmaBufError} `EINTR` when `signal` aborts; `ETIMEDOUT` after `timeout`; `EINVAL`
 *   for a bad timeout; `EBADF` when `fd` is not open; `EIO` when the watcher fails.
 * @example
 * ```ts
 * await waitForPoll(syncFd, 'readable', { op: 'wait', what: 'the fence', timeout: 1000 });
 * ```
 */
export function waitForPoll(fd: number, ready: 'readable' | 'writable', options: PollWaitOptions): Promise<void> {
  const { signal, timeout, op, what } = options;
  const c = native.constants;
  if (timeout !== undefined && !(typeof timeout === 'number' && timeout >= 0 && timeout <= 0x7fffffff)) {
    return Promise.reject(new DmaBufError('EINVAL', `${op}: timeout must be a number of milliseconds from 0 to 2^31-1, got ${String(timeout)}`, { op }));
  }
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    return Promise.reject(new DmaBufError('EINVAL', `${op}: signal must be an AbortSignal`, { op }));
  }
  const pollEvents = ready === 'readable' ? c.POLLIN : c.POLLOUT;
  const isReady = (f: number): boolean => (native.pollNow(f, pollEvents) & (pollEvents | c.POLLERR)) !== 0;
  let watched: number;
  try {
    if (isReady(fd)) return Promise.resolve();
    if (signal?.aborted) return Promise.reject(interrupted(op, signal));
    watched = native.dup(fd, true);
  } catch (err) {
    return Promise.reject(err);
  }
  return new Promise<void>((resolve, reject) => {
    let timer: NodeJS.Timeout | undefined;
    let handle: PollHandle | null = null;
    let done = false;
    const finish = (err: unknown): void => {
      if (done) return;
      done = true;
      if (handle) native.pollClose(handle);
      native.close(watched);
      if (timer) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve();
    };
    const onAbort = (): void => finish(interrupted(op, signal!));
    try {
      handle = native.pollStart(watched, ready === 'readable' ? c.UV_READABLE : c.UV_WRITABLE, (status) => {
        if (status < 0) {
          finish(new DmaBufError('EIO', `${op}: the event loop's watcher of ${what} failed (libuv status ${status})`, { op }));
          return;
        }
        try {
          if (isReady(watched)) finish(null);
        } catch (err) {
          finish(err);
        }
      });
      native.pollRef(handle, true);
    } catch (err) {
      finish(err);
      return;
    }
    signal?.addEventListener('abort', onAbort, { once: true });
    if (timeout !== undefined) {
      timer = setTimeout(() => finish(new DmaBufError('ETIMEDOUT', `${op}: ${what} did not signal within ${timeout} ms`, { op })), timeout);
    }
  });
}
