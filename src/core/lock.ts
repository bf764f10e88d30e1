/**
 * An async mutex with a condition wait, used to serialize the calls of a buffer's ops.
 *
 * The exporter's ops are called with the buffer's lock held; no two ops of one buffer ever
 * run interleaved, even when each awaits. An op that must wait for other operations (a map
 * that waits for outstanding unmaps before migrating storage) calls {@link AsyncLock.waitUntil},
 * which releases the lock while it waits and takes it again before it returns, as a
 * condition variable does.
 *
 * @module
 */
import { DmaBufError } from './errors.js';
import { isThenable, promiseOf, type Now } from './now.js';

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** Rejects with `EINTR` for operation `op` when `signal` is aborted. */
export function interrupted(op: string, signal: AbortSignal): DmaBufError {
  return new DmaBufError('EINTR', `${op}: interrupted by an aborted signal`, { op, cause: signal.reason });
}

/** An async mutex (FIFO) with condition waits. */
export class AsyncLock {
  #held = false;
  // Made at the first waiter: most locks never see one (a buffer's ops rarely contend).
  #queue: Waiter[] | null = null;
  #conditions: Set<() => void> | null = null;

  /** Whether the lock is held now. */
  get held(): boolean {
    return this.#held;
  }

  /** Throws `EINVAL` unless the lock is held: the written contract of `_locked` code paths. */
  assertHeld(op: string): void {
    if (!this.#held) {
      throw new DmaBufError('EINVAL', `${op}: must be called with the buffer's lock held (from within an op)`, { op });
    }
  }

  /** Takes the lock, waiting in FIFO order. Rejects with `EINTR` when `signal` aborts first. */
  acquire(op: string, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(interrupted(op, signal));
    if (!this.#held) {
      this.#held = true;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject };
      (this.#queue ??= []).push(waiter);
      if (signal) {
        const onAbort = (): void => {
          const i = this.#queue?.indexOf(waiter) ?? -1;
          if (i >= 0) {
            this.#queue!.splice(i, 1);
            reject(interrupted(op, signal));
          }
        };
        signal.addEventListener('abort', onAbort, { once: true });
        waiter.resolve = () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
      }
    });
  }

  /** Releases the lock, handing it to the next waiter. */
  release(): void {
    const next = this.#queue?.shift();
    if (next) {
      next.resolve();
    } else {
      this.#held = false;
    }
  }

  /** Runs `fn` with the lock held. */
  async run<T>(op: string, fn: () => Promise<T> | T, signal?: AbortSignal): Promise<T> {
    await this.acquire(op, signal);
    try {
      return await fn();
    } finally {
      this.release();
    }
  }

  /**
   * Runs `fn` with the lock held, starting it in this call when the lock is free: a `fn` that
   * returns a plain value (or throws) has then run and released the lock before this returns
   * its value (or throws). Otherwise the result is a promise, as from {@link run}.
   */
  tryRun<T>(op: string, fn: () => Now<T>, signal?: AbortSignal): Now<T> {
    if (this.#held || signal?.aborted) return this.run(op, fn, signal);
    this.#held = true;
    let r: Now<T>;
    try {
      r = fn();
    } catch (err) {
      this.release();
      throw err;
    }
    if (!isThenable(r)) {
      this.release();
      return r;
    }
    return Promise.resolve(r).then(
      (v) => {
        this.release();
        return v;
      },
      (err: unknown) => {
        this.release();
        throw err;
      },
    );
  }

  /** {@link tryRun}, as a promise (already settled when `fn` finished in the call). */
  runNow<T>(op: string, fn: () => Now<T>, signal?: AbortSignal): Promise<T> {
    return promiseOf(() => this.tryRun(op, fn, signal));
  }

  /**
   * Wakes the waiters of {@link waitUntil} so that they test their predicate again. Call it
   * after changing state a predicate may depend on.
   */
  notify(): void {
    if (!this.#conditions || this.#conditions.size === 0) return;
    for (const wake of [...this.#conditions]) wake();
  }

  /**
   * With the lock held: releases it, waits until `predicate()` is true (tested now and after
   * each {@link notify}), and takes the lock again before returning. Rejects with `EINTR`
   * when `signal` aborts; the lock is held again in every case when this settles.
   */
  async waitUntil(op: string, predicate: () => boolean, signal?: AbortSignal): Promise<void> {
    this.assertHeld(op);
    while (!predicate()) {
      if (signal?.aborted) throw interrupted(op, signal);
      this.release();
      let abortError: DmaBufError | undefined;
      try {
        await new Promise<void>((resolve) => {
          const wake = (): void => {
            this.#conditions?.delete(wake);
            signal?.removeEventListener('abort', onAbort);
            resolve();
          };
          const onAbort = (): void => {
            abortError = interrupted(op, signal!);
            wake();
          };
          (this.#conditions ??= new Set()).add(wake);
          signal?.addEventListener('abort', onAbort, { once: true });
        });
      } finally {
        await this.acquire(op);
      }
      if (abortError) throw abortError;
    }
  }
}
