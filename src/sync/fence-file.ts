/**
 * The fence file: how a fence's outcome reaches other threads and processes.
 *
 * A fence file is the read end of a packet-mode pipe (`pipe2(O_DIRECT)`). Only the thread
 * that signals the fence holds the write end; it is close-on-exec and registered with the
 * addon's per-thread descriptor set, so it closes when that thread ends, and the kernel
 * closes it when the process dies. The outcome is the number of bytes in the pipe, counted
 * with `ioctl(FIONREAD)` and never read, so every holder of a copy sees the same outcome:
 *
 * | bytes in the pipe | write end | outcome |
 * | --- | --- | --- |
 * | 0 | open | not signalled yet |
 * | 256 ({@link SIGNALED_BYTES}) | any | signalled, no error |
 * | n in 1..255 | any | signalled with the error whose Linux errno is n (`EIO` stands for a code that is not an errno name) |
 * | 0 | closed | the signaller ended without signalling: `EPIPE` |
 *
 * The signaller writes its count in one write of at most `PIPE_BUF` bytes (so a reader sees
 * all of it or none of it), and closes its two ends about a millisecond later
 * ({@link retireFenceFile}). A reader polls for readable (data or hang-up) and counts.
 *
 * Why a pipe and not an eventfd or a socket: an eventfd cannot tell that its signaller died,
 * and any holder can write to it; any holder of a socket can `shutdown()` it, which looks like
 * a signal to everyone. A holder of a pipe's read end can neither write to it nor close the
 * write end. It can only read, and since success is the largest count and the pipe is in
 * packet mode (a read of any size takes the whole packet), reading can only turn an outcome
 * into "0 bytes and closed", which is `EPIPE`: a hostile holder can make later observers see
 * an error, never a success, and never a signal before the signaller's. The write end is
 * owned by one thread (not the process) because a worker is a signaller too: when it ends, the
 * addon closes its descriptors, and its fences' holders read `EPIPE`.
 *
 * This module knows the format and nothing of fences.
 *
 * @module
 */
import os from 'node:os';
import { DmaBufError } from '../core/errors.js';
import { closeOwned, native, own } from '../native/binding.js';
import { syncNative, type SyncConstants } from '../native/sync-binding.js';

/** The byte count of a fence signalled without an error: larger than any errno. */
export const SIGNALED_BYTES = 256;

/** The errno a code travels as when it is not an errno name of this platform. */
const FALLBACK_CODE = 'EIO';

let constants: SyncConstants | undefined;
function k(): SyncConstants {
  return (constants ??= syncNative.syncConstants());
}

const errnoOf = new Map<string, number>();
const codeOf = new Map<number, string>();
for (const [name, n] of Object.entries(os.constants.errno)) {
  if (n > 0 && n < SIGNALED_BYTES) {
    errnoOf.set(name, n);
    if (!codeOf.has(n)) codeOf.set(n, name);
  }
}

/** What a fence file says. `error` is the code of the error, or undefined for success. */
export type FenceFileState =
  | { signaled: false }
  | { signaled: true; code: string | undefined; died: boolean };

/** The bytes a signaller writes (never changed: only their count matters). */
const ZEROS = new Uint8Array(SIGNALED_BYTES);

/** The byte count that carries `code` (undefined: success). */
export function bytesForCode(code: string | undefined): number {
  if (code === undefined) return SIGNALED_BYTES;
  return errnoOf.get(code) ?? errnoOf.get(FALLBACK_CODE)!;
}

/** The code a byte count carries; null when no signaller writes that count. */
export function codeForBytes(bytes: number): string | undefined | null {
  if (bytes === SIGNALED_BYTES) return undefined;
  if (bytes > 0 && bytes < SIGNALED_BYTES) return codeOf.get(bytes) ?? FALLBACK_CODE;
  return null;
}

/** A new fence file: both ends are registered with this thread, which must close them. */
export function createFenceFile(): { read: number; write: number } {
  const [read, write] = syncNative.pipe();
  own(read);
  own(write);
  return { read, write };
}

/**
 * Signals through `write` (the write end of a fence file): writes the count. The caller
 * closes the write end afterwards; closing it is not needed for the outcome, which readers
 * take from the count. A pipe nobody reads any more (`EPIPE`) is not an error: nobody is
 * left to tell.
 */
export function signalFenceFile(write: number, code: string | undefined): void {
  try {
    syncNative.write(write, ZEROS.subarray(0, bytesForCode(code)));
  } catch (err) {
    if (!DmaBufError.is(err, 'EPIPE')) throw err;
  }
}

/** The ends of signalled fence files, waiting to be closed (see {@link retireFenceFile}). */
let retiring: number[] = [];
const RETIRE_DELAY_MS = 1;

/**
 * Closes the two ends of a signalled fence file (registered with this thread) about a
 * millisecond later, with the others of that moment. Readers need only the count, and
 * closing at once lands on the wake-up that the count just caused and slows it: closing the
 * last write end wakes every poller of the pipe again (a hang-up), and any close takes the
 * pipe's lock while the woken readers count. If the thread ends first, the addon closes the
 * descriptors with the thread's others.
 */
export function retireFenceFile(read: number, write: number): void {
  retiring.push(read, write);
  if (retiring.length > 2) return;
  // One timer per thread, re-armed: cheaper than a new one each time.
  if (retireTimer) {
    retireTimer.refresh();
  } else {
    retireTimer = setTimeout(closeRetired, RETIRE_DELAY_MS).unref();
  }
}

let retireTimer: NodeJS.Timeout | undefined;

function closeRetired(): void {
  const fds = retiring;
  retiring = [];
  for (const fd of fds) closeOwned(fd);
}

/**
 * A new fence file that is already signalled with `code`: the read end, owned by the caller
 * (not registered with this thread).
 */
export function signaledFenceFile(code: string | undefined): number {
  const [read, write] = syncNative.pipe();
  try {
    syncNative.write(write, ZEROS.subarray(0, bytesForCode(code)));
  } catch (err) {
    native.close(read);
    throw err;
  } finally {
    native.close(write);
  }
  return read;
}

/** What `fd` (a fence file) says now. */
export function readFenceFile(fd: number): FenceFileState {
  let bytes = syncNative.bytesReadable(fd);
  if (bytes === 0) {
    // Nothing written yet, or the signaller is gone. After a hang-up the count can no longer
    // change: read it again, since the signaller may have written and closed in between.
    const c = native.constants;
    if ((native.pollNow(fd, c.POLLIN) & c.POLLHUP) === 0) return { signaled: false };
    bytes = syncNative.bytesReadable(fd);
    if (bytes === 0) return { signaled: true, code: 'EPIPE', died: true };
  }
  const code = codeForBytes(bytes);
  return { signaled: true, code: code === null ? 'EPROTO' : code, died: false };
}

/**
 * Checks that `fd` is a fence file and returns its identity (the pipe's inode) and state.
 *
 * @throws {DmaBufError} `EBADF` when `fd` is not an integer from 0 to 2³¹−1 or not open;
 *   `EINVAL` when it is not the read end of an anonymous pipe, or the pipe holds a count
 *   that no signaller writes.
 */
export function inspectFenceFile(fd: number, op: string): { key: string; state: FenceFileState } {
  if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) {
    throw new DmaBufError('EBADF', `${op}: ${String(fd)} is not a descriptor (an integer from 0 to 2^31-1)`, { op });
  }
  const notFenceFile = (why: string): DmaBufError =>
    new DmaBufError('EINVAL', `${op}: descriptor ${fd} is not a fence file: ${why}; pass a descriptor from fence.toFd() or a kernel sync_file`, { op });
  const st = native.fstat(fd); // EBADF when closed
  if ((st.mode & native.constants.S_IFMT) !== native.constants.S_IFIFO) throw notFenceFile('it is not a pipe');
  if (st.dev !== pipeDevice()) throw notFenceFile('it is a named FIFO, not an anonymous pipe');
  if ((syncNative.statusFlags(fd) & k().O_ACCMODE) !== k().O_RDONLY) throw notFenceFile('it is the write end of a pipe');
  // Only the count: an empty pipe whose signaller is gone reads as unsignalled here, and its
  // watcher (or the next look) finds the hang-up at once.
  const bytes = syncNative.bytesReadable(fd);
  if (bytes === 0) return { key: `${st.dev}:${st.ino}`, state: { signaled: false } };
  const code = codeForBytes(bytes);
  if (code === null) throw notFenceFile(`the pipe holds ${bytes} bytes, a count no fence writes`);
  return { key: `${st.dev}:${st.ino}`, state: { signaled: true, code, died: false } };
}

let pipefsDev: bigint | undefined;

/**
 * The device number of the pipe file system, which every anonymous pipe of this boot shares
 * (a named FIFO has its own file system's): learnt once per thread from a pipe of our own.
 */
function pipeDevice(): bigint {
  if (pipefsDev === undefined) {
    const [read, write] = syncNative.pipe();
    try {
      pipefsDev = native.fstat(read).dev;
    } finally {
      native.close(read);
      native.close(write);
    }
  }
  return pipefsDev;
}

/** The pipe's identity of a fence file this thread created (for the same key as {@link inspectFenceFile}). */
export function fenceFileKey(fd: number): string {
  const st = native.fstat(fd);
  return `${st.dev}:${st.ino}`;
}
