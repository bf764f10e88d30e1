/**
 * A connection: one private `SOCK_SEQPACKET` channel between an importer and an exporter's
 * service, carrying protocol messages (and descriptors) both ways, driven by the event loop
 * (uv_poll; never blocking it), with backpressure and request/reply correlation.
 *
 * Knows nothing of buffers.
 *
 * @module
 */
import { native, own, closeOwned, type PollHandle } from '../native/binding.js';
import { DmaBufError } from '../core/errors.js';
import { MAX_BATCH, MAX_MESSAGE, MsgType, decode, encode, typeName, type Message, type MsgTypeValue } from './protocol.js';

/** Most descriptors one message may carry; extra ones are closed on receipt. */
export const MAX_FDS_PER_MESSAGE = 4;
/** Most messages queued for a peer that does not read; beyond it the connection is closed. */
export const MAX_QUEUED_SENDS = 4096;

/** What a connection reports to its owner. */
export interface ConnectionHandlers {
  /** A well-formed message that is not a reply to one of our requests. The callee owns `fds`. */
  onMessage(msg: Message, fds: number[]): void;
  /** A malformed message (its descriptors are already closed); `id` when the header had one. */
  onBadMessage?(err: DmaBufError, id: number | undefined, kind: 'malformed' | 'unexpected-reply'): void;
  /** The connection closed (peer gone, or closed by us); called once. */
  onClose?(reason: DmaBufError): void;
}

interface PendingSend {
  data: Buffer;
  fds: number[];
  resolve: () => void;
  reject: (err: DmaBufError) => void;
}

interface PendingRequest {
  type: MsgTypeValue;
  resolve: (reply: { msg: Message; fds: number[] }) => void;
  reject: (err: DmaBufError) => void;
}

/** Options of {@link Connection.request}. */
export interface RequestOptions {
  /** Aborting it rejects the request with `EINTR`; the peer's answer is then dropped or given to `onLateReply`. */
  signal?: AbortSignal | undefined;
  /** Takes a reply that comes after `signal` aborted (to undo what the peer did). */
  onLateReply?: ((reply: Reply) => void) | undefined;
  /** Told the id of a request that `signal` aborted (to tell the peer to stop). */
  onAbort?: ((id: number) => void) | undefined;
  /** Descriptors to send with the request (the caller keeps its own). */
  fds?: number[] | undefined;
}

/** A reply to a request: the message and the descriptors it carried (owned by the caller). */
export interface Reply {
  msg: Message;
  fds: number[];
}

function peerGone(what: string): DmaBufError {
  return new DmaBufError('EPIPE', `${what}: the peer closed the connection`, { op: what });
}

/** One end of a connection. Owns its descriptor. */
export class Connection {
  #fd: number;
  #poll: PollHandle | null;
  #handlers: ConnectionHandlers;
  #queue: PendingSend[] = [];
  #pending = new Map<number, PendingRequest>();
  #nextId = 1;
  #closed = false;
  #keepAlive = false;
  /** The events the watcher watches now, and whether it keeps the loop alive. */
  #pollEvents = -1;
  #pollRef: boolean | null = null;
  #closeReason: DmaBufError | null = null;
  /** Messages rejected as malformed (for tests and introspection). */
  badMessages = 0;
  /** Notifications not sent yet (see {@link notify}), and the immediate that sends them at the end of the turn. */
  #notes: [MsgTypeValue, Record<string, unknown>][] = [];
  #notesTimer: NodeJS.Immediate | null = null;

  /** Takes ownership of `fd`, a connected SEQPACKET socket of this process only. */
  constructor(fd: number, handlers: ConnectionHandlers) {
    this.#fd = own(fd);
    this.#handlers = handlers;
    const c = native.constants;
    this.#poll = native.pollStart(fd, c.UV_READABLE | c.UV_DISCONNECT, (status, events) => this.#onReady(status, events));
    this.#pollEvents = c.UV_READABLE | c.UV_DISCONNECT;
    this.#pollRef = false; // pollStart leaves the watcher unref'd
  }

  /** Whether the connection is closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /** The descriptor (for introspection). */
  get fd(): number {
    return this.#fd;
  }

  /** SO_PEERCRED of the peer. */
  peer(): { pid: number; uid: number; gid: number } {
    return native.peerCred(this.#fd);
  }

  /** Why the connection closed, or null while open. */
  get closeReason(): DmaBufError | null {
    return this.#closeReason;
  }

  /**
   * Sends a message (the descriptors are duplicated by the kernel; the caller keeps its own).
   * Waits when the peer's queue is full.
   *
   * @throws {DmaBufError} `EPIPE` when the connection is closed; `EMSGSIZE` for a message too large.
   */
  send(type: MsgTypeValue, id: number, body: Record<string, unknown> = {}, fds: number[] = []): Promise<void> {
    if (this.#closed) return Promise.reject(this.#closeReason ?? peerGone('send'));
    // Notifications made before this message leave before it.
    if (this.#notes.length > 0) this.#flushNotes();
    // Never throws: every failure is a rejection. Callers chain `.catch()`, and an exception
    // thrown here from a poll callback (answering a bad message from a peer that already
    // closed, EPIPE) would be uncaught and end the process.
    let data: Buffer;
    try {
      data = encode(type, id, body);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#sendData(data, fds);
  }

  /**
   * Sends a notification (id 0, never answered) in order with every other message. Pending
   * notifications leave together, as one BATCH record (one system call, one wake-up of the
   * peer), at the first of:
   * - a request or a reply on this connection (they leave first, keeping the order of calls);
   * - the end of the event loop's turn (`setImmediate`);
   * - `MAX_BATCH` pending notifications.
   *
   * Not at once: what the program sends in the same turn (an acknowledgement to the producer
   * on another socket, after its unmap, detach and put) reaches the peer first, so that its
   * round trip does not wait for the bookkeeping.
   * Never throws and never waits; nothing is sent once the connection is closed.
   */
  notify(type: MsgTypeValue, body: Record<string, unknown>): void {
    if (this.#closed) return;
    this.#notes.push([type, body]);
    if (this.#notes.length >= MAX_BATCH) {
      this.#flushNotes();
    } else if (!this.#notesTimer) {
      this.#notesTimer = setImmediate(() => {
        this.#notesTimer = null;
        this.#flushNotes();
      });
    }
  }

  /** Drops the end-of-turn send of the notifications (they left, or never will). */
  #cancelNotesTimer(): void {
    if (!this.#notesTimer) return;
    clearImmediate(this.#notesTimer);
    this.#notesTimer = null;
  }

  /** Sends the pending notifications now, as one message (a BATCH when there are several). */
  #flushNotes(): void {
    // Sent now: the end of the turn has nothing left to send.
    this.#cancelNotesTimer();
    const notes = this.#notes;
    if (notes.length === 0 || this.#closed) return;
    this.#notes = [];
    let data: Buffer;
    try {
      data = notes.length === 1 ? encode(notes[0]![0], 0, notes[0]![1]) : encode(MsgType.BATCH, 0, { messages: notes });
    } catch {
      return; // cannot happen: MAX_BATCH notifications of a few numbers each are far below MAX_MESSAGE
    }
    this.#sendData(data, []).catch(() => {});
  }

  /** Sends an encoded message now or queues it (with copies of `fds`) behind the queue. */
  #sendData(data: Buffer, fds: number[]): Promise<void> {
    let queued: number[] = [];
    try {
      if (this.#queue.length === 0 && this.#trySend(data, fds)) return Promise.resolve();
      if (this.#queue.length >= MAX_QUEUED_SENDS) {
        const err = new DmaBufError('EAGAIN', `send: the peer stopped reading (${MAX_QUEUED_SENDS} messages queued); closing the connection`, { op: 'send' });
        this.close(err);
        return Promise.reject(err);
      }
      // The caller keeps (and may close) its descriptors: a queued message sends copies.
      for (const fd of fds) queued.push(own(native.dup(fd, true)));
    } catch (err) {
      closeOwnedAll(queued);
      return Promise.reject(err);
    }
    const copies = queued;
    queued = [];
    return new Promise<void>((resolve, reject) => {
      const done = (): void => closeOwnedAll(copies);
      this.#queue.push({
        data,
        fds: copies,
        resolve: () => { done(); resolve(); },
        reject: (err) => { done(); reject(err); },
      });
      this.#updatePoll();
    });
  }

  /**
   * Sends a request and waits for the REPLY or ERROR with its id.
   *
   * @throws {DmaBufError} the peer's error (its code and message); `EPIPE` when the connection
   *   closes first; `EINTR` when `signal` aborts (a late reply is then handed to `onLateReply`,
   *   and `onAbort` is told the request's id, to tell the peer).
   */
  request(type: MsgTypeValue, body: Record<string, unknown>, options: RequestOptions = {}): Promise<Reply> {
    if (this.#closed) return Promise.reject(this.#closeReason ?? peerGone(typeName(type)));
    const id = this.#nextId;
    this.#nextId = this.#nextId >= 0xfffffffe ? 1 : this.#nextId + 1;
    const { signal, onLateReply, onAbort: aborted, fds = [] } = options;
    return new Promise<Reply>((resolve, reject) => {
      const entry: PendingRequest = { type, resolve, reject };
      this.#pending.set(id, entry);
      this.#updatePoll();
      if (signal) {
        const onAbort = (): void => {
          // Keep the id pending: the peer will answer, and the answer must be undone.
          entry.resolve = (reply) => { onLateReply ? onLateReply(reply) : closeAll(reply.fds); };
          entry.reject = () => {};
          reject(new DmaBufError('EINTR', `${typeName(type).toLowerCase()}: interrupted by an aborted signal`, { op: typeName(type).toLowerCase(), cause: signal.reason }));
          aborted?.(id);
        };
        if (signal.aborted) { onAbort(); } else { signal.addEventListener('abort', onAbort, { once: true }); }
        const settle = <T>(fn: (v: T) => void) => (v: T): void => { signal.removeEventListener('abort', onAbort); fn(v); };
        entry.resolve = settle(entry.resolve);
        entry.reject = settle(entry.reject);
      }
      this.send(type, id, body, fds).catch((err: DmaBufError) => {
        if (this.#pending.get(id) === entry) {
          this.#pending.delete(id);
          this.#updatePoll();
          entry.reject(err);
        }
      });
    });
  }

  /**
   * Waits for the REPLY or ERROR with `id` to a request that was sent by other means (the
   * HELLO goes through the buffer's file, its answer comes on this connection).
   */
  awaitReply(type: MsgTypeValue, id: number): Promise<Reply> {
    if (this.#closed) return Promise.reject(this.#closeReason ?? peerGone(typeName(type)));
    return new Promise<Reply>((resolve, reject) => {
      this.#pending.set(id, { type, resolve, reject });
      this.#updatePoll();
    });
  }

  /** Closes the connection (idempotent): pending requests and sends fail with `reason`. */
  close(reason: DmaBufError = new DmaBufError('EPIPE', 'connection closed', { op: 'close' })): void {
    if (this.#closed) return;
    // What this side said before closing still reaches the peer when the socket takes it.
    if (this.#notes.length > 0 && this.#queue.length === 0) this.#flushNotes();
    this.#notes = [];
    this.#cancelNotesTimer();
    this.#closed = true;
    this.#closeReason = reason;
    if (this.#poll) {
      native.pollClose(this.#poll);
      this.#poll = null;
    }
    closeOwned(this.#fd);
    this.#fd = -1;
    for (const s of this.#queue.splice(0)) s.reject(reason);
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.reject(reason);
    this.#handlers.onClose?.(reason);
  }

  /** Sends now if the socket takes it; false on EAGAIN. Fails the connection on other errors. */
  #trySend(data: Buffer, fds: number[]): boolean {
    const c = native.constants;
    try {
      return native.sendmsg(this.#fd, data, fds, c.MSG_DONTWAIT, true) >= 0;
    } catch (err) {
      if (DmaBufError.is(err, 'EAGAIN')) return false;
      const e = DmaBufError.is(err, 'EPIPE') || DmaBufError.is(err, 'ECONNRESET') ? peerGone('send') : (err as DmaBufError);
      // Close after this call returns, so that callers see the rejection of their own send.
      queueMicrotask(() => this.close(e));
      throw e;
    }
  }

  /**
   * Keeps the event loop alive while `on` (an exporter serving importers that hold
   * attachments). Otherwise the connection keeps it alive only while someone waits on it.
   */
  keepAlive(on: boolean): void {
    this.#keepAlive = on;
    this.#updatePoll();
  }

  #updatePoll(): void {
    if (!this.#poll) return;
    const c = native.constants;
    // Only what changed: each re-arm is an epoll_ctl.
    const events = c.UV_READABLE | c.UV_DISCONNECT | (this.#queue.length > 0 ? c.UV_WRITABLE : 0);
    if (events !== this.#pollEvents) {
      native.pollUpdate(this.#poll, events);
      this.#pollEvents = events;
    }
    const ref = this.#keepAlive || this.#queue.length > 0 || this.#pending.size > 0;
    if (ref !== this.#pollRef) {
      native.pollRef(this.#poll, ref);
      this.#pollRef = ref;
    }
  }

  #onReady(status: number, events: number): void {
    if (this.#closed) return;
    const c = native.constants;
    if (status < 0) {
      // libuv reports POLLERR as UV_EBADF and stops watching. On a Unix socket POLLERR means
      // the peer closed with messages of ours unread (ECONNRESET): read what it sent before
      // it went; the read then reports it gone (EPIPE), as any other end of the peer does.
      for (let n = 0; n < 64 && !this.#closed; n++) this.#readAll();
      if (!this.#closed) this.close(new DmaBufError('EIO', `connection: poll failed with status ${status}`, { op: 'poll' }));
      return;
    }
    if (events & c.UV_WRITABLE) this.#flush();
    if (!this.#closed && events & (c.UV_READABLE | c.UV_DISCONNECT)) this.#readAll();
  }

  #flush(): void {
    while (this.#queue.length > 0 && !this.#closed) {
      const s = this.#queue[0]!;
      let sent: boolean;
      try {
        sent = this.#trySend(s.data, s.fds);
      } catch (err) {
        this.#queue.shift();
        s.reject(err as DmaBufError);
        return;
      }
      if (!sent) break;
      this.#queue.shift();
      s.resolve();
    }
    this.#updatePoll();
  }

  #readAll(): void {
    const c = native.constants;
    // Bounded per wake-up so that one busy peer cannot starve the event loop.
    for (let n = 0; n < 256 && !this.#closed; n++) {
      let r;
      try {
        r = native.recvmsg(this.#fd, MAX_MESSAGE + 1, MAX_FDS_PER_MESSAGE, c.MSG_DONTWAIT, true);
        if (r === null) return; // EAGAIN: nothing more for now
      } catch (err) {
        this.close(DmaBufError.is(err, 'ECONNRESET') ? peerGone('receive') : (err as DmaBufError));
        return;
      }
      if (r.data.length === 0 && r.fds.length === 0) {
        const revents = native.pollNow(this.#fd, c.POLLIN | c.POLLRDHUP);
        if (revents & (c.POLLHUP | c.POLLRDHUP)) {
          this.close(peerGone('receive'));
          return;
        }
        this.badMessages += 1;
        this.#handlers.onBadMessage?.(new DmaBufError('EPROTO', 'protocol: an empty message', { op: 'protocol' }), undefined, 'malformed');
        continue;
      }
      this.#receive(r.data, r.fds, r.flags);
    }
  }

  #receive(data: Buffer, fds: number[], flags: number): void {
    const c = native.constants;
    let msg: Message;
    const headerId = data.length >= 12 ? data.readUInt32LE(8) : undefined;
    try {
      if (flags & c.MSG_CTRUNC) {
        // The kernel installs descriptors until the control buffer is full (the peer sent
        // more than we accept) or until this process runs out of them (EMFILE): a full
        // buffer tells the two apart.
        if (fds.length >= MAX_FDS_PER_MESSAGE) {
          throw new DmaBufError('EPROTO', `protocol: a message carried more than ${MAX_FDS_PER_MESSAGE} descriptors (MSG_CTRUNC); they were all closed`, { op: 'protocol' });
        }
        throw new DmaBufError('EMFILE', 'protocol: descriptors of a message were dropped (MSG_CTRUNC): this process is out of descriptors (EMFILE)', { op: 'protocol' });
      }
      if (flags & c.MSG_TRUNC || data.length > MAX_MESSAGE) {
        throw new DmaBufError('EPROTO', `protocol: a message larger than ${MAX_MESSAGE} bytes was truncated`, { op: 'protocol' });
      }
      msg = decode(data);
    } catch (err) {
      closeAll(fds);
      this.badMessages += 1;
      // A reply that lost its descriptors may still say what was done for us (a map the
      // exporter made): keep it with the error, so that the requester can undo it.
      if (flags & (c.MSG_CTRUNC)) {
        try {
          lostReplies.set(err as object, decode(data));
        } catch {
          // nothing readable
        }
      }
      const e = err as DmaBufError;
      const pending = headerId !== undefined ? this.#pending.get(headerId) : undefined;
      if (pending && headerId !== undefined) {
        this.#pending.delete(headerId);
        this.#updatePoll();
        pending.reject(e);
      } else {
        this.#handlers.onBadMessage?.(e, headerId, 'malformed');
      }
      return;
    }
    if (msg.type === MsgType.REPLY || msg.type === MsgType.ERROR) {
      const pending = this.#pending.get(msg.id);
      if (!pending) {
        // A reply to nothing we asked: out of order or forged. Drop it and its descriptors.
        closeAll(fds);
        this.badMessages += 1;
        this.#handlers.onBadMessage?.(new DmaBufError('EPROTO', `protocol: a ${typeName(msg.type)} for request ${msg.id}, which is not pending`, { op: 'protocol' }), undefined, 'unexpected-reply');
        return;
      }
      this.#pending.delete(msg.id);
      this.#updatePoll();
      if (msg.type === MsgType.ERROR) {
        closeAll(fds);
        pending.reject(remoteError(msg, pending.type));
      } else {
        pending.resolve({ msg, fds });
      }
      return;
    }
    this.#handlers.onMessage(msg, fds);
  }
}

const lostReplies = new WeakMap<object, Message>();

/** The reply an error stands for, when the reply arrived but lost its descriptors. */
export function lostReply(err: unknown): Message | undefined {
  return typeof err === 'object' && err !== null ? lostReplies.get(err) : undefined;
}

/** The error an ERROR message carries, as a {@link DmaBufError} of the same code. */
export function remoteError(msg: Message, requestType: number): DmaBufError {
  const op = typeName(requestType).toLowerCase();
  const code = typeof msg.body.code === 'string' && /^E[A-Z0-9]{1,15}$/.test(msg.body.code) ? msg.body.code : 'EPROTO';
  const text = typeof msg.body.message === 'string' ? msg.body.message.slice(0, 1024) : 'the exporter failed without a message';
  return new DmaBufError(code, `${text} (answered by the exporter)`, { op });
}

/** Closes descriptors registered with `own`, ignoring errors. */
function closeOwnedAll(fds: number[]): void {
  for (const fd of fds) {
    try {
      closeOwned(fd);
    } catch {
      // already closed
    }
  }
}

/** Closes descriptors, ignoring errors (used for unexpected descriptors). */
export function closeAll(fds: number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // already closed
    }
  }
}
