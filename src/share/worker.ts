/**
 * Passing buffers to worker threads. Threads of one process share its descriptor table, so a
 * descriptor number posted with `postMessage` is valid in the receiving thread: the helpers
 * post a duplicate that the message owns, and the receiver turns it into a buffer.
 *
 * Not for other processes: a descriptor number means nothing there (use a
 * {@link BufferChannel}). {@link receiveBuffer} checks that the message comes from this process.
 *
 * @module
 */
import { DmaBuf } from '../core/dma-buf.js';
import { DmaBufError } from '../core/errors.js';
import { native } from '../native/binding.js';
import { fileKey } from '../transport/buffer-file.js';
import { checkFd } from '../transport/unix-util.js';
import { endRoute, offerHandoff, type HandoffOffer } from '../remote/handoff.js';
import { adoptHandoff, declineHandoff, withMeta, type AdoptedHandoff, type HandoffMap } from '../remote/importer.js';
import { andThen, isThenable, type Now } from '../core/now.js';

/** The property that marks a buffer message (a string: symbols do not survive `postMessage`). */
export const BUFFER_MESSAGE_MARKER = '__dmabufBuffer';

/** A message made by {@link postBuffer}: plain data, safe to structured-clone. */
export interface BufferMessage {
  /** Always `true`. */
  [BUFFER_MESSAGE_MARKER]: true;
  /** The duplicate descriptor the message owns (process-wide; -1 once received). */
  fd: number;
  /** The file's `dev:ino`, so the receiver can tell the descriptor is still the one posted. */
  key: string;
  /** The process that posted it: the descriptor is only meaningful there. */
  pid: number;
  /** The sender's metadata (anything `postMessage` can clone). */
  meta: unknown;
  /**
   * When the sender exported the buffer: its hand-off offer (the description, and a map made
   * ahead) and the descriptors it describes, which the message owns like `fd`.
   */
  handoff?: { body: Record<string, unknown>; fds: number[] } | undefined;
}

/** Options of {@link receiveBuffer}. */
export interface ReceiveBufferOptions {
  /**
   * Attach this device and map the buffer with this direction before returning; when the
   * poster exported the buffer, the message carried the map: no request to the exporter.
   */
  map?: HandoffMap;
}

/** Posts of each port not yet made, in order: a post waits for the ones before it. */
const queues = new WeakMap<object, Promise<void>>();

/** Something with `postMessage`: a `Worker`, a `MessagePort`, `parentPort`. */
export interface MessageTarget {
  postMessage(value: unknown): void;
}

/**
 * Posts a buffer to a worker thread (or any port of this process): a duplicate of its
 * descriptor, owned by the message, plus `meta`. The receiver calls {@link receiveBuffer}
 * exactly once. A message that is never received keeps its duplicate (and so the buffer's
 * file) open until the process exits; post each message to exactly one receiver.
 *
 * @throws {DmaBufError} `EINVAL` when `buf` is not a {@link DmaBuf} or was put, when `port`
 *   has no `postMessage`, or when `meta` cannot be cloned (the duplicate is closed then);
 *   `EMFILE` when out of descriptors.
 * @example
 * ```ts
 * const worker = new Worker(new URL('./consumer.js', import.meta.url));
 * postBuffer(worker, buf, { frame: 1 });
 * buf.put(); // the message holds the file until the worker receives it
 * ```
 */
export function postBuffer(port: MessageTarget, buf: DmaBuf, meta?: unknown): Promise<void> {
  const op = 'postBuffer';
  if (port === null || typeof port !== 'object' || typeof (port as { postMessage?: unknown }).postMessage !== 'function') {
    throw new DmaBufError('EINVAL', `${op}: expected something with postMessage (a Worker, a MessagePort, parentPort)`, { op });
  }
  if (!(buf instanceof DmaBuf)) {
    throw new DmaBufError('EINVAL', `${op}: expected a DmaBuf`, { op });
  }
  try {
    structuredClone(meta);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new DmaBufError('EINVAL', `${op}: the message could not be posted (${msg}); meta must be something postMessage can clone`, { op, cause: err });
  }
  // The descriptor now: the caller may put the buffer as soon as this returns.
  const fd = buf.fd();
  const before = queues.get(port);
  if (before) return inLine(port, before.then(() => post(port, buf, fd, meta)));
  // Nothing before it: posted in this call when the offer is ready in it (the usual case).
  let posted: Now<void>;
  try {
    posted = post(port, buf, fd, meta);
  } catch (err) {
    return Promise.reject(err);
  }
  return isThenable(posted) ? inLine(port, Promise.resolve(posted)) : Promise.resolve();
}

/** Makes the next post to `port` wait for `done`. */
function inLine(port: MessageTarget, done: Promise<void>): Promise<void> {
  const tail = done.catch(() => {});
  queues.set(port, tail);
  void tail.then(() => { if (queues.get(port) === tail) queues.delete(port); });
  return done;
}

/** Ends the route's channel when the port closes or the worker exits. */
function endRouteWith(port: MessageTarget): void {
  const emitter = port as { once?: (event: string, fn: () => void) => unknown };
  if (typeof emitter.once !== 'function') return;
  const end = (): void => endRoute(port);
  emitter.once.call(port, 'close', end);
  emitter.once.call(port, 'exit', end);
}

/** Posts the message, with the exporter's offer when there is one; in this call when the offer is. */
function post(port: MessageTarget, buf: DmaBuf, fd: number, meta: unknown): Now<void> {
  // The duplicate is the buffer's own file: its key is the buffer's (no fstat).
  const key = buf.key;
  let offer: Now<HandoffOffer | null>;
  try {
    offer = offerHandoff(buf, port, process.pid, 'thread');
  } catch {
    offer = null; // the receiver imports through the file
  }
  return andThen(offer, (o) => deliver(port, fd, key, meta, o), () => deliver(port, fd, key, meta, null));
}

function deliver(port: MessageTarget, fd: number, key: string, meta: unknown, offer: HandoffOffer | null): void {
  const op = 'postBuffer';
  try {
    if (offer?.body.channel === true) endRouteWith(port);
    const message: BufferMessage = { [BUFFER_MESSAGE_MARKER]: true, fd, key, pid: process.pid, meta };
    if (offer) message.handoff = { body: offer.body, fds: [...offer.fds] };
    port.postMessage(message);
    offer?.sent();
  } catch (err) {
    offer?.failed();
    native.close(fd);
    if (err instanceof DmaBufError) throw err;
    const msg = err instanceof Error ? err.message : String(err);
    throw new DmaBufError('EINVAL', `${op}: the message could not be posted (${msg}); meta must be something postMessage can clone`, { op, cause: err });
  }
}

/**
 * Whether `value` is a message made by {@link postBuffer}.
 *
 * @example
 * ```ts
 * parentPort.on('message', async (m) => { if (isBufferMessage(m)) use(await receiveBuffer(m)); });
 * ```
 */
export function isBufferMessage(value: unknown): value is BufferMessage {
  if (value === null || typeof value !== 'object') return false;
  const m = value as Record<string, unknown>;
  return m[BUFFER_MESSAGE_MARKER] === true && typeof m.fd === 'number' && typeof m.key === 'string' && typeof m.pid === 'number';
}

/**
 * Takes the descriptor out of a message made by {@link postBuffer}: the caller owns it from
 * now on and must close it. The message is marked received (a second call fails).
 *
 * @throws {DmaBufError} `EINVAL` when `message` is not a buffer message, was already
 *   received, comes from another process, or its descriptor is no longer the one posted
 *   (then it is left alone); `EBADF` when the descriptor was closed.
 * @example
 * ```ts
 * const { fd, meta } = receiveBufferFd(message);
 * try { console.log(fstatSync(fd).ino, meta); } finally { closeSync(fd); }
 * ```
 */
export function receiveBufferFd(message: unknown): { fd: number; meta: unknown } {
  const { fd, meta, handoff } = takeMessage(message);
  // The raw descriptor only: give back what the exporter made ahead.
  if (handoff) declineHandoff({ file: fd, body: handoff.body, fds: handoff.fds, senderPid: process.pid });
  return { fd, meta };
}

function takeMessage(message: unknown): { fd: number; key: string; meta: unknown; handoff?: { body: Record<string, unknown>; fds: number[] } } {
  const op = 'receiveBuffer';
  if (!isBufferMessage(message)) {
    throw new DmaBufError('EINVAL', `${op}: not a buffer message (make one with postBuffer())`, { op });
  }
  if (message.fd === -1) {
    throw new DmaBufError('EINVAL', `${op}: the message was already received; a buffer message is received once`, { op });
  }
  if (message.pid !== process.pid) {
    throw new DmaBufError('EINVAL', `${op}: the message was posted by process ${message.pid}, and its descriptor number means nothing in this one (${process.pid}); send buffers to other processes with a BufferChannel`, { op });
  }
  const fd = checkFd(message.fd, op);
  let key: string;
  try {
    key = fileKey(fd);
  } catch (err) {
    if (DmaBufError.is(err, 'EBADF')) {
      throw new DmaBufError('EBADF', `${op}: descriptor ${fd} of the message is closed (was the message received already, or its descriptor closed by someone else?)`, { op, cause: err });
    }
    throw err;
  }
  if (key !== message.key) {
    throw new DmaBufError('EINVAL', `${op}: descriptor ${fd} is no longer the one posted (was the message received already?); it was left open`, { op });
  }
  message.fd = -1;
  const handoff = message.handoff;
  message.handoff = undefined;
  return { fd, key, meta: message.meta, ...(handoff ? { handoff } : {}) };
}

/**
 * Receives a buffer posted with {@link postBuffer}: `await DmaBuf.get(fd)` of the message's
 * descriptor, which is then closed (get takes its own reference), also when get fails. The
 * caller puts the buffer when done.
 *
 * @throws {DmaBufError} as {@link receiveBufferFd}; whatever {@link DmaBuf.get} throws.
 * @example
 * ```ts
 * parentPort!.on('message', async (m) => {
 *   if (!isBufferMessage(m)) return;
 *   const { buffer, meta } = await receiveBuffer(m);
 *   try { ... } finally { buffer.put(); }
 * });
 * ```
 */
export function receiveBuffer(message: unknown, options: ReceiveBufferOptions = {}): Promise<AdoptedHandoff & { meta: unknown }> {
  let got: AdoptedHandoff | Promise<AdoptedHandoff>;
  let meta: unknown;
  try {
    const m = takeMessage(message);
    meta = m.meta;
    // Takes the descriptor over: the buffer keeps it, or it is closed. A hand-off new to this
    // thread is adopted and mapped in this call.
    got = adoptHandoff({ file: m.fd, key: m.key, body: m.handoff?.body ?? null, fds: m.handoff?.fds ?? [], senderPid: process.pid }, { map: options?.map });
  } catch (err) {
    return Promise.reject(err);
  }
  return isThenable(got) ? Promise.resolve(got).then((g) => withMeta(g, meta)) : Promise.resolve(withMeta(got, meta));
}
