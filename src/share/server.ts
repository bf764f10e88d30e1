/**
 * Buffer servers: a listening Unix `SOCK_SEQPACKET` socket, by path or abstract name, whose
 * connections are {@link BufferChannel}s. Accepting is driven by a libuv poll watcher and
 * never blocks the event loop.
 *
 * @module
 */
import { lstatSync, unlinkSync, type Stats } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { native, own, closeOwned, type PollHandle } from '../native/binding.js';
import { DmaBufError } from '../core/errors.js';
import { BufferChannel } from './channel.js';
import { abortError, checkSignal, displayAddress, isAbstract, normalizeAddress, untilClosed } from '../transport/unix-util.js';

/** Options of {@link BufferServer.listen}. */
export interface ListenOptions {
  /** Connections the kernel queues before they are accepted (listen(2)); default 128. */
  backlog?: number;
}

/** Options of {@link BufferServer.accept}. */
export interface AcceptOptions {
  /** Aborts the wait for a connection (`EINTR`); no connection is consumed. */
  signal?: AbortSignal;
}

interface AcceptWaiter {
  resolve: (ch: BufferChannel) => void;
  reject: (err: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

const kCreate = Symbol('BufferServer.create');
const DEFAULT_BACKLOG = 128;

function closeQuietly(fd: number): void {
  if (fd < 0) return;
  try {
    native.close(fd);
  } catch {
    // gone either way
  }
}

function fileKind(st: Stats): string {
  if (st.isFile()) return 'regular file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symbolic link';
  if (st.isFIFO()) return 'FIFO';
  if (st.isCharacterDevice()) return 'character device';
  if (st.isBlockDevice()) return 'block device';
  return 'file';
}

function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * Makes `path` free for bind(2): nothing there is fine; a socket nobody listens on (a stale
 * file left by a crashed server: connect fails with `ECONNREFUSED`) is removed; anything else
 * is refused.
 */
function prepareSocketPath(path: string, op: string): void {
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (err) {
    if (errnoOf(err) === 'ENOENT') return;
    throw new DmaBufError(errnoOf(err) ?? 'EIO', `${op}: cannot inspect ${JSON.stringify(path)}: ${(err as Error).message}`, { op, cause: err });
  }
  if (!st.isSocket()) {
    throw new DmaBufError('EEXIST', `${op}: ${JSON.stringify(path)} exists and is a ${fileKind(st)}, not a socket; refusing to replace it. Remove it or choose another path`, { op });
  }
  const c = native.constants;
  const probe = native.socket(c.SOCK_SEQPACKET, true);
  try {
    native.connect(probe, path);
  } catch (err) {
    if (DmaBufError.is(err, 'ECONNREFUSED')) {
      // Stale: nobody listens. Remove it so bind can create a fresh one.
      try {
        unlinkSync(path);
      } catch (e) {
        if (errnoOf(e) !== 'ENOENT') {
          throw new DmaBufError(errnoOf(e) ?? 'EIO', `${op}: cannot remove the stale socket ${JSON.stringify(path)}: ${(e as Error).message}`, { op, cause: e });
        }
      }
      return;
    }
    if (DmaBufError.is(err, 'EAGAIN') || DmaBufError.is(err, 'EPROTOTYPE')) {
      throw new DmaBufError('EADDRINUSE', `${op}: a live socket already listens on ${JSON.stringify(path)}; stop that server or choose another path`, { op, cause: err });
    }
    const e = err as DmaBufError;
    throw new DmaBufError(e.code ?? 'EIO', `${op}: cannot tell whether the socket ${JSON.stringify(path)} is in use: ${e.message}`, { op, cause: err });
  } finally {
    closeQuietly(probe);
  }
  throw new DmaBufError('EADDRINUSE', `${op}: a server already listens on ${JSON.stringify(path)}; stop it or choose another path`, { op });
}

/**
 * A listening Unix `SOCK_SEQPACKET` socket whose connections are {@link BufferChannel}s.
 *
 * The address is a path or an abstract name (`'\0name'`, or `'@name'` as `ss(8)` prints it).
 * Abstract names vanish with the socket and need no clean-up; a path is a file that
 * {@link close} removes. The poll watcher keeps the process alive only while an
 * {@link accept} waits.
 *
 * @example
 * ```ts
 * const server = BufferServer.listen('@frames');
 * for await (const channel of server) {
 *   await channel.send(buf, { frame: 1 });
 *   channel.close();
 * }
 * ```
 */
export class BufferServer implements AsyncIterable<BufferChannel>, AsyncDisposable {
  #fd: number;
  #poll: PollHandle | null = null;
  #watching = false;
  #closed = false;
  readonly #address: string;
  /** The socket file bind created (path with its dev/ino), removed by close() if still ours. */
  #created: { path: string; dev: number; ino: number } | null;
  #waiters: AcceptWaiter[] = [];

  /** @internal use {@link BufferServer.listen}. */
  constructor(token: symbol, fd: number, address: string, created: { path: string; dev: number; ino: number } | null) {
    if (token !== kCreate) {
      throw new DmaBufError('EINVAL', 'new BufferServer: use BufferServer.listen()', { op: 'new BufferServer' });
    }
    this.#fd = own(fd);
    this.#address = address;
    this.#created = created;
  }

  /**
   * Listens on a path or an abstract name. For a path: an existing socket file that nobody
   * listens on (left by a crashed server) is replaced; a live one, or any file that is not a
   * socket, is refused.
   *
   * @throws {DmaBufError} `EADDRINUSE` when a server already listens there; `EEXIST` when the
   *   path is a file that is not a socket; `EINVAL` / `ENAMETOOLONG` for a bad address or
   *   backlog; `ENOENT` / `EACCES` when the directory is missing or not writable; `EMFILE`
   *   when out of descriptors.
   * @example
   * ```ts
   * const server = BufferServer.listen(path.join(os.tmpdir(), 'frames.sock'), { backlog: 16 });
   * ```
   */
  static listen(address: string, options: ListenOptions = {}): BufferServer {
    const op = 'listen';
    const addr = normalizeAddress(address, op);
    if (options === null || typeof options !== 'object') {
      throw new DmaBufError('EINVAL', `${op}: options must be an object`, { op });
    }
    const backlog = options.backlog ?? DEFAULT_BACKLOG;
    if (!Number.isInteger(backlog) || backlog < 1 || backlog > 65535) {
      throw new DmaBufError('EINVAL', `${op}: backlog must be an integer from 1 to 65535, not ${String(backlog)}`, { op });
    }
    const c = native.constants;
    const fd = native.socket(c.SOCK_SEQPACKET, true);
    let created: { path: string; dev: number; ino: number } | null = null;
    try {
      if (!isAbstract(addr)) prepareSocketPath(addr, op);
      try {
        native.bind(fd, addr);
      } catch (err) {
        const e = err as DmaBufError;
        const what = e.code === 'EADDRINUSE'
          ? (isAbstract(addr) ? `the abstract name ${displayAddress(addr)} is taken; stop that server or choose another name` : `${displayAddress(addr)} was created by someone else meanwhile`)
          : `cannot bind to ${displayAddress(addr)}: ${e.message}`;
        throw new DmaBufError(e.code ?? 'EIO', `${op}: ${what}`, { op, syscall: e.syscall, errno: e.errno, cause: err });
      }
      if (!isAbstract(addr)) {
        const st = lstatSync(addr);
        // Absolute, so that close() removes the right file even if the cwd changed meanwhile.
        created = { path: resolvePath(addr), dev: st.dev, ino: st.ino };
      }
      native.listen(fd, backlog);
      return new BufferServer(kCreate, fd, addr, created);
    } catch (err) {
      closeQuietly(fd);
      if (created) unlinkIfOurs(created);
      throw err;
    }
  }

  /**
   * The address as given (a path, or `'\0name'` for an abstract name, also when given as
   * `'@name'`): what {@link BufferChannel.connect} takes.
   *
   * @example
   * ```ts
   * const client = await BufferChannel.connect(server.address);
   * ```
   */
  get address(): string {
    return this.#address;
  }

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Waits for the next connection and returns it as a channel (the caller closes it).
   * Waiting accepts are served in order.
   *
   * @throws {DmaBufError} `EPIPE` when the server is (or gets) closed; `EINTR` when
   *   `options.signal` aborts the wait; `EMFILE` when out of descriptors (the connection
   *   stays queued for a later accept).
   * @example
   * ```ts
   * const channel = await server.accept({ signal: AbortSignal.timeout(30_000) });
   * ```
   */
  async accept(options: AcceptOptions = {}): Promise<BufferChannel> {
    const op = 'accept';
    const signal = checkSignal(options, op);
    if (this.#closed) throw this.#closedError(op);
    if (signal?.aborted) throw abortError(op, signal, 'before waiting for a connection');
    return new Promise<BufferChannel>((resolve, reject) => {
      const waiter: AcceptWaiter = { resolve, reject, signal, onAbort: undefined };
      if (signal) {
        waiter.onAbort = () => {
          const i = this.#waiters.indexOf(waiter);
          if (i < 0) return;
          this.#waiters.splice(i, 1);
          reject(abortError(op, signal, 'while waiting for a connection; none was consumed'));
          this.#guard(() => {});
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      this.#waiters.push(waiter);
      this.#guard(() => this.#drain());
    });
  }

  /**
   * Iterates over incoming connections until the server is closed.
   *
   * @example
   * ```ts
   * for await (const channel of server) handle(channel);
   * ```
   */
  [Symbol.asyncIterator](): AsyncGenerator<BufferChannel, void, undefined> {
    return untilClosed(() => this.accept());
  }

  /**
   * Stops listening (idempotent): closes the watcher, then the socket, and removes the socket
   * file it created (unless someone replaced it meanwhile). Waiting accepts reject with
   * `EPIPE`. Channels already accepted stay open.
   *
   * @example
   * ```ts
   * server.close();
   * ```
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#poll) {
      try {
        native.pollClose(this.#poll);
      } catch {
        // already closed
      }
      this.#poll = null;
    }
    for (const w of this.#waiters.splice(0)) this.#settle(w, this.#closedError('accept'));
    try {
      closeOwned(this.#fd);
    } catch {
      // gone either way
    }
    this.#fd = -1;
    if (this.#created) unlinkIfOurs(this.#created);
    this.#created = null;
  }

  /** Closes the server ({@link close}); for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  #closedError(op: string): DmaBufError {
    return new DmaBufError('EPIPE', `${op}: the server on ${displayAddress(this.#address)} was closed`, { op });
  }

  #settle(w: AcceptWaiter, result: BufferChannel | DmaBufError): void {
    if (w.signal && w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
    if (result instanceof DmaBufError) w.reject(result);
    else w.resolve(result);
  }

  /** Accepts pending connections for the waiting accepts. */
  #drain(): void {
    while (this.#waiters.length > 0 && !this.#closed) {
      let fd: number;
      try {
        fd = native.accept(this.#fd, false);
      } catch (err) {
        if (DmaBufError.is(err, 'EAGAIN')) return;
        if (DmaBufError.is(err, 'ECONNABORTED') || DmaBufError.is(err, 'EINTR')) continue;
        const e = err as DmaBufError;
        const what = e.code === 'EMFILE' || e.code === 'ENFILE'
          ? 'out of descriptors; the connection stays queued. Close descriptors you no longer need or raise the limit (ulimit -n)'
          : 'accept failed';
        this.#settle(this.#waiters.shift()!, new DmaBufError(e.code ?? 'EIO', `accept: ${what}: ${e.message}`, { op: 'accept', syscall: e.syscall, errno: e.errno, cause: err }));
        continue;
      }
      let ch: BufferChannel;
      try {
        ch = BufferChannel.fromFd(fd);
      } catch (err) {
        closeQuietly(fd);
        this.#settle(this.#waiters.shift()!, err instanceof DmaBufError ? err : new DmaBufError('EIO', String(err), { op: 'accept', cause: err }));
        continue;
      }
      this.#settle(this.#waiters.shift()!, ch);
    }
  }

  #guard(fn: () => void): void {
    try {
      fn();
      this.#updatePoll();
    } catch (err) {
      const e = err instanceof DmaBufError ? err : new DmaBufError('EIO', `accept: unexpected failure: ${String(err)}`, { op: 'accept', cause: err });
      for (const w of this.#waiters.splice(0)) this.#settle(w, e);
      try {
        this.#updatePoll();
      } catch {
        // nothing waits any more
      }
    }
  }

  #updatePoll(): void {
    if (this.#closed) return;
    const want = this.#waiters.length > 0;
    if (want === this.#watching) return;
    const c = native.constants;
    if (this.#poll === null) {
      this.#poll = native.pollStart(this.#fd, c.UV_READABLE, (status) => {
        if (this.#closed) return;
        if (status < 0) this.#watching = false; // libuv stopped the watcher: re-arm below
        this.#guard(() => this.#drain());
      });
    } else {
      native.pollUpdate(this.#poll, want ? c.UV_READABLE : 0);
    }
    native.pollRef(this.#poll, want);
    this.#watching = want;
  }
}

function unlinkIfOurs(created: { path: string; dev: number; ino: number }): void {
  try {
    const st = lstatSync(created.path);
    if (st.isSocket() && st.dev === created.dev && st.ino === created.ino) unlinkSync(created.path);
  } catch {
    // already gone, or not ours to remove
  }
}
