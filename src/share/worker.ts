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
}

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
export function postBuffer(port: MessageTarget, buf: DmaBuf, meta?: unknown): void {
  const op = 'postBuffer';
  if (port === null || typeof port !== 'object' || typeof (port as { postMessage?: unknown }).postMessage !== 'function') {
    throw new DmaBufError('EINVAL', `${op}: expected something with postMessage (a Worker, a MessagePort, parentPort)`, { op });
  }
  if (!(buf instanceof DmaBuf)) {
    throw new DmaBufError('EINVAL', `${op}: expected a DmaBuf`, { op });
  }
  const fd = buf.fd();
  try {
    const message: BufferMessage = { [BUFFER_MESSAGE_MARKER]: true, fd, key: fileKey(fd), pid: process.pid, meta };
    port.postMessage(message);
  } catch (err) {
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
  return { fd, meta: message.meta };
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
export async function receiveBuffer(message: unknown): Promise<{ buffer: DmaBuf; meta: unknown }> {
  const { fd, meta } = receiveBufferFd(message);
  try {
    return { buffer: await DmaBuf.get(fd), meta };
  } finally {
    try {
      native.close(fd);
    } catch {
      // gone either way
    }
  }
}
