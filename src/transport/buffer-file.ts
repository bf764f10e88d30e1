/**
 * The buffer's file: the kernel object whose descriptors carry a buffer's lifetime.
 *
 * A buffer's file is one end of a `SOCK_SEQPACKET` socketpair; the exporter keeps the other
 * end, the *service end*. Every descriptor of the file (a `dup`, a copy inherited by a child,
 * a copy in flight in a socket message) holds the same open file description, so the kernel
 * counts the references for us, across processes. When the last one is closed, the service end
 * reads end-of-file: that is how the exporter learns that nobody holds the buffer any more.
 * Messages written to the file arrive at the service end; only the exporter reads them.
 *
 * This module knows nothing of buffers.
 *
 * @module
 */
import { native, own, closeOwned, type PollHandle } from '../native/binding.js';
import { DmaBufError } from '../core/errors.js';

/** The key of a file from its `fstat`: `dev:ino`, the same for every descriptor of it. */
export function statKey(st: { dev: bigint; ino: bigint }): string {
  return `${st.dev}:${st.ino}`;
}

/** A key identifying an open file (a socket: its inode) in this machine: `dev:ino`. */
export function fileKey(fd: number): string {
  return statKey(native.fstat(fd));
}

/** What {@link BufferFile.watch} reports. */
export interface BufferFileEvents {
  /** The last descriptor of the file, in every process, was closed. Called once. */
  onEof(): void;
  /** A message arrived at the service end (with any descriptors; the callee owns them). */
  onMessage?(data: Buffer, fds: number[], flags: number): void;
}

/** Largest message the service end reads at once. */
export const SERVICE_MAX_MESSAGE = 64 * 1024;
/** Most descriptors the service end accepts in one message; extra ones are closed. */
export const SERVICE_MAX_FDS = 8;

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
    try {
      own(fileFd);
      own(serviceFd);
      return new BufferFile(fileFd, serviceFd);
    } catch (err) {
      closeOwned(fileFd);
      closeOwned(serviceFd);
      throw err;
    }
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
    if (this.#poll || this.#serviceFd < 0) return;
    const c = native.constants;
    this.#events = events;
    this.#poll = native.pollStart(this.#serviceFd, c.UV_READABLE | c.UV_DISCONNECT, () => this.#onReady());
  }

  /** Tests end-of-file now, without waiting for the event loop. */
  checkEof(): boolean {
    if (this.#eof) return true;
    if (this.#fileFd >= 0 || this.#serviceFd < 0) return false;
    const c = native.constants;
    const revents = native.pollNow(this.#serviceFd, c.POLLIN | c.POLLRDHUP);
    if ((revents & (c.POLLHUP | c.POLLRDHUP)) === 0) return false;
    this.#setEof(false);
    return true;
  }

  /** Closes everything (idempotent). */
  close(): void {
    if (this.#poll) {
      native.pollClose(this.#poll);
      this.#poll = null;
    }
    if (this.#fileFd >= 0) {
      closeOwned(this.#fileFd);
      this.#fileFd = -1;
    }
    if (this.#serviceFd >= 0) {
      closeOwned(this.#serviceFd);
      this.#serviceFd = -1;
    }
  }

  /** Records end-of-file; `notify` calls onEof (not when the caller asked synchronously). */
  #setEof(notify: boolean): void {
    if (this.#eof) return;
    this.#eof = true;
    if (this.#poll) {
      native.pollClose(this.#poll);
      this.#poll = null;
    }
    if (notify) this.#events?.onEof();
  }

  /**
   * Reads pending messages (at most 256 per wake-up, so that a flood through one buffer's file
   * cannot starve the event loop; the rest wait for the next wake-up); returns false once
   * end-of-file is reached.
   */
  #drain(): boolean {
    const c = native.constants;
    for (let n = 0; n < 256; n++) {
      if (this.#serviceFd < 0) return false;
      let r;
      r = native.recvmsg(this.#serviceFd, SERVICE_MAX_MESSAGE, SERVICE_MAX_FDS, c.MSG_DONTWAIT, true);
      if (r === null) return true; // EAGAIN: nothing more for now
      if (r.data.length === 0 && r.fds.length === 0) {
        // Zero bytes is end-of-file only when the peer is gone for good (POLLHUP); otherwise
        // it was an empty message, which the protocol never sends: ignore it. At end-of-file
        // whatever is still queued came from holders that are gone; closing the service end
        // frees it (descriptors in flight included).
        const revents = native.pollNow(this.#serviceFd, c.POLLIN | c.POLLRDHUP);
        if ((revents & (c.POLLHUP | c.POLLRDHUP)) !== 0) return false;
        continue;
      }
      const handler = this.#events?.onMessage;
      if (handler) {
        handler(r.data, r.fds, r.flags);
      } else {
        for (const fd of r.fds) native.close(fd);
      }
    }
    return true;
  }

  #onReady(): void {
    if (this.#eof || this.#serviceFd < 0) return;
    if (!this.#drain()) this.#setEof(true);
  }
}
