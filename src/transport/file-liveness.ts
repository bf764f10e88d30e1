/**
 * Whether a buffer's file is still open somewhere: "the last descriptor was closed" told apart
 * from "a holder shut the file down".
 *
 * The service end of a buffer's file reads end-of-file, and polls `POLLRDHUP` or `POLLHUP`,
 * both when the last descriptor of the file is closed in every process and when any holder
 * calls `shutdown(2)` on its descriptor (the shutdown acts on the socket that every holder
 * shares). Facts measured on Linux 6.18 with a `SOCK_SEQPACKET` pair, service end A, file B:
 *
 * | after                  | poll(A)            | ET epoll, empty mask | SIOCOUTQ(A) | sock_diag peer of A |
 * | ---------------------- | ------------------ | -------------------- | ----------- | ------------------- |
 * | a holder's `SHUT_RD`   | (nothing new)      | nothing              | canary      | B                   |
 * | a holder's `SHUT_WR`   | IN RDHUP           | nothing              | canary      | B                   |
 * | a holder's `SHUT_RDWR` | IN RDHUP HUP       | HUP (once)           | canary      | B                   |
 * | the last close         | IN RDHUP HUP *ERR* | HUP ERR (once more)  | 0           | 0                   |
 *
 * Three witnesses, cheapest first:
 * 1. **The canary.** At creation the service end sends one byte into the file, where it stays
 *    unread (holders never read the file). When the file is released with the byte still
 *    queued, the kernel sets `ECONNRESET` on the service end: `POLLERR`, and `recv` fails once
 *    with `ECONNRESET`. No shutdown sets it. So `POLLERR` means "last close" for certain.
 * 2. **The canary's bytes in flight.** While the byte sits in the file's queue, `SIOCOUTQ` of
 *    the service end counts it: the file exists, so an end-of-file with bytes in flight is a
 *    shutdown. Releasing the file frees the byte (0).
 * 3. **Socket diagnostics.** A holder may read the canary (it holds the file: it may). Then
 *    only the kernel's socket diagnostics can tell: `NETLINK_SOCK_DIAG` with `UDIAG_SHOW_PEER`
 *    for the service end shows the file's inode while the file exists, and 0 once it is
 *    released. A query walks every Unix socket of the network namespace (about 15 ns each:
 *    0.3 ms with 18,000 sockets), so it is the last resort, and callers rate-limit it.
 *
 * Without `CONFIG_UNIX_DIAG` (or where netlink is forbidden) the third witness is missing:
 * then an end-of-file whose canary was read is taken as the last close, as before this
 * module existed, and a warning says so once per thread.
 *
 * @module
 */
import { native } from '../native/binding.js';
import { DmaBufError } from '../core/errors.js';

/** What {@link fileState} concluded about a buffer's file. */
export type FileState =
  /** No descriptor of the file remains anywhere: release may run. */
  | 'closed'
  /** The file is open somewhere, and nobody shut it down. */
  | 'open'
  /** The file is open somewhere, and a holder shut it down (the service end reads end-of-file). */
  | 'shut-down'
  /** Cannot tell now (out of descriptors or memory for the query): ask again later. */
  | 'retry';

/** The canary: one byte the service end queues into the file at creation. */
const CANARY = Buffer.from([0x64]);

/** Errors of a sock_diag query that say "try again later", not "unavailable". */
const TRANSIENT = new Set(['EMFILE', 'ENFILE', 'ENOMEM', 'ENOBUFS', 'EAGAIN', 'EINTR']);

let diagUnavailable = false;
let warned = false;

/**
 * Queues the canary into the file from its service end. Call it before `SO_PASSCRED` is turned
 * on for the service end (a send from a socket with `SO_PASSCRED` autobinds it to an abstract
 * name). Returns whether it was queued; without it, the first two witnesses are missing.
 */
export function queueCanary(serviceFd: number): boolean {
  try {
    return native.sendmsg(serviceFd, CANARY, [], native.constants.MSG_DONTWAIT, true) === CANARY.length;
  } catch {
    return false;
  }
}

/** Whether `revents` of the service end say end-of-file or hang-up. */
export function hungUp(revents: number): boolean {
  const c = native.constants;
  return (revents & (c.POLLHUP | c.POLLRDHUP | c.POLLERR)) !== 0;
}

/**
 * Tells whether the file whose service end is `serviceFd` is still open somewhere. `canary`
 * says whether {@link queueCanary} succeeded for it. `mayQueryDiag` false skips the costly
 * third witness and answers `'retry'` where it would be needed (for rate limiting).
 * Never throws.
 */
export function fileState(serviceFd: number, canary: boolean, mayQueryDiag = true): FileState {
  const c = native.constants;
  let revents: number;
  try {
    revents = native.pollNow(serviceFd, c.POLLIN | c.POLLRDHUP);
  } catch {
    return 'closed'; // the service end itself is gone: nothing can reach the buffer any more
  }
  if ((revents & c.POLLERR) !== 0) return 'closed';
  if ((revents & (c.POLLHUP | c.POLLRDHUP)) === 0) return 'open';
  if (canary) {
    try {
      if (native.sockOutq(serviceFd) > 0) return 'shut-down';
    } catch {
      // fall through to the diagnostics
    }
  }
  if (!mayQueryDiag) return 'retry';
  const peer = diagPeer(serviceFd);
  if (peer === 'retry') return 'retry';
  if (peer === null) {
    warnUnavailable();
    return 'closed';
  }
  return peer === 0 ? 'closed' : 'shut-down';
}

/**
 * The inode of the peer of the Unix socket `fd` by the kernel's socket diagnostics: 0 when the
 * peer is closed; null when the diagnostics are unavailable; `'retry'` on a transient failure.
 */
function diagPeer(fd: number): number | null | 'retry' {
  if (diagUnavailable) return null;
  let ino: number;
  try {
    ino = Number(native.fstat(fd).ino);
  } catch {
    return 'retry';
  }
  try {
    return native.unixDiagPeer(ino);
  } catch (err) {
    const code = err instanceof DmaBufError ? err.code : '';
    if (TRANSIENT.has(code)) return 'retry';
    // ENOENT for a socket this thread holds open: no UNIX_DIAG; EPERM/EACCES/EPROTONOSUPPORT:
    // netlink is forbidden or missing. Either way, it will not get better.
    diagUnavailable = true;
    return null;
  }
}

function warnUnavailable(): void {
  if (warned) return;
  warned = true;
  process.emitWarning(
    'dmabuf: the kernel\'s socket diagnostics (NETLINK_SOCK_DIAG with CONFIG_UNIX_DIAG) are unavailable here, so an exporter cannot tell a holder\'s shutdown(2) of a buffer\'s file from its last close once the file\'s canary was read: such a buffer is released when its service end reads end-of-file, even if other processes still hold it',
    'DmaBufWarning',
  );
}

/**
 * For an importer whose send into a buffer's file failed with `EPIPE`: whether the file was
 * shut down by a holder while its exporter is alive (the file's peer, the service end, still
 * exists: a socket that can still reach its peer fails a send only after a shutdown), rather
 * than its exporter being gone (or the socket never being a buffer's file). False when it
 * cannot tell.
 */
export function shutDownByHolder(fileFd: number): boolean {
  const peer = diagPeer(fileFd);
  return typeof peer === 'number' && peer !== 0;
}

/** The error of a `get` through a file that a holder shut down (see {@link shutDownByHolder}). */
export function holderShutDown(fd: number, cause: unknown): DmaBufError {
  return new DmaBufError('ESHUTDOWN', `get: descriptor ${fd}: a holder of this buffer shut its file down (shutdown(2) on a descriptor of it), so no new importer can reach the exporter through it; processes that already got the buffer keep working. Have the exporter's thread send the buffer over a BufferChannel (its offer needs no message through the file), or export a new one`, { op: 'get', cause });
}
