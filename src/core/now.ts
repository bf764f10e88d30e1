/**
 * Results that come now or later. The hot paths (a hand-off's attach and map, an import's
 * unmap and detach) are synchronous whenever the exporter's ops are; the same code then
 * serves ops that return promises. A function that returns a {@link Now} may also throw.
 *
 * @module
 */

/** A value now, or the promise of one. */
export type Now<T> = T | Promise<T>;

/** Whether `v` is a promise (or any thenable) rather than a plain value. */
export function isThenable<T>(v: T | PromiseLike<T>): v is PromiseLike<T> {
  return typeof (v as { then?: unknown } | null | undefined)?.then === 'function';
}

/**
 * `fn(value)`: at once for a plain value (a throw of `fn` is thrown), else once the promise
 * fulfils. `onError` sees a rejection of the promise (only: a plain value never fails).
 */
export function andThen<T, U>(value: T | PromiseLike<T>, fn: (v: T) => U | PromiseLike<U>, onError?: (err: unknown) => U | PromiseLike<U>): Now<U> {
  if (!isThenable(value)) return fn(value) as Now<U>;
  return Promise.resolve(value).then(fn, onError);
}

/** A promise of `fn()`: a throw becomes a rejection (for public methods that return promises). */
export function promiseOf<T>(fn: () => T | PromiseLike<T>): Promise<T> {
  try {
    return Promise.resolve(fn());
  } catch (err) {
    return Promise.reject(err);
  }
}
