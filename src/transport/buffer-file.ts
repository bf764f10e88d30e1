/**
 * The buffer's file: the kernel object whose descriptors carry a buffer's lifetime.
 *
 * A buffer's file is one end of a `SOCK_SEQPACKET` socketpair; the exporter keeps the other
 * end, the *service end*. Every descriptor of the file (a `dup`, a copy inherited by a child,
 * a copy in flight in a socket message) holds the same open file description, so the kernel
 * counts the references for us, across processes. When the last one is closed, the service end
 * reads end-of-file: that is how the exporter learns that nobody holds the buffer any more.
 * Messages written to the file arrive at the service end; only the exporter reads them, each
 * with its sender's kernel-verified credentials (`SO_PASSCRED`).
 *
 * A holder may also call `shutdown(2)` on its descriptor, which acts on the socket all holders
 * share: the service end then reads end-of-file too, while the file is still open. The
 * exporter tells the two apart with {@link fileState} (see file-liveness.ts). After a
 * shutdown nobody can send into the file any more: the service end stops reading it and waits
 * for the last close with an edge-triggered epoll of the service end with an empty event mask
 * (one descriptor per shut-down file, no timer, no busy loop: it reports only the state
 * changes of the service end, the last close among them).
 *
 * This module knows nothing of buffers.
 *
 * @module
 */
import { native, own, closeOwned, type PeerCred, type PollHandle } from '../native/binding.js';
import { DmaBufError } from '../core/errors.js';
import { fileState, queueCanary, type FileState } from './file-liveness.js';

/** The key of a file from its `fstat`: `dev:ino`, the same for every descriptor of it. */
export function statKey(st: { dev: bigint; ino: bigint }): string {
  return `${st.dev}:${st.ino}`;
}

/** A key identifying an open file (a socket: its inode) in this machine: `dev:ino`. */
export function fileKey(fd: number): string {
  return native.statKey(fd);
}

/** What {@link BufferFile.watch} reports. */
export interface BufferFileEvents {
  /** The last descriptor of the file, in every process, was closed. Called once. */
  onEof(): void;
  /**
   * A message arrived at the service end (with any descriptors; the callee owns them), and
   * its sender's credentials as the kernel recorded them (null if the message had none).
   */
  onMessage?(data: Buffer, fds: number[], flags: number, cred: PeerCred | null): void;
  /** A holder shut the file down: nothing can be sent through it any more. Called once. */
  onShutDown?(): void;
}

/** Largest message the service end reads at once. */
export const SERVICE_MAX_MESSAGE = 64 * 1024;
/** Most descriptors the service end accepts in one message; extra ones are closed. */
export const SERVICE_MAX_FDS = 8;
/**
 * Shortest time between two checks of a shut-down file that may need the kernel's socket
 * diagnostics (which walk every Unix socket), in milliseconds; also the first retry delay.
 */
export const SHUTDOWN_RECHECK_MS = 20;
/** Longest delay between retries of a check that could not be made, in milliseconds. */
const SHUTDOWN_RECHECK_MAX_MS = 1000;

/**
 * The exporter's side of a buffer's file: the file end (held while the exporter itself
 * references the buffer) and the service end (watched for messages and end-of-file).
 */
export class BufferFile {
  /** The file end, or -1 once the exporter dropped its own reference. */
  #fileFd: number;
  /** The service end, or -1 once closed. */
  #serviceFd: number;
  #poll: PollHandle | null = null;
  #eof = false;
  #events: BufferFileEvents | null = null;
  /** Whether the canary sits in the file's queue (see file-liveness.ts). */
  #canary = false;
  #shutDown = false;
  /** After end-of-file without the last close: the epoll watching for it, and its poll. */
  #hupFd = -1;
  #hupPoll: PollHandle | null = null;
  #recheckTimer: NodeJS.Timeout | null = null;
  #recheckDelay = SHUTDOWN_RECHECK_MS;
  #lastCheck = 0;
  /** `dev:ino` of the file end: identical for every descriptor of the file. */
  readonly key: string;

  private constructor(fileFd: number, serviceFd: number) {
    this.#fileFd = fileFd;
    this.#serviceFd = serviceFd;
    this.key = fileKey(fileFd);
  }

  /** Creates a new file (a socketpair, both ends close-on-exec). */
  static create(): BufferFile {
    const c = native.constants;
    const [fileFd, serviceFd] = native.socketpair(c.SOCK_SEQPACKET, false);
    let file: BufferFile;
    try {
      own(fileFd);
      own(serviceFd);
      file = new BufferFile(fileFd, serviceFd);
    } catch (err) {
      closeOwned(fileFd);
      closeOwned(serviceFd);
      throw err;
    }
    // The canary first: a socket with SO_PASSCRED that sends is autobound to a name.
    file.#canary = queueCanary(serviceFd);
    try {
      native.setPassCred(serviceFd, true);
    } catch {
      // messages then arrive without credentials (cred null)
    }
    return file;
  }

  /** The exporter's own descriptor of the file (-1 after {@link dropFile}). */
  get fileFd(): number {
    return this.#fileFd;
  }

  /** The service end (-1 after {@link close}). */
  get serviceFd(): number {
    return this.#serviceFd;
  }

  /** Whether end-of-file was seen: no descriptor of the file remains anywhere. */
  get eof(): boolean {
    return this.#eof;
  }

  /** Whether a holder shut the file down (`shutdown(2)`): nothing can be sent through it. */
  get shutDown(): boolean {
    return this.#shutDown;
  }

  /** Re-takes the exporter's own reference from a descriptor of the same file. */
  adoptFile(fd: number): void {
    if (this.#fileFd >= 0) return;
    this.#fileFd = own(native.dup(fd, true));
  }

  /** A new descriptor of the file, owned by the caller. */
  dup(cloexec: boolean): number {
    const fd = this.#fileFd;
    if (fd < 0) throw new DmaBufError('EINVAL', 'fd: the buffer holds no reference to its file', { op: 'fd' });
    return native.dup(fd, cloexec);
  }

  /** Drops the exporter's own descriptor of the file; returns whether end-of-file is now seen. */
  dropFile(): boolean {
    if (this.#fileFd >= 0) {
      closeOwned(this.#fileFd);
      this.#fileFd = -1;
    }
    return this.checkEof();
  }

  /** Starts watching the service end (unref'd: it does not keep the event loop alive). */
  watch(events: BufferFileEvents): void {
    if (this.#poll || this.#hupPoll || this.#serviceFd < 0) return;
    const c = native.constants;
    this.#events = events;
    this.#poll = native.pollStart(this.#serviceFd, c.UV_READABLE | c.UV_DISCONNECT, (status) => this.#onReady(status));
  }

  /** Tests end-of-file now, without waiting for the event loop. */
  checkEof(): boolean {
    if (this.#eof) return true;
    if (this.#fileFd >= 0 || this.#serviceFd < 0) return false;
    const state = this.#state();
    if (state === 'closed') {
      this.#setEof(false);
      return true;
    }
    if (state !== 'open') this.#awaitLastClose(state);
    return false;
  }

  /** Closes everything (idempotent). */
  close(): void {
    this.#stopWatching();
    if (this.#fileFd >= 0) {
      closeOwned(this.#fileFd);
      this.#fileFd = -1;
    }
    if (this.#serviceFd >= 0) {
      closeOwned(this.#serviceFd);
      this.#serviceFd = -1;
    }
  }

  #stopWatching(): void {
    if (this.#poll) {
      native.pollClose(this.#poll);
      this.#poll = null;
    }
    if (this.#hupPoll) {
      native.pollClose(this.#hupPoll);
      this.#hupPoll = null;
    }
    if (this.#hupFd >= 0) {
      closeOwned(this.#hupFd);
      this.#hupFd = -1;
    }
    if (this.#recheckTimer) {
      clearTimeout(this.#recheckTimer);
      this.#recheckTimer = null;
    }
  }

  /** Records end-of-file; `notify` calls onEof (not when the caller asked synchronously). */
  #setEof(notify: boolean): void {
    if (this.#eof) return;
    this.#eof = true;
    this.#stopWatching();
    if (notify) this.#events?.onEof();
  }

  /** The file's state, querying the socket diagnostics at most once per SHUTDOWN_RECHECK_MS. */
  #state(): FileState {
    const now = Date.now();
    const mayQuery = now - this.#lastCheck >= SHUTDOWN_RECHECK_MS;
    const state = fileState(this.#serviceFd, this.#canary, mayQuery);
    if (mayQuery) this.#lastCheck = now;
    return state;
  }

  /**
   * End-of-file without the last close (a holder's shutdown), or not known yet: stop reading
   * the service end (it reads end-of-file forever) and wait for the last close. The watch is
   * armed before anything else: an epoll reports a hang-up already present when it is added,
   * so a last close that came after the check is never missed.
   */
  #awaitLastClose(state: FileState): void {
    if (state === 'shut-down' && !this.#shutDown) {
      this.#shutDown = true;
      this.#events?.onShutDown?.();
    }
    if (this.#poll) {
      native.pollClose(this.#poll);
      this.#poll = null;
    }
    if (!this.#hupPoll) {
      try {
        this.#hupFd = own(native.hupWatch(this.#serviceFd));
        this.#hupPoll = native.pollStart(this.#hupFd, native.constants.UV_READABLE, () => this.#onHup());
      } catch {
        // Out of descriptors, say: check again later, with a timer instead.
        if (this.#hupFd >= 0) closeOwned(this.#hupFd);
        this.#hupFd = -1;
        state = 'retry';
      }
    }
    if (state === 'retry') {
      this.#scheduleRecheck();
    } else {
      this.#recheckDelay = SHUTDOWN_RECHECK_MS;
    }
  }

  #scheduleRecheck(): void {
    if (this.#recheckTimer) return;
    const delay = this.#recheckDelay;
    this.#recheckDelay = Math.min(delay * 2, SHUTDOWN_RECHECK_MAX_MS);
    this.#recheckTimer = setTimeout(() => {
      this.#recheckTimer = null;
      this.#recheck();
    }, delay);
    this.#recheckTimer.unref();
  }

  #onHup(): void {
    if (this.#hupFd < 0) return;
    try {
      native.hupWatchTake(this.#hupFd);
    } catch {
      // the watch is gone; the recheck below decides
    }
    this.#recheck();
  }

  #recheck(): void {
    if (this.#eof || this.#serviceFd < 0) return;
    const state = this.#state();
    if (state === 'closed') this.#setEof(true);
    else if (state !== 'open') this.#awaitLastClose(state);
  }

  /**
   * Reads pending messages (at most 256 per wake-up, so that a flood through one buffer's file
   * cannot starve the event loop; the rest wait for the next wake-up). Returns `'more'` while
   * the file is open, `'closed'` when the kernel reported the file's release (ECONNRESET: the
   * canary was still queued), `'eof'` at an end-of-file that may be a holder's shutdown.
   */
  #drain(): 'more' | 'closed' | 'eof' {
    const c = native.constants;
    for (let n = 0; n < 256; n++) {
      if (this.#serviceFd < 0) return 'closed';
      let r;
      try {
        r = native.recvmsg(this.#serviceFd, SERVICE_MAX_MESSAGE, SERVICE_MAX_FDS, c.MSG_DONTWAIT, true, true);
      } catch (err) {
        if (DmaBufError.is(err, 'ECONNRESET')) return 'closed';
        throw err;
      }
      if (r === null) return 'more'; // EAGAIN: nothing more for now
      if (r.data.length === 0 && r.fds.length === 0) {
        // Zero bytes is end-of-file only when the service end is hung up; otherwise it was an
        // empty message, which the protocol never sends: ignore it. At the last close whatever
        // is still queued came from holders that are gone; closing the service end frees it
        // (descriptors in flight included).
        const revents = native.pollNow(this.#serviceFd, c.POLLIN | c.POLLRDHUP);
        if ((revents & (c.POLLHUP | c.POLLRDHUP | c.POLLERR)) !== 0) return 'eof';
        continue;
      }
      const handler = this.#events?.onMessage;
      if (handler) {
        handler(r.data, r.fds, r.flags, r.cred ?? null);
      } else {
        for (const fd of r.fds) native.close(fd);
      }
    }
    return 'more';
  }

  #onReady(status: number): void {
    if (this.#eof || this.#serviceFd < 0) return;
    // status < 0: libuv saw POLLERR and stopped the watcher; the state below tells why
    // (reading now would consume the error that says "last close").
    const read = status < 0 ? 'eof' : this.#drain();
    if (read === 'more') return;
    const state = read === 'closed' ? 'closed' : this.#state();
    if (state === 'closed') {
      this.#setEof(true);
    } else if (state !== 'open') {
      this.#awaitLastClose(state);
    } else if (status < 0 && this.#poll) {
      // An error that was not the file's release: keep reading.
      const c = native.constants;
      native.pollUpdate(this.#poll, c.UV_READABLE | c.UV_DISCONNECT);
    }
  }
}
