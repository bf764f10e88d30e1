/**
 * `DmaFence`: a one-shot completion event, the user-space `struct dma_fence`.
 *
 * A fence starts unsignalled and is signalled once, with or without an error; it never goes
 * back. Callbacks and waits run when it signals. A fence crosses threads and processes as a
 * fence file (`toFd` / `fromFd`, see `fence-file.ts`): a descriptor that polls readable once
 * the fence is signalled, and that reports the death of the signaller as an `EPIPE` error.
 *
 * Four kinds, one class:
 * - **local** (`new DmaFence()`, `timeline.create()`): signalled by `signal()` in the thread
 *   that created it. Its first `toFd()` creates the fence file; this thread holds the write end
 *   until the fence signals.
 * - **imported** (`DmaFence.fromFd()` of a fence file from another thread or process, or of a
 *   kernel sync_file): signals when the file says so, from this thread's event loop.
 *   `signal()` throws `EPERM`.
 * - **merged** (`DmaFence.merge()`): signals when all of its fences have. `signal()` throws
 *   `EPERM`. Its fence file is written by this thread, so it reads `EPIPE` if this thread ends
 *   first.
 * - a fence file already signalled imports as a signalled fence.
 *
 * `fromFd` in the thread that created the fence file returns the very fence (as the kernel's
 * sync_file wraps the same `dma_fence`); a second `fromFd` of the same unsignalled fence file
 * in one thread returns the same imported fence.
 *
 * Callbacks run synchronously, inside the call that signals (`signal()`, or the event-loop
 * callback that sees an imported fence signalled, or a `signaled` read that discovers it), in
 * the order they were added. A callback that throws does not stop the others: its exception
 * is rethrown from a microtask, and becomes an uncaught exception like any event listener's.
 *
 * @module
 */
import { DmaBufError } from '../core/errors.js';
import { closeOwned, native, own, type PollHandle } from '../native/binding.js';
import { createFenceFile, fenceFileKey, inspectFenceFile, readFenceFile, retireFenceFile, signalFenceFile, signaledFenceFile, type FenceFileState } from './fence-file.js';
import { isKernelSyncFile, readKernelSyncFile } from './kernel-sync-file.js';
import { interrupted, parseWaitOptions, startTimer, type FenceWaitOptions } from './wait-options.js';

/**
 * Options of `new DmaFence()`, `DmaFence.merge()`, `DmaFence.fromFd()` and
 * `timeline.create()`.
 *
 * @example
 * ```ts
 * const f = new DmaFence({ name: 'decode frame 3' });
 * ```
 */
export interface DmaFenceOptions {
  /** A name for messages and debugging (at most 255 characters). */
  name?: string;
}

/**
 * A function called once with the fence when it signals (see {@link DmaFence.addCallback}).
 *
 * @example
 * ```ts
 * const log: DmaFenceCallback = (f) => console.log(f.name, f.error?.code ?? 'ok');
 * ```
 */
export type DmaFenceCallback = (fence: DmaFence) => void;

type Kind = 'local' | 'imported' | 'merged';

/**
 * Where a fence stands among others: fences of one timeline share a context and are ordered
 * by seqno; any other fence is its own context. Reservation objects replace an older fence of
 * a context by a later one.
 */
export interface FenceOrder {
  readonly context: object;
  readonly seqno: number;
}

/** The fence file of a local or merged fence, while it is unsignalled. */
interface OwnFile {
  read: number;
  write: number;
  key: string;
  /** Set once the fence has signalled: the descriptors are no longer the finalizer's. */
  done: boolean;
}

/** The fence file (or kernel sync_file) an imported fence watches, while it is unsignalled. */
interface Source {
  fd: number;
  poll: PollHandle;
  /** The pipe's identity, for `byFile`; null for a kernel sync_file (it has none). */
  key: string | null;
  /** Reads the outcome: a fence file's count, or a sync_file's status. */
  read: (fd: number) => FenceFileState;
  /** Waits in progress that keep the event loop alive. */
  refs: number;
}

/**
 * The fences of this thread that hold or watch an unsignalled fence file, by the pipe's
 * identity, so that `fromFd` finds them. Module state is per thread (each worker loads its
 * own copy).
 */
const byFile = new Map<string, WeakRef<DmaFence>>();

/**
 * A local fence collected while unsignalled can never be signalled: its fence file is closed,
 * so that holders read `EPIPE` rather than wait forever.
 */
const abandoned = new FinalizationRegistry<OwnFile>((file) => {
  if (file.done) return;
  if (byFile.get(file.key)?.deref() === undefined) byFile.delete(file.key);
  closeOwned(file.write);
  closeOwned(file.read);
});

const NAME_MAX = 255;

function fenceName(options: DmaFenceOptions | undefined, op: string, fallback: string): string {
  if (options === undefined) return fallback;
  if (options === null || typeof options !== 'object') {
    throw new DmaBufError('EINVAL', `${op}: options must be an object ({ name? })`, { op });
  }
  const { name = fallback } = options;
  if (typeof name !== 'string' || name.length > NAME_MAX) {
    throw new DmaBufError('EINVAL', `${op}: name must be a string of at most ${NAME_MAX} characters`, { op });
  }
  return name;
}

/** The error a fence carries for `error` (passed to `signal`). */
function asFenceError(error: Error, name: string): DmaBufError {
  if (error instanceof DmaBufError) return error;
  const code = (error as { code?: unknown }).code;
  return new DmaBufError(
    typeof code === 'string' && /^E[A-Z0-9]{1,15}$/.test(code) ? code : 'EIO',
    `fence "${name}" was signalled with an error: ${error.message}`,
    { op: 'signal', cause: error },
  );
}

/** The error of an imported fence's outcome. */
function importedError(state: FenceFileState & { signaled: true }, name: string): DmaBufError | undefined {
  if (state.code === undefined) return undefined;
  if (state.died) {
    return new DmaBufError('EPIPE', `fence "${name}": its signaller (the thread or process that holds the fence file's write end) ended without signalling it`, { op: 'fence' });
  }
  return new DmaBufError(state.code, `fence "${name}" was signalled with ${state.code} by its signaller in another thread or process`, { op: 'fence' });
}

/**
 * Internal hooks for the other modules of this layer (timelines, reservation objects); not
 * exported from the package.
 *
 * @internal
 */
export interface FenceInternals {
  /**
   * A local fence named by `options` (checked as `op` does) or `fallback`, at `order`;
   * `signalHook` does its signalling (timelines).
   */
  create(options: DmaFenceOptions | undefined, op: string, fallback: string, order: FenceOrder, signalHook: (fence: DmaFence, error: DmaBufError | undefined) => void): DmaFence;
  /** Signals `fence` now (no checks); false when it was signalled already. */
  settle(fence: DmaFence, error: DmaBufError | undefined): boolean;
  order(fence: DmaFence): FenceOrder;
  /** Whether `fence` is known to have signalled, without checking anything (no callbacks run). */
  isSignaled(fence: DmaFence): boolean;
  /**
   * The kernel sync_file an unsignalled imported fence watches (the fence keeps owning it:
   * never close it), or undefined for any other fence.
   */
  syncFileOf(fence: DmaFence): number | undefined;
}

let internals!: FenceInternals;

/**
 * A one-shot completion event that crosses threads and processes.
 *
 * @example
 * ```ts
 * const fence = new DmaFence({ name: 'frame 1 painted' });
 * fence.addCallback((f) => console.log(`${f.name}: done`, f.error?.code ?? 'ok'));
 * setTimeout(() => fence.signal(), 10);
 * await fence.wait();                      // true
 * ```
 */
export class DmaFence {
  #name: string;
  #kind: Kind = 'local';
  #signaled = false;
  #error: DmaBufError | undefined;
  #callbacks: DmaFenceCallback[] = [];
  #order: FenceOrder;
  #signalHook: ((fence: DmaFence, error: DmaBufError | undefined) => void) | undefined;
  /** Finds out whether the fence has signalled elsewhere (imported, merged). */
  #probe: (() => void) | undefined;
  /** Keeps the event loop alive (delta +1) or lets it go (-1) while a wait runs. */
  #hold: ((delta: number) => void) | undefined;
  #file: OwnFile | undefined;
  #source: Source | undefined;

  static {
    internals = {
      create: (options, op, fallback, order, signalHook) => {
        const f = new DmaFence({ name: fenceName(options, op, fallback) });
        f.#order = order;
        f.#signalHook = signalHook;
        return f;
      },
      settle: (fence, error) => fence.#settle(error),
      order: (fence) => fence.#order,
      isSignaled: (fence) => fence.#signaled,
      syncFileOf: (fence) => (fence.#source && fence.#source.key === null ? fence.#source.fd : undefined),
    };
  }

  /**
   * A new unsignalled fence, signalled by {@link DmaFence.signal} in this thread.
   *
   * @throws {DmaBufError} `EINVAL` when `options` is not an object or `name` is not a string
   *   of at most 255 characters.
   * @example
   * ```ts
   * const fence = new DmaFence({ name: 'upload' });
   * ```
   */
  constructor(options: DmaFenceOptions = {}) {
    this.#name = fenceName(options, 'DmaFence', 'fence');
    this.#order = { context: this, seqno: 0 };
  }

  /**
   * The fence's name.
   *
   * @example
   * ```ts
   * new DmaFence({ name: 'a' }).name;        // 'a'
   * ```
   */
  get name(): string {
    return this.#name;
  }

  /**
   * Whether the fence has signalled. For an imported or merged fence, reading it checks the
   * fence file now, and signals the fence (running its callbacks) if it has signalled.
   *
   * @example
   * ```ts
   * const f = new DmaFence();
   * f.signaled;                              // false
   * f.signal();
   * f.signaled;                              // true
   * ```
   */
  get signaled(): boolean {
    if (!this.#signaled) this.#probe?.();
    return this.#signaled;
  }

  /**
   * The error the fence signalled with, or `undefined` (unsignalled, or signalled without an
   * error). An error from another thread or process keeps its code, not its message; a
   * signaller that died gives `EPIPE`.
   *
   * @example
   * ```ts
   * const f = new DmaFence();
   * f.signal(new DmaBufError('EIO', 'the GPU hung'));
   * f.error?.code;                           // 'EIO'
   * ```
   */
  get error(): DmaBufError | undefined {
    return this.signaled ? this.#error : undefined;
  }

  /**
   * Signals the fence: runs its callbacks, resolves its waits and tells every holder of its
   * fence files. A fence of a timeline first signals, in seqno order, every unsignalled fence
   * of the timeline with a lower seqno.
   *
   * @param error - The error to signal with. A `DmaBufError` is kept as it is; any other
   *   `Error` becomes a `DmaBufError` with the error's `code` when it is an errno name, else
   *   `EIO`, and the error as `cause`.
   * @returns `true` the first time, `false` afterwards (the first outcome stays).
   * @throws {DmaBufError} `EPERM` for an imported or merged fence (only its creator
   *   signals it); `EINVAL` when `error` is neither `undefined` nor an `Error`.
   * @example
   * ```ts
   * const f = new DmaFence();
   * f.signal();                              // true
   * f.signal(new Error('late'));             // false: still signalled without an error
   * ```
   */
  signal(error?: Error): boolean {
    if (this.#kind !== 'local') {
      const why = this.#kind === 'imported'
        ? 'it was imported from a fence file; only the thread that created it can signal it'
        : 'it is a merged fence; it signals when all of its fences have';
      throw new DmaBufError('EPERM', `signal: fence "${this.#name}" cannot be signalled here: ${why}`, { op: 'signal' });
    }
    if (error !== undefined && !(error instanceof Error)) {
      throw new DmaBufError('EINVAL', `signal: error must be an Error (or undefined), not ${typeof error}`, { op: 'signal' });
    }
    if (this.#signaled) return false;
    const e = error === undefined ? undefined : asFenceError(error, this.#name);
    if (this.#signalHook) {
      this.#signalHook(this, e);
    } else {
      this.#settle(e);
    }
    return true;
  }

  /**
   * Waits until the fence signals, without blocking the event loop.
   *
   * While it waits for an imported fence, the wait keeps the event loop alive. A wait for a
   * local fence does not (only this thread can signal it; a finite timeout does, as a timer).
   *
   * @returns `true` once the fence has signalled (also with an error: see
   *   {@link DmaFence.error}), `false` when `timeout` ran out first. `timeout: 0` answers at
   *   once.
   * @throws {DmaBufError} `EINTR` (a rejection) when `signal` is aborted before the fence
   *   signals; `EINVAL` for bad options.
   * @example
   * ```ts
   * if (!(await fence.wait({ timeout: 1000 }))) console.log('not yet');
   * await fence.wait({ signal: AbortSignal.timeout(5000) });   // EINTR after 5 s
   * ```
   */
  wait(options?: FenceWaitOptions): Promise<boolean> {
    let parsed;
    try {
      parsed = parseWaitOptions(options, 'wait');
    } catch (err) {
      return Promise.reject(err);
    }
    const { timeout, signal } = parsed;
    if (this.signaled) return Promise.resolve(true);
    if (signal?.aborted) return Promise.reject(interrupted('wait', signal));
    if (timeout === 0) return Promise.resolve(false);
    return new Promise<boolean>((resolve, reject) => {
      const finish = (): void => {
        cancelTimer();
        signal?.removeEventListener('abort', onAbort);
        this.#hold?.(-1);
      };
      const onSignaled = (): void => {
        finish();
        resolve(true);
      };
      const giveUp = (outcome: () => void): void => {
        this.#removeCallback(onSignaled);
        finish();
        outcome();
      };
      const onAbort = (): void => giveUp(() => reject(interrupted('wait', signal!)));
      this.#callbacks.push(onSignaled);
      this.#hold?.(1);
      const cancelTimer = startTimer(timeout, () => giveUp(() => resolve(false)));
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Adds a callback, called once with the fence when it signals.
   *
   * @returns `false`, without ever calling `fn`, when the fence has already signalled (the
   *   kernel's `-ENOENT`); otherwise `true`.
   * @throws {DmaBufError} `EINVAL` when `fn` is not a function.
   * @example
   * ```ts
   * if (!fence.addCallback(onDone)) onDone(fence);   // already signalled: call it yourself
   * ```
   */
  addCallback(fn: DmaFenceCallback): boolean {
    if (typeof fn !== 'function') throw new DmaBufError('EINVAL', 'addCallback: fn must be a function', { op: 'addCallback' });
    if (this.signaled) return false;
    this.#callbacks.push(fn);
    return true;
  }

  /**
   * Removes a callback added with {@link DmaFence.addCallback} (one registration of it).
   *
   * @returns Whether `fn` was still pending (`false` once the fence has signalled).
   * @throws {DmaBufError} `EINVAL` when `fn` is not a function.
   * @example
   * ```ts
   * fence.addCallback(onDone);
   * fence.removeCallback(onDone);            // true
   * ```
   */
  removeCallback(fn: DmaFenceCallback): boolean {
    if (typeof fn !== 'function') throw new DmaBufError('EINVAL', 'removeCallback: fn must be a function', { op: 'removeCallback' });
    return this.#removeCallback(fn);
  }

  /**
   * A new descriptor of a fence file for this fence (the equivalent of a sync_file), owned by
   * the caller: send it to any thread or process (`SCM_RIGHTS`, a child's stdio, a worker
   * message) and close it when done. It is close-on-exec.
   *
   * For a local or merged fence, this thread holds the fence file's write end until the fence
   * signals: if this thread ends first (the process dies, the worker ends), holders read
   * `EPIPE`. For an imported fence it is a copy of the file it was imported from; for a
   * signalled fence, a file that says so.
   *
   * @throws {DmaBufError} `EMFILE` (`op: 'pipe'` or `'dup'`) when the process is out of
   *   descriptors; `ENODEV` on a platform without support.
   * @example
   * ```ts
   * const fd = fence.toFd();
   * channel.sendFd(fd);
   * fs.closeSync(fd);
   * ```
   */
  toFd(): number {
    if (this.signaled) return signaledFenceFile(this.#error?.code);
    if (this.#source) return native.dup(this.#source.fd, true);
    if (!this.#file) {
      const { read, write } = createFenceFile();
      let key: string;
      try {
        key = fenceFileKey(read);
      } catch (err) {
        closeOwned(write);
        closeOwned(read);
        throw err;
      }
      this.#file = { read, write, key, done: false };
      byFile.set(key, new WeakRef(this));
      abandoned.register(this, this.#file);
    }
    return native.dup(this.#file.read, true);
  }

  /**
   * The fence of a fence descriptor, in any thread or process: a fence file from
   * {@link DmaFence.toFd}, or a kernel sync_file (from a driver, or from
   * `buf.exportSyncFile()` of a kernel dma-buf). The caller keeps owning `fd` (this takes its
   * own copy). In the thread that created a fence file, returns that fence.
   *
   * The imported fence signals from this thread's event loop when the original does; only its
   * creator can signal it. It holds a descriptor until it signals. A sync_file's fence signals
   * when every fence it holds has, with the error (errno name) of the first that failed; its
   * `toFd()` gives a copy of the sync_file until then, which drivers accept.
   *
   * @throws {DmaBufError} `EBADF` when `fd` is not an integer from 0 to 2³¹−1 or is not open;
   *   `EINVAL` when it is neither a fence file (the read end of an anonymous pipe holding a
   *   count a fence writes) nor a kernel sync_file, or `options` is bad; `EMFILE` when out of
   *   descriptors.
   * @example
   * ```ts
   * const fence = await DmaFence.fromFd(fd);
   * fs.closeSync(fd);
   * await fence.wait();
   * if (fence.error) console.log('the producer failed:', fence.error.code);
   * ```
   */
  static async fromFd(fd: number, options?: DmaFenceOptions): Promise<DmaFence> {
    const name = fenceName(options, 'fromFd', `fence file ${fd}`);
    let key: string | null;
    let state: FenceFileState;
    let read: (fd: number) => FenceFileState = readFenceFile;
    try {
      ({ key, state } = inspectFenceFile(fd, 'fromFd'));
    } catch (err) {
      // Not a fence file: a kernel sync_file is a fence descriptor too.
      if (!DmaBufError.is(err, 'EINVAL') || !isKernelSyncFile(fd)) throw err;
      key = null;
      read = readKernelSyncFile;
      state = read(fd);
    }
    const known = key === null ? undefined : byFile.get(key)?.deref();
    if (known !== undefined) return known;
    const fence = new DmaFence({ name });
    fence.#kind = 'imported';
    if (state.signaled) {
      fence.#settle(importedError(state, name));
      return fence;
    }
    const dup = own(native.dup(fd, true));
    let poll: PollHandle;
    try {
      const c = native.constants;
      poll = native.pollStart(dup, c.UV_READABLE | c.UV_DISCONNECT, (status) => fence.#onReadable(status));
    } catch (err) {
      closeOwned(dup);
      throw err;
    }
    fence.#source = { fd: dup, poll, key, read, refs: 0 };
    fence.#probe = () => fence.#check();
    fence.#hold = (delta) => {
      const s = fence.#source;
      if (!s) return;
      const before = s.refs > 0;
      s.refs += delta;
      if (before !== s.refs > 0) native.pollRef(s.poll, s.refs > 0);
    };
    if (key !== null) byFile.set(key, new WeakRef(fence));
    return fence;
  }

  /**
   * A fence that signals once all of `fences` have, with the first error among them in list
   * order. An empty list gives a fence that is already signalled. The merged fence cannot be
   * signalled with `signal()` (`EPERM`).
   *
   * @throws {DmaBufError} `EINVAL` when `fences` is not an array of `DmaFence`s, or for bad
   *   options.
   * @example
   * ```ts
   * const all = DmaFence.merge([decoded, uploaded]);
   * await all.wait();
   * ```
   */
  static merge(fences: readonly DmaFence[], options?: DmaFenceOptions): DmaFence {
    if (!Array.isArray(fences) || !fences.every((f) => f instanceof DmaFence)) {
      throw new DmaBufError('EINVAL', 'merge: fences must be an array of DmaFence', { op: 'merge' });
    }
    const merged = new DmaFence({ name: fenceName(options, 'merge', 'merged fence') });
    merged.#kind = 'merged';
    const parts = [...fences];
    const distinct = [...new Set(parts)];
    const finish = (): void => {
      const failed = parts.find((p) => p.#error !== undefined);
      merged.#settle(failed === undefined ? undefined : failed.#error);
    };
    // One count for the loop itself, so that a part signalling while others are being added
    // cannot finish early.
    let pending = 1;
    const onPart = (): void => {
      if (--pending === 0) finish();
    };
    for (const p of distinct) {
      if (!p.signaled) {
        p.#callbacks.push(onPart);
        pending++;
      }
    }
    merged.#probe = () => {
      for (const p of distinct) if (!p.#signaled) p.#probe?.();
    };
    merged.#hold = (delta) => {
      for (const p of distinct) if (!p.#signaled) p.#hold?.(delta);
    };
    onPart();
    return merged;
  }

  #removeCallback(fn: DmaFenceCallback): boolean {
    const i = this.#callbacks.indexOf(fn);
    if (i < 0) return false;
    this.#callbacks.splice(i, 1);
    return true;
  }

  #check(): void {
    const s = this.#source;
    if (!s) return;
    const state = s.read(s.fd);
    if (state.signaled) this.#settle(importedError(state, this.#name));
  }

  #onReadable(status: number): void {
    if (status < 0) {
      this.#settle(new DmaBufError('EIO', `fence "${this.#name}": the event loop's watcher of its fence file failed (libuv status ${status})`, { op: 'fence' }));
      return;
    }
    this.#check();
  }

  /** Lets go of the fence file (tells its holders, for a local fence). */
  #releaseFile(): void {
    const file = this.#file;
    if (file) {
      // The write first: it is what wakes the holders.
      try {
        signalFenceFile(file.write, this.#error?.code);
      } catch {
        // Nothing written: closing the write end tells holders EPIPE, the nearest truth left.
      }
      this.#file = undefined;
      file.done = true; // cheaper than unregistering from `abandoned`
      byFile.delete(file.key);
      retireFenceFile(file.read, file.write);
    }
    const source = this.#source;
    if (source) {
      this.#source = undefined;
      if (source.key !== null) byFile.delete(source.key);
      // After the waits have resumed (their promises resolve in microtasks): the watcher and
      // the descriptor are not on the path of the wake-up. The watcher ignores further events.
      setImmediate(() => {
        native.pollClose(source.poll);
        closeOwned(source.fd);
      });
    }
    this.#probe = undefined;
    this.#hold = undefined;
  }

  #settle(error: DmaBufError | undefined): boolean {
    if (this.#signaled) return false;
    this.#signaled = true;
    this.#error = error;
    this.#releaseFile();
    const callbacks = this.#callbacks;
    this.#callbacks = [];
    for (const fn of callbacks) {
      try {
        fn(this);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
    return true;
  }
}

/** @internal */
export { internals as fenceInternals };
