/**
 * Buffer channels: send and receive buffers (a descriptor plus a little JSON metadata) over a
 * connected `AF_UNIX` `SOCK_SEQPACKET` socket with `SCM_RIGHTS`, integrated with the event
 * loop through libuv poll watchers. Nothing ever blocks the event loop; a peer that stops
 * reading makes sends wait (backpressure), never fail.
 *
 * The wire format is in `channel-wire.ts` and `docs/protocol.md` ("Buffer channels").
 *
 * @module
 */
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { native, own, closeOwned, type PollHandle, type PeerCred, type RecvResult } from '../native/binding.js';
import { DmaBuf, attachMapped } from '../core/dma-buf.js';
import { DmaBufError } from '../core/errors.js';
import { ChannelMessageType, HANDOFF_MAX_FDS, decodeChannelMessage, encodeChannelMessage, encodeHandoffMessage } from '../transport/channel-wire.js';
import { endRoute, offerHandoff, type HandoffOffer } from '../remote/handoff.js';
import { adoptHandoff, declineHandoff, withMeta, type AdoptedHandoff, type HandoffMap } from '../remote/importer.js';
import { isThenable, type Now } from '../core/now.js';
import type { DmaBufAttachment } from '../core/attachment.js';
import type { SgTable } from '../core/sg-table.js';
import { abortError, checkFd, checkSignal, displayAddress, normalizeAddress, untilClosed } from '../transport/unix-util.js';

/** Bytes a receive reads at most; a longer message is truncated and rejected (`EPROTO`). */
export const CHANNEL_RECV_MAX_BYTES = 64 * 1024;
/** Descriptors a receive accepts at most; a message carries exactly one, extra ones are closed. */
export const CHANNEL_RECV_MAX_FDS = 4;

/** Options of {@link BufferChannel.send}, {@link BufferChannel.receive} and the like. */
export interface ChannelOperationOptions {
  /**
   * Aborts the operation while it waits (a queued send, a receive waiting for a message):
   * it rejects with `EINTR` (`cause` is the signal's reason) and nothing was sent or consumed.
   */
  signal?: AbortSignal;
}

/** Options of {@link BufferChannel.connect}. */
export interface ConnectOptions {
  /** Aborts a connect that waits for the server's backlog to drain (`EINTR`). */
  signal?: AbortSignal;
}

/** Options of {@link BufferChannel.receive} and {@link BufferChannel.buffers}. */
export interface ReceiveOptions extends ChannelOperationOptions {
  /**
   * Attach this device and map the buffer with this direction before returning. When the
   * sender is the buffer's exporter, the message that carried the buffer carried the map too:
   * no request to the exporter. Otherwise it costs what `DmaBuf.getMapped` costs.
   */
  map?: HandoffMap;
}

/** What {@link BufferChannel.receive} returns. */
export interface ReceivedBuffer {
  /** The buffer, with one reference the caller puts ({@link DmaBuf.put}). */
  buffer: DmaBuf;
  /** The metadata the sender gave (parsed JSON), or `undefined` when it gave none. */
  meta: unknown;
  /** With `map`: the attachment of the device (detach it before putting the buffer). */
  attachment?: DmaBufAttachment;
  /** With `map`: the mapped table (for a CPU device, every segment has a view). */
  sgt?: SgTable;
}

/** A received message, before its descriptor becomes a buffer. */
interface RawMessage extends ReceivedFd {
  /** The exporter's hand-off offer and its descriptors, for a HANDOFF message. */
  handoff?: { body: Record<string, unknown>; fds: number[] };
}

/** What {@link BufferChannel.receiveFd} returns. */
export interface ReceivedFd {
  /** The received descriptor (close-on-exec), owned by the caller: close it. */
  fd: number;
  /** The metadata the sender gave (parsed JSON), or `undefined` when it gave none. */
  meta: unknown;
}

interface SendItem {
  data: Uint8Array;
  /** The dup this send owns; -1 once closed. */
  fd: number;
  /** More descriptors to send after `fd`, owned by {@link offer}. */
  extra: readonly number[];
  /** The exporter's hand-off offer the message carries, told whether it left. */
  offer: HandoffOffer | null;
  /** False while the offer is being prepared: the queue waits at this item. */
  ready: boolean;
  resolve: () => void;
  reject: (err: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

interface ReceiveWaiter {
  /** Settles the receive with what `take` made of the message (or with the message). */
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
  /** Turns the message into the receive's result, as soon as it is read; may throw. */
  take: ((m: RawMessage) => unknown) | undefined;
}

const kCreate = Symbol('BufferChannel.create');
/** Descriptors adopted by a live channel of this thread (a second adoption would fight over it). */
const adopted = new Set<number>();

/** A failed import of a received buffer, as `receive` reports it. */
function receiveError(err: unknown): DmaBufError {
  const e = err instanceof DmaBufError ? err : new DmaBufError('EIO', String(err), { cause: err });
  if (e.code === 'EMFILE' || e.code === 'ENFILE') {
    return new DmaBufError(e.code, `receive: this process is out of descriptors (RLIMIT_NOFILE, see ulimit -n), so the buffer could not be imported; close descriptors and buffers you no longer need, or raise the limit (the message's descriptor was closed): ${e.message}`, { op: 'receive', syscall: e.syscall, errno: e.errno, cause: err });
  }
  return new DmaBufError(e.code, `receive: the peer sent a descriptor that is not a buffer this process can get (the descriptor was closed): ${e.message}`, { op: 'receive', syscall: e.syscall, errno: e.errno, cause: err });
}

/** Consecutive libuv poll errors tolerated before the channel gives up. */
const MAX_POLL_ERRORS = 64;

function closeQuietly(fd: number): void {
  if (fd < 0) return;
  try {
    native.close(fd);
  } catch {
    // nothing sensible to do: the descriptor is gone either way
  }
}

/** Closes a descriptor registered with own() (closed anyway if this thread ends first). */
function closeOwnedQuietly(fd: number): void {
  if (fd < 0) return;
  try {
    closeOwned(fd);
  } catch {
    // gone either way
  }
}

function peerClosedError(op: string): DmaBufError {
  return new DmaBufError('EPIPE', `${op}: the peer closed the channel (no more messages will arrive, and sends cannot be delivered)`, { op });
}

function closedError(op: string): DmaBufError {
  return new DmaBufError('EPIPE', `${op}: the channel was closed by close() on this side`, { op });
}

function malformed(what: string): DmaBufError {
  return new DmaBufError('EPROTO', `receive: malformed message from the peer: ${what}; the message was dropped and its descriptors closed`, { op: 'receive' });
}

function wrapSystemError(err: unknown, op: string, what: string): DmaBufError {
  const e = err instanceof DmaBufError ? err : new DmaBufError('EIO', String(err), { op, cause: err });
  return new DmaBufError(e.code, `${op}: ${what}: ${e.message}`, { op, syscall: e.syscall, errno: e.errno, cause: err });
}

/**
 * A connected `AF_UNIX` `SOCK_SEQPACKET` socket that sends and receives buffers: each message
 * is a small header, optional JSON metadata and exactly one descriptor (`SCM_RIGHTS`).
 *
 * - **Sending** duplicates the buffer's descriptor (`buf.fd()`), so the caller may put the
 *   buffer right after calling {@link send}; the duplicate is closed once the kernel holds
 *   the message, or when the send fails or is aborted. Sends are queued in order (FIFO).
 *   When the socket is full (the peer does not read) they wait for it to become writable:
 *   backpressure, never an error and never a blocked event loop.
 * - **Receiving** reads only while a {@link receive} (or {@link receiveFd}, or the async
 *   iterator) is waiting, so a slow consumer leaves messages, and their descriptors, in the
 *   kernel and the sender feels the backpressure.
 * - **Bad input** (a malformed message, a wrong number of descriptors, a truncated message,
 *   descriptors dropped by the kernel) rejects the waiting receive with a {@link DmaBufError}
 *   (`EPROTO`, or `EMFILE` when the kernel dropped descriptors) and closes every descriptor
 *   the message carried; the channel stays usable. The error is also emitted as `'error'`,
 *   but only when an `'error'` listener exists (an unhandled `'error'` never crashes).
 * - **End:** when the peer closes, waiting and later receives reject with `EPIPE` ("the peer
 *   closed"), and the async iterator ends. After {@link close} on this side, every waiting
 *   and later operation rejects with `EPIPE` too ("closed by close()"); queued sends are
 *   dropped and their duplicates closed. `'close'` is emitted once.
 * - The poll watcher keeps the process alive only while a send or a receive is pending: an
 *   idle channel never holds the process open.
 *
 * @example
 * ```ts
 * // Parent: a pair; the other end becomes the child's fd 3.
 * const [channel, theirs] = BufferChannel.pair();
 * const child = spawn(process.execPath, ['child.js'], { stdio: ['inherit', 'inherit', 'inherit', theirs] });
 * closeSync(theirs);
 * await channel.send(buf, { frame: 1 });
 * // Child: const channel = BufferChannel.fromFd(3);
 * //        for await (const { buffer, meta } of channel) { ...; buffer.put(); }
 * ```
 */
export class BufferChannel extends EventEmitter implements AsyncIterable<ReceivedBuffer>, AsyncDisposable {
  #fd: number;
  #poll: PollHandle | null = null;
  /** The events the watcher watches now (-1: unknown, re-arm). */
  #pollEvents = 0;
  /** Whether the watcher keeps the event loop alive now. */
  #pollReffed = false;
  /** The turn that drops events no longer needed (see {@link #updatePoll}). */
  #pollTimer: NodeJS.Immediate | null = null;
  #pollErrors = 0;
  #closed = false;
  /** End-of-file was read: the peer is gone. */
  #peerClosed = false;
  #sendQueue: SendItem[] = [];
  /** The head of the queue met EAGAIN: waiting for the socket to be writable. */
  #sendBlocked = false;
  #receivers: ReceiveWaiter[] = [];
  #peer: PeerCred;
  /** A pair's creator end: `#peer` is ourselves until a message tells the other process. */
  #learnPeer = false;

  /** @internal use {@link BufferChannel.pair}, {@link BufferChannel.fromFd} or {@link BufferChannel.connect}. */
  constructor(token: symbol, fd: number, peer: PeerCred) {
    super();
    if (token !== kCreate) {
      throw new DmaBufError('EINVAL', 'new BufferChannel: use BufferChannel.pair(), BufferChannel.fromFd() or BufferChannel.connect()', { op: 'new BufferChannel' });
    }
    this.#fd = own(fd);
    this.#peer = peer;
    adopted.add(fd);
  }

  /**
   * A new connected pair of sockets: returns this side's channel and the other end's raw
   * descriptor, which the caller owns (close-on-exec). Typically the other end goes to a child
   * process as an extra stdio entry (where it becomes, say, fd 3 for
   * {@link BufferChannel.fromFd}); close it in the parent after spawning.
   *
   * @throws {DmaBufError} `EMFILE` when out of descriptors; `ENODEV` on a platform without support.
   * @example
   * ```ts
   * const [channel, theirs] = BufferChannel.pair();
   * const child = spawn(process.execPath, ['worker.js'], { stdio: ['inherit', 'inherit', 'inherit', theirs] });
   * closeSync(theirs);
   * ```
   */
  static pair(): [BufferChannel, number] {
    const c = native.constants;
    const [ours, theirs] = native.socketpair(c.SOCK_SEQPACKET, false);
    try {
      const channel = new BufferChannel(kCreate, ours, native.peerCred(ours));
      // SO_PEERCRED of a pair names its creator (this process) at both ends: the kernel's
      // SCM_CREDENTIALS on the first message received tell who holds the other end.
      native.setPassCred(ours, true);
      channel.#learnPeer = true;
      return [channel, theirs];
    } catch (err) {
      closeQuietly(ours);
      closeQuietly(theirs);
      throw err;
    }
  }

  /**
   * Adopts a connected `AF_UNIX` `SOCK_SEQPACKET` socket descriptor (for instance fd 3 in a
   * child started with the other end of {@link BufferChannel.pair}). The channel owns it from
   * now on and closes it in {@link close}; do not close it yourself.
   *
   * @throws {DmaBufError} `EBADF` when `fd` is not an open descriptor; `EINVAL` when it is not
   *   a Unix `SOCK_SEQPACKET` socket, is not connected, or already belongs to a channel.
   * @example
   * ```ts
   * // In a child spawned with stdio: ['inherit', 'inherit', 'inherit', theirs]
   * const channel = BufferChannel.fromFd(3);
   * ```
   */
  static fromFd(fd: number): BufferChannel {
    const op = 'BufferChannel.fromFd';
    checkFd(fd, op);
    const c = native.constants;
    let info;
    try {
      info = native.socketInfo(fd);
    } catch (err) {
      if (DmaBufError.is(err, 'EBADF')) {
        throw new DmaBufError('EBADF', `${op}: descriptor ${fd} is not open`, { op, syscall: err.syscall, errno: err.errno, cause: err });
      }
      if (DmaBufError.is(err, 'ENOTSOCK')) {
        throw new DmaBufError('EINVAL', `${op}: descriptor ${fd} is not a socket; pass a connected Unix SOCK_SEQPACKET socket (from BufferChannel.pair() or a BufferServer)`, { op, cause: err });
      }
      throw err;
    }
    if (info.domain !== c.AF_UNIX || info.type !== c.SOCK_SEQPACKET) {
      throw new DmaBufError('EINVAL', `${op}: descriptor ${fd} is a socket but not a Unix SOCK_SEQPACKET one (domain ${info.domain}, type ${info.type}); pass the other end of BufferChannel.pair()`, { op });
    }
    if (adopted.has(fd)) {
      throw new DmaBufError('EINVAL', `${op}: descriptor ${fd} already belongs to a BufferChannel; use that channel`, { op });
    }
    const peer = native.peerCred(fd);
    if (peer.pid === 0 && peer.uid === 0xffffffff) {
      throw new DmaBufError('EINVAL', `${op}: descriptor ${fd} is a socket that is not connected; connect it first (or use BufferChannel.connect())`, { op });
    }
    return new BufferChannel(kCreate, fd, peer);
  }

  /**
   * Connects to a {@link BufferServer} (or any listening Unix `SOCK_SEQPACKET` socket). The
   * address is a path, or an abstract name starting with `'\0'` or, as `ss(8)` prints them,
   * `'@'`. When the server's backlog is full the connect waits (without blocking the event
   * loop) until it can get in, or until `options.signal` aborts it.
   *
   * @throws {DmaBufError} `ECONNREFUSED` when nobody listens there; `ENOENT` when the path does
   *   not exist; `EACCES` without permission; `EINVAL` / `ENAMETOOLONG` for a bad address;
   *   `EINTR` when aborted; `EMFILE` when out of descriptors.
   * @example
   * ```ts
   * const channel = await BufferChannel.connect('@frames', { signal: AbortSignal.timeout(5000) });
   * ```
   */
  static async connect(address: string, options: ConnectOptions = {}): Promise<BufferChannel> {
    const op = 'connect';
    const addr = normalizeAddress(address, op);
    const signal = checkSignal(options, op);
    if (signal?.aborted) throw abortError(op, signal, `before connecting to ${displayAddress(addr)}`);
    const c = native.constants;
    const fd = native.socket(c.SOCK_SEQPACKET, true);
    try {
      let delay = 1;
      for (;;) {
        try {
          native.connect(fd, addr);
          break;
        } catch (err) {
          if (!DmaBufError.is(err, 'EAGAIN')) throw connectError(err, addr, op);
        }
        // The server's backlog is full: try again a little later.
        try {
          await sleep(delay, undefined, signal ? { signal } : undefined);
        } catch {
          throw abortError(op, signal!, `while waiting for the server at ${displayAddress(addr)} to accept`);
        }
        delay = Math.min(delay * 2, 100);
      }
      return new BufferChannel(kCreate, fd, native.peerCred(fd));
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
  }

  /** The socket's descriptor, owned by the channel (-1 once closed). Do not close it. */
  get fd(): number {
    return this.#fd;
  }

  /** Whether {@link close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Whether the peer closed its end (end-of-file was read). */
  get peerClosed(): boolean {
    return this.#peerClosed;
  }

  /**
   * Sends queued and not yet taken by the kernel (they wait for the peer to read). Each holds
   * one duplicate descriptor; a producer can use this to stop producing ahead of a slow peer.
   *
   * @example
   * ```ts
   * const sent = channel.send(frame, { n }).catch(report);
   * if (channel.pendingSends > 8) await sent; // do not run far ahead of a slow peer
   * ```
   */
  get pendingSends(): number {
    return this.#sendQueue.length;
  }

  /**
   * The credentials of the process at the other end, as the kernel reports them (never as
   * the peer claims them). For a connection, the process that connected or listened
   * (`SO_PEERCRED`); for {@link BufferChannel.fromFd}, the process that made the connection
   * or the pair. For the end that {@link BufferChannel.pair} returns, the kernel only knows
   * the pair's creator (this process) until the other end sends: from the first message
   * received, `peer` is its sender (`SCM_CREDENTIALS`). A pid of 0 means the peer is in
   * another pid namespace.
   *
   * @example
   * ```ts
   * if (channel.peer.uid !== process.getuid()) channel.close();
   * ```
   */
  get peer(): PeerCred {
    return { ...this.#peer };
  }

  /**
   * Sends a buffer: one message with a duplicate of the buffer's descriptor and `meta` as
   * JSON. Resolves once the kernel holds the message (the receiver may not have read it yet).
   * The caller may put the buffer as soon as `send` returns its promise.
   *
   * @throws {DmaBufError} `EINVAL` when `buf` is not a {@link DmaBuf} or was put, or `meta` has
   *   no JSON form; `EMSGSIZE` when `meta`'s JSON is over 60 KiB; `EINTR` when
   *   `options.signal` aborted it while queued (nothing was sent); `EPIPE` when the peer or
   *   this side closed the channel; `EMFILE` when out of descriptors.
   * @example
   * ```ts
   * await channel.send(buf, { frame: 17, pts: 1234 });
   * buf.put(); // the peer holds its own reference now
   * ```
   */
  send(buf: DmaBuf, meta?: unknown, options: ChannelOperationOptions = {}): Promise<void> {
    const op = 'send';
    let sent: Promise<void>;
    let item: SendItem;
    try {
      if (!(buf instanceof DmaBuf)) {
        throw new DmaBufError('EINVAL', `${op}: expected a DmaBuf (use sendFd() to send a raw descriptor)`, { op });
      }
      const signal = checkSignal(options, op);
      const data = encodeChannelMessage(meta, op);
      this.#checkCanSend(op, signal);
      // The descriptor now (the caller may put the buffer as soon as this returns); the queue
      // keeps its place while the exporter's offer is prepared, so messages leave in order.
      item = this.#newItem(data, buf.fd(), signal, false);
      sent = this.#enqueue(item);
    } catch (err) {
      return Promise.reject(err);
    }
    // Usually ready in this call (the attach and map made ahead are synchronous): the message
    // then leaves before send returns.
    let offer: Now<HandoffOffer | null>;
    try {
      offer = offerHandoff(buf, this, this.#peer.pid, 'socket');
    } catch {
      offer = null;
    }
    if (isThenable(offer)) {
      void Promise.resolve(offer).then((o) => this.#offerReady(item, o, meta), () => this.#offerReady(item, null, meta));
    } else {
      this.#offerReady(item, offer, meta);
    }
    return sent;
  }

  /** Adds the exporter's hand-off offer (if any) to a queued item, then lets the queue go on. */
  #offerReady(item: SendItem, offer: HandoffOffer | null, meta: unknown): void {
    try {
      if (offer) {
        if (item.fd < 0) {
          offer.failed(); // aborted or closed meanwhile
          return;
        }
        item.data = encodeHandoffMessage(meta, offer.body, 'send');
        item.extra = offer.fds;
        item.offer = offer;
      }
    } catch {
      // No offer (the metadata and the offer together are too large, say): a plain message.
      offer?.failed();
      item.extra = [];
      item.offer = null;
    }
    item.ready = true;
    this.#guard(() => {
      if (this.#sendQueue[0] === item) this.#flushSends();
    });
  }

  /**
   * Sends a raw descriptor, which the caller keeps owning (it is duplicated), with `meta` as
   * JSON. Otherwise like {@link send}.
   *
   * @throws {DmaBufError} `EBADF` when `fd` is not an open descriptor; the rest as {@link send}.
   * @example
   * ```ts
   * await channel.sendFd(memfd, { kind: 'raw' });
   * closeSync(memfd); // ours to close; the peer received its own
   * ```
   */
  async sendFd(fd: number, meta?: unknown, options: ChannelOperationOptions = {}): Promise<void> {
    const op = 'sendFd';
    checkFd(fd, op);
    const signal = checkSignal(options, op);
    const data = encodeChannelMessage(meta, op);
    this.#checkCanSend(op, signal);
    let dup: number;
    try {
      dup = native.dup(fd, true);
    } catch (err) {
      if (DmaBufError.is(err, 'EBADF')) {
        throw new DmaBufError('EBADF', `${op}: descriptor ${fd} is not open`, { op, syscall: err.syscall, errno: err.errno, cause: err });
      }
      throw err;
    }
    return this.#enqueue(this.#newItem(data, dup, signal, true));
  }

  /**
   * Receives the next buffer. The received descriptor becomes a buffer with
   * `await DmaBuf.get(fd)` (which takes its own reference) and is then closed; the caller
   * puts the buffer when done.
   *
   * @throws {DmaBufError} `EPIPE` when the peer closed the channel (or this side did);
   *   `EPROTO` for a malformed message (it is dropped, its descriptors closed, and the next
   *   receive gets the next message); `EMFILE` when the kernel dropped the message's
   *   descriptors because this process is out of them; `EINTR` when `options.signal` aborted
   *   the wait (no message was consumed); whatever {@link DmaBuf.get} throws for a descriptor
   *   that is not a buffer (the message says so; the descriptor is closed). `signal` also
   *   aborts the import handshake of a buffer from another process (`EINTR`); the message
   *   is consumed then, and its descriptor closed.
   * @example
   * ```ts
   * const { buffer, meta } = await channel.receive({ signal: AbortSignal.timeout(10_000) });
   * try { ... } finally { buffer.put(); }
   * ```
   */
  receive(options: ReceiveOptions = {}): Promise<ReceivedBuffer> {
    // The buffer is imported as soon as its message is read, in the same callback: a hand-off
    // new to this thread is adopted and mapped there, and the receive settles once.
    return this.#receiveRaw('receive', options, (raw) => this.#import(raw, options));
  }

  /** The buffer a received message carries, imported (and mapped when `options.map` asks). */
  #import(raw: RawMessage, options: ReceiveOptions): ReceivedBuffer | Promise<ReceivedBuffer> {
    const { fd, meta } = raw;
    if (!raw.handoff) return this.#importFile(fd, meta, options);
    const peer = this.#peer.pid !== process.pid ? this.#peer.pid : 0;
    let got: AdoptedHandoff | Promise<AdoptedHandoff>;
    try {
      // Takes the descriptor over, also when it throws.
      got = adoptHandoff({ file: fd, body: raw.handoff.body, fds: raw.handoff.fds, senderPid: peer }, { map: options?.map, signal: options?.signal });
    } catch (err) {
      throw receiveError(err);
    }
    if (!isThenable(got)) return withMeta(got, meta);
    return Promise.resolve(got).then((g) => withMeta(g, meta), (err: unknown) => {
      throw receiveError(err);
    });
  }

  /** A plain descriptor: `DmaBuf.get`, which takes its own reference; `fd` is closed after. */
  async #importFile(fd: number, meta: unknown, options: ReceiveOptions): Promise<ReceivedBuffer> {
    try {
      const signal = options?.signal;
      const map = options?.map;
      const buffer = await DmaBuf.get(fd, signal ? { signal } : {});
      if (!map) return { buffer, meta };
      return withMeta(await attachMapped(buffer, map.device, map.direction, signal), meta);
    } catch (err) {
      throw receiveError(err);
    } finally {
      closeQuietly(fd);
    }
  }

  /**
   * Receives the next message as a raw descriptor, which the caller owns and must close.
   *
   * @throws {DmaBufError} as {@link receive}, except that the descriptor is not checked.
   * @example
   * ```ts
   * const { fd, meta } = await channel.receiveFd();
   * try { console.log(fstatSync(fd).size, meta); } finally { closeSync(fd); }
   * ```
   */
  async receiveFd(options: ChannelOperationOptions = {}): Promise<ReceivedFd> {
    const { fd, meta, handoff } = await this.#receiveRaw('receiveFd', options);
    // The raw descriptor only: give back what the exporter made ahead (its channel stays).
    if (handoff) declineHandoff({ file: fd, body: handoff.body, fds: handoff.fds, senderPid: 0 });
    return { fd, meta };
  }

  /**
   * Iterates over received buffers, like the channel itself, with options for each receive:
   * `map` attaches and maps every buffer (see {@link receive}).
   *
   * @example
   * ```ts
   * for await (const { buffer, attachment, sgt } of channel.buffers({ map: { device: cpu, direction: 'to-device' } })) {
   *   use(sgt!.segments[0]!.view!);
   *   await attachment!.detach();
   *   buffer.put();
   * }
   * ```
   */
  buffers(options: ReceiveOptions = {}): AsyncGenerator<ReceivedBuffer, void, undefined> {
    return untilClosed(() => this.receive(options));
  }

  /**
   * Iterates over received buffers until the peer (or this side) closes the channel. Other
   * errors (`EPROTO`, ...) are thrown by the loop. Breaking out of the loop does not close
   * the channel. Each buffer is the caller's to put.
   *
   * @example
   * ```ts
   * for await (const { buffer, meta } of channel) {
   *   console.log(meta, buffer.size);
   *   buffer.put();
   * }
   * ```
   */
  [Symbol.asyncIterator](): AsyncGenerator<ReceivedBuffer, void, undefined> {
    return untilClosed(() => this.receive());
  }

  /**
   * Closes the channel (idempotent): stops the poll watcher, then closes the socket. Waiting
   * receives and queued sends reject with `EPIPE` ("closed by close()"); queued sends'
   * duplicates are closed. Messages already taken by the kernel stay deliverable to the peer.
   *
   * @example
   * ```ts
   * channel.close();
   * ```
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const fd = this.#fd;
    if (this.#poll) {
      try {
        native.pollClose(this.#poll);
      } catch {
        // already closed
      }
      this.#poll = null;
    }
    this.#pollEvents = 0;
    if (this.#pollTimer !== null) clearImmediate(this.#pollTimer);
    this.#pollTimer = null;
    this.#failAll(closedError('send'), closedError('receive'));
    adopted.delete(fd);
    this.#fd = -1;
    closeOwnedQuietly(fd);
    endRoute(this);
    process.nextTick(() => this.emit('close'));
  }

  /** Closes the channel ({@link close}); for `await using`. */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  // ---------------------------------------------------------------------------------------
  // sending

  #checkCanSend(op: string, signal: AbortSignal | undefined): void {
    if (this.#closed) throw closedError(op);
    if (signal?.aborted) throw abortError(op, signal, 'before the message was queued; nothing was sent');
  }

  #newItem(data: Uint8Array, fd: number, signal: AbortSignal | undefined, ready: boolean): SendItem {
    try {
      own(fd);
    } catch (err) {
      closeQuietly(fd);
      throw err;
    }
    return { data, fd, extra: [], offer: null, ready, resolve: () => {}, reject: () => {}, signal, onAbort: undefined };
  }

  #enqueue(item: SendItem): Promise<void> {
    const { signal } = item;
    return new Promise<void>((resolve, reject) => {
      item.resolve = resolve;
      item.reject = reject;
      if (signal) {
        item.onAbort = () => this.#abortSend(item);
        signal.addEventListener('abort', item.onAbort, { once: true });
      }
      this.#sendQueue.push(item);
      this.#guard(() => {
        if (this.#sendQueue.length === 1) this.#flushSends();
      });
    });
  }

  /** Sends queued messages until the queue is empty or the socket is full. */
  #flushSends(): void {
    const c = native.constants;
    while (this.#sendQueue.length > 0 && !this.#closed) {
      const item = this.#sendQueue[0]!;
      if (!item.ready) break; // its offer is being prepared; it flushes the queue when ready
      try {
        const fds = item.extra.length === 0 ? [item.fd] : [item.fd, ...item.extra];
        if (native.sendmsg(this.#fd, item.data, fds, c.MSG_DONTWAIT, true) < 0) {
          this.#sendBlocked = true; // EAGAIN: wait until the socket is writable
          return;
        }
      } catch (err) {
        this.#sendQueue.shift();
        if (DmaBufError.is(err, 'EPIPE') || DmaBufError.is(err, 'ECONNRESET')) {
          this.#finishSend(item, peerClosedError('send'));
          for (const rest of this.#sendQueue.splice(0)) this.#finishSend(rest, peerClosedError('send'));
          break;
        }
        const what = DmaBufError.is(err, 'ETOOMANYREFS')
          ? 'too many descriptors are in flight to a peer that does not read (the limit is RLIMIT_NOFILE)'
          : 'the kernel refused the message';
        this.#finishSend(item, wrapSystemError(err, 'send', what));
        continue;
      }
      this.#sendQueue.shift();
      this.#finishSend(item, null);
    }
    this.#sendBlocked = false;
  }

  #finishSend(item: SendItem, err: DmaBufError | null): void {
    closeOwnedQuietly(item.fd);
    item.fd = -1;
    if (item.offer) {
      if (err) item.offer.failed();
      else item.offer.sent();
      item.offer = null;
    }
    if (item.signal && item.onAbort) item.signal.removeEventListener('abort', item.onAbort);
    if (err) item.reject(err);
    else item.resolve();
  }

  #abortSend(item: SendItem): void {
    const i = this.#sendQueue.indexOf(item);
    if (i < 0) return;
    this.#sendQueue.splice(i, 1);
    this.#finishSend(item, abortError('send', item.signal!, 'while queued; nothing was sent'));
    if (this.#sendQueue.length === 0) this.#sendBlocked = false;
    // The head waited for its offer: the messages behind it may go now.
    if (i === 0 && !item.ready && !this.#sendBlocked) this.#guard(() => this.#flushSends());
    else this.#updatePoll();
  }

  // ---------------------------------------------------------------------------------------
  // receiving

  /**
   * The next message; with `take`, what `take` makes of it as soon as it is read (in the
   * callback that read it: a throw rejects the receive).
   */
  #receiveRaw(op: string, options: ChannelOperationOptions): Promise<RawMessage>;
  #receiveRaw<T>(op: string, options: ChannelOperationOptions, take: (m: RawMessage) => T | Promise<T>): Promise<T>;
  #receiveRaw(op: string, options: ChannelOperationOptions, take?: (m: RawMessage) => unknown): Promise<unknown> {
    let signal: AbortSignal | undefined;
    try {
      signal = checkSignal(options, op);
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.#closed) return Promise.reject(closedError(op));
    if (signal?.aborted) return Promise.reject(abortError(op, signal, 'before waiting; no message was consumed'));
    if (this.#peerClosed) return Promise.reject(peerClosedError(op));
    return new Promise<unknown>((resolve, reject) => {
      const waiter: ReceiveWaiter = { resolve, reject, signal, onAbort: undefined, take };
      if (signal) {
        waiter.onAbort = () => this.#abortReceive(waiter, op);
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      this.#receivers.push(waiter);
      // Watched for reading already (the usual receive loop): the event loop reports the next
      // message; reading now would most often find nothing (an EAGAIN system call per message).
      this.#guard(() => {
        if (!this.#watchingReads()) this.#drainReceives();
      });
    });
  }

  /** Whether the watcher is armed for reading (so that a queued message will be reported). */
  #watchingReads(): boolean {
    return this.#poll !== null && this.#pollEvents > 0 && (this.#pollEvents & native.constants.UV_READABLE) !== 0;
  }

  #abortReceive(waiter: ReceiveWaiter, op: string): void {
    const i = this.#receivers.indexOf(waiter);
    if (i < 0) return;
    this.#receivers.splice(i, 1);
    waiter.reject(abortError(op, waiter.signal!, 'while waiting for a message; no message was consumed'));
    this.#guard(() => {});
  }

  /** Reads messages while receivers wait and messages are there. */
  #drainReceives(): void {
    const c = native.constants;
    while (this.#receivers.length > 0 && !this.#closed && !this.#peerClosed) {
      let r: RecvResult | null;
      try {
        r = native.recvmsg(this.#fd, CHANNEL_RECV_MAX_BYTES, CHANNEL_RECV_MAX_FDS, c.MSG_DONTWAIT, true, this.#learnPeer);
        if (r === null) return; // EAGAIN: nothing more for now
        if (r.cred && this.#learnPeer) this.#learnedPeer(r.cred);
      } catch (err) {
        if (DmaBufError.is(err, 'ECONNRESET')) {
          this.#onPeerClosed();
          return;
        }
        this.#settleReceive(wrapSystemError(err, 'receive', 'reading the socket failed'));
        continue;
      }
      if (r.data.length === 0 && r.fds.length === 0 && (r.flags & (c.MSG_TRUNC | c.MSG_CTRUNC)) === 0) {
        // Zero bytes: end-of-file when the peer is gone, else an (invalid) empty message.
        const revents = native.pollNow(this.#fd, c.POLLIN | c.POLLRDHUP);
        if ((revents & (c.POLLHUP | c.POLLRDHUP)) !== 0) {
          this.#onPeerClosed();
          return;
        }
        this.#settleReceive(malformed('an empty message (no header, no descriptor)'));
        continue;
      }
      this.#settleReceive(this.#parse(r));
    }
  }

  /** Validates a received message; on any error closes every descriptor it carried. */
  #parse(r: RecvResult): RawMessage | DmaBufError {
    const c = native.constants;
    let result: RawMessage | DmaBufError;
    if ((r.flags & c.MSG_CTRUNC) !== 0) {
      result = r.fds.length >= CHANNEL_RECV_MAX_FDS
        ? malformed(`more than ${CHANNEL_RECV_MAX_FDS} descriptors (a message carries exactly one)`)
        : new DmaBufError('EMFILE', 'receive: the kernel dropped the descriptors of a message (MSG_CTRUNC), most likely because this process is out of descriptors (RLIMIT_NOFILE); the message was dropped. Close descriptors you no longer need (every receiveFd() result, put buffers) or raise the limit (ulimit -n)', { op: 'receive' });
    } else if ((r.flags & c.MSG_TRUNC) !== 0) {
      result = malformed(`it is longer than ${CHANNEL_RECV_MAX_BYTES} bytes (truncated)`);
    } else {
      try {
        const { type, meta, handoff } = decodeChannelMessage(r.data, 'receive');
        if (type === ChannelMessageType.HANDOFF && handoff) {
          result = r.fds.length >= 1 && r.fds.length <= HANDOFF_MAX_FDS
            ? { fd: r.fds[0]!, meta, handoff: { body: handoff, fds: r.fds.slice(1) } }
            : malformed(`a hand-off with ${r.fds.length} descriptors (1 to ${HANDOFF_MAX_FDS})`);
        } else {
          result = r.fds.length === 1
            ? { fd: r.fds[0]!, meta }
            : malformed(`${r.fds.length} descriptors (a message carries exactly one)`);
        }
      } catch (err) {
        result = err instanceof DmaBufError ? err : malformed(String(err));
      }
    }
    if (result instanceof DmaBufError) for (const fd of r.fds) closeQuietly(fd);
    return result;
  }

  #settleReceive(result: RawMessage | DmaBufError): void {
    const waiter = this.#receivers.shift();
    if (!waiter) {
      // Cannot happen (reads only happen for a waiter); never leak the descriptor anyway.
      if (!(result instanceof DmaBufError)) {
        closeQuietly(result.fd);
        for (const fd of result.handoff?.fds ?? []) closeQuietly(fd);
      }
      return;
    }
    if (waiter.signal && waiter.onAbort) waiter.signal.removeEventListener('abort', waiter.onAbort);
    if (result instanceof DmaBufError) {
      waiter.reject(result);
      this.#emitError(result);
    } else if (waiter.take) {
      let value: unknown;
      try {
        value = waiter.take(result);
      } catch (err) {
        waiter.reject(err);
        return;
      }
      waiter.resolve(value);
    } else {
      waiter.resolve(result);
    }
  }

  /** The other end of a pair sent its first message: it is the peer from now on. */
  #learnedPeer(cred: PeerCred): void {
    this.#peer = { pid: cred.pid, uid: cred.uid, gid: cred.gid };
    this.#learnPeer = false;
    try {
      native.setPassCred(this.#fd, false);
    } catch {
      // the credentials keep coming; harmless
    }
  }

  #onPeerClosed(): void {
    this.#peerClosed = true;
    endRoute(this);
    for (const w of this.#receivers.splice(0)) {
      if (w.signal && w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
      w.reject(peerClosedError('receive'));
    }
  }

  #emitError(err: DmaBufError): void {
    if (this.listenerCount('error') === 0) return;
    process.nextTick(() => {
      if (this.listenerCount('error') > 0) this.emit('error', err);
    });
  }

  // ---------------------------------------------------------------------------------------
  // the poll watcher

  /** Runs `fn`, then re-arms the watcher; any unexpected error fails every pending operation. */
  #guard(fn: () => void): void {
    try {
      fn();
      this.#updatePoll();
    } catch (err) {
      const e = err instanceof DmaBufError ? err : new DmaBufError('EIO', `channel: unexpected failure: ${String(err)}`, { cause: err });
      this.#failAll(e, e);
      try {
        this.#updatePoll();
      } catch {
        // nothing is pending any more; the watcher stays as it is until close()
      }
    }
  }

  /**
   * Watches what the pending operations need; ref'd only while something is pending. Events
   * no longer needed are dropped one turn of the event loop later (unref'd meanwhile): a
   * program that receives again right after a message arrived (the usual loop) keeps the
   * watcher as it is, instead of two `epoll_ctl` calls per message.
   */
  #updatePoll(now = false): void {
    if (this.#closed) return;
    const c = native.constants;
    let events = 0;
    if (this.#receivers.length > 0 && !this.#peerClosed) events |= c.UV_READABLE | c.UV_DISCONNECT;
    if (this.#sendBlocked && this.#sendQueue.length > 0) events |= c.UV_WRITABLE;
    if (this.#poll !== null && !now && this.#pollEvents > 0 && events !== this.#pollEvents && (events & ~this.#pollEvents) === 0) {
      // Only fewer events: a turn later. A wake-up meanwhile finds nobody waiting, reads nothing.
      if (events === 0 && this.#pollReffed) {
        native.pollRef(this.#poll, false);
        this.#pollReffed = false;
      }
      if (this.#pollTimer === null) {
        this.#pollTimer = setImmediate(() => {
          this.#pollTimer = null;
          this.#updatePoll(true);
        });
        this.#pollTimer.unref();
      }
      return;
    }
    if (events === this.#pollEvents) {
      if (this.#poll !== null && this.#pollReffed !== (events !== 0)) {
        native.pollRef(this.#poll, events !== 0);
        this.#pollReffed = events !== 0;
      }
      return;
    }
    if (this.#poll === null) {
      if (events === 0) {
        this.#pollEvents = 0;
        return;
      }
      this.#poll = native.pollStart(this.#fd, events, (status, ev) => this.#onPoll(status, ev));
    } else {
      native.pollUpdate(this.#poll, events);
    }
    native.pollRef(this.#poll, events !== 0);
    this.#pollReffed = events !== 0;
    this.#pollEvents = events;
  }

  #onPoll(status: number, _events: number): void {
    if (this.#closed) return;
    if (status < 0) {
      // libuv stopped the watcher: let the system calls below say what is wrong, re-arm.
      this.#pollEvents = -1;
      if (++this.#pollErrors > MAX_POLL_ERRORS) {
        const e = new DmaBufError('EIO', `channel: the event loop keeps reporting an error (libuv status ${status}) on the socket; pending operations were failed`, { op: 'poll' });
        this.#failAll(e, e);
        this.#guard(() => {});
        return;
      }
    } else {
      this.#pollErrors = 0;
    }
    this.#guard(() => {
      if (this.#sendQueue.length > 0) this.#flushSends();
      this.#drainReceives();
    });
  }

  /** Rejects every queued send (closing its duplicate) and every waiting receive. */
  #failAll(sendErr: DmaBufError, receiveErr: DmaBufError): void {
    for (const item of this.#sendQueue.splice(0)) this.#finishSend(item, sendErr);
    this.#sendBlocked = false;
    for (const w of this.#receivers.splice(0)) {
      if (w.signal && w.onAbort) w.signal.removeEventListener('abort', w.onAbort);
      w.reject(receiveErr);
    }
  }
}

/** A clear error for a failed connect(2). */
function connectError(err: unknown, addr: string, op: string): DmaBufError {
  const e = err instanceof DmaBufError ? err : new DmaBufError('EIO', String(err), { cause: err });
  const where = displayAddress(addr);
  let what: string;
  switch (e.code) {
    case 'ECONNREFUSED': what = `nobody listens on ${where} (is the server running?)`; break;
    case 'ENOENT': what = `${where} does not exist (is the server running, and is the path right?)`; break;
    case 'EACCES': case 'EPERM': what = `no permission to connect to ${where}`; break;
    case 'EPROTOTYPE': what = `${where} is not a SOCK_SEQPACKET socket (is it a BufferServer?)`; break;
    case 'ENOTSOCK': case 'ECONNRESET': what = `${where} is not a listening socket`; break;
    default: what = `connecting to ${where} failed: ${e.message}`;
  }
  return new DmaBufError(e.code, `${op}: ${what}`, { op, syscall: e.syscall, errno: e.errno, cause: err });
}
