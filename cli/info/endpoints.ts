/**
 * Finding the threads that export or import buffers, and asking each for its snapshot. Every
 * such thread listens on an abstract Unix socket `@dmabuf-info.<pid>.<threadId>` (see
 * `src/remote/introspect.ts`); the listening ones are found in `/proc/net/unix` (this network
 * namespace). A thread answers only a peer of its own user, or root.
 *
 * Anyone may bind such a name, so an endpoint is believed only when its `SO_PEERCRED` is the
 * named process's (`peer.ts`), and only so much of its answer is read (`maxAnswer`), which
 * must be a well-formed snapshot of the named thread (`answer.ts`). An endpoint that fails is
 * `skipped`, with the reason, and nothing it said is used. A thread whose answer slots are all
 * taken, or whose connection queue is full, is `busy`; it is asked again, a little later,
 * until its time is up.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { DmaBufError } from '../../src/core/errors.js';
import { native, type PeerCred, type PollHandle } from '../../src/native/binding.js';
import { INTROSPECTION_PREFIX, MAX_INTROSPECTION_CLIENTS, type Snapshot } from '../../src/remote/introspect.js';
import { parseAnswer } from './answer.js';
import { holdsSocket, verifyPeer } from './peer.js';
import { formatBytes } from './format.js';

/** One listening thread, as its name says: `pid` and `threadId` are not checked yet. */
export interface Endpoint {
  address: string;
  name: string;
  pid: number;
  threadId: number;
  /** The listening socket's inode (to find which process holds it). */
  inode: string;
}

const ENDPOINT_RE = /^@(dmabuf-info\.(\d+)\.(\d+)(?:\.\d+)?)$/;

/** The listening introspection sockets in `/proc/net/unix` (this network namespace). */
export function findEndpoints(proc = '/proc'): Endpoint[] {
  let text: string;
  try {
    text = readFileSync(`${proc}/net/unix`, 'utf8');
  } catch (err) {
    throw new DmaBufError('EIO', `info: cannot read ${proc}/net/unix: ${(err as Error).message}`, { op: 'info', cause: err });
  }
  const seen = new Map<string, Endpoint>();
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const path = f.slice(7).join(' ');
    if (!path.startsWith(`@${INTROSPECTION_PREFIX}`)) continue;
    const m = ENDPOINT_RE.exec(path);
    if (!m) continue;
    // Listening sockets carry __SO_ACCEPTCON (0x10000) in Flags.
    if ((parseInt(f[3]!, 16) & 0x10000) === 0) continue;
    seen.set(path, { address: path, name: m[1]!, pid: Number(m[2]), threadId: Number(m[3]), inode: f[6]! });
  }
  return [...seen.values()];
}

/** What one thread said, or why it did not. `pid` and `uid` are its `SO_PEERCRED`, when known. */
export type QueryResult =
  | { status: 'answered'; snapshot: Snapshot; pid: number; uid: number }
  | { status: 'refused'; pid: number; uid: number }
  | { status: 'busy' | 'timeout' | 'failed'; error: string; pid: number | null; uid: number | null }
  | { status: 'skipped'; reason: string; pid: number | null; uid: number | null };

/** Options of {@link query}. */
export interface QueryOptions {
  /** Time the thread has to answer, busy or not, in milliseconds. */
  timeout: number;
  /** Largest answer read, in bytes. */
  maxAnswer: number;
  /** Where procfs is mounted. */
  proc: string;
}

/** Pause between two tries of a busy thread, in milliseconds. */
const BUSY_RETRY_MS = 50;
/** Bytes read at a time. */
const READ_CHUNK = 1 << 20;

/**
 * Asks one thread for its snapshot, trying again while it is busy, until `timeout`. Never
 * throws.
 */
export async function query(ep: Endpoint, options: QueryOptions): Promise<QueryResult> {
  const deadline = Date.now() + options.timeout;
  for (;;) {
    const r = await attempt(ep, options, deadline);
    if (r.status !== 'busy') return r;
    const left = deadline - Date.now();
    if (left <= BUSY_RETRY_MS) return r;
    await sleep(BUSY_RETRY_MS);
  }
}

/** One connection to the thread. */
function attempt(ep: Endpoint, options: QueryOptions, deadline: number): Promise<QueryResult> {
  const c = native.constants;
  let fd: number;
  try {
    fd = native.socket(c.SOCK_STREAM, true);
  } catch (err) {
    return Promise.resolve({ status: 'failed', error: (err as Error).message, pid: null, uid: null });
  }
  let cred: PeerCred;
  try {
    native.connect(fd, `\0${ep.name}`);
    cred = native.peerCred(fd);
  } catch (err) {
    native.close(fd);
    const e = err as DmaBufError;
    if (e.code === 'EAGAIN') return Promise.resolve(queueFull(ep, options.proc));
    const why = e.code === 'ECONNREFUSED' ? 'the thread stopped listening' : e.message;
    return Promise.resolve({ status: 'failed', error: why, pid: null, uid: null });
  }
  const uid = cred.uid;
  const peer = verifyPeer(ep.pid, cred, options.proc);
  if (!peer.ok) {
    native.close(fd);
    return Promise.resolve({ status: 'skipped', reason: peer.reason, pid: cred.pid, uid });
  }
  const pid = peer.pid;
  return new Promise<QueryResult>((resolve) => {
    const chunks: Buffer[] = [];
    let length = 0;
    let poll: PollHandle | null = null;
    let finished = false;
    const finish = (r: QueryResult): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (poll) native.pollClose(poll);
      native.close(fd);
      chunks.length = 0;
      resolve(r);
    };
    const timer = setTimeout(
      () => finish({ status: 'timeout', error: `no answer within ${options.timeout} ms (is its event loop blocked?)`, pid, uid }),
      Math.max(0, deadline - Date.now()),
    );
    const onEof = (): void => {
      if (length === 0) {
        finish({ status: 'refused', pid, uid });
        return;
      }
      let answer;
      try {
        answer = parseAnswer(Buffer.concat(chunks, length), ep.pid, ep.threadId);
      } catch (err) {
        finish({ status: 'skipped', reason: (err as Error).message.replace(/^info: /, ''), pid, uid });
        return;
      }
      if (answer.busy) {
        finish({ status: 'busy', error: `every answer slot is taken (${MAX_INTROSPECTION_CLIENTS} other clients are being answered)`, pid, uid });
      } else {
        finish({ status: 'answered', snapshot: answer.snapshot, pid, uid });
      }
    };
    const drain = (): void => {
      for (;;) {
        let r;
        try {
          // One byte more than the cap may hold tells an answer that is too long.
          r = native.recvmsg(fd, Math.min(READ_CHUNK, options.maxAnswer + 1 - length), 0, c.MSG_DONTWAIT);
        } catch (err) {
          const e = err as DmaBufError;
          if (e.code === 'EAGAIN') return;
          if (e.code === 'ECONNRESET') { onEof(); return; }
          finish({ status: 'failed', error: e.message, pid, uid });
          return;
        }
        if (r.data.length === 0) { onEof(); return; }
        chunks.push(r.data);
        length += r.data.length;
        if (length > options.maxAnswer) {
          finish({ status: 'skipped', reason: `its answer is longer than ${formatBytes(options.maxAnswer)} (${options.maxAnswer} bytes): cut there`, pid, uid });
          return;
        }
      }
    };
    try {
      poll = native.pollStart(fd, c.UV_READABLE | c.UV_DISCONNECT, () => drain());
      drain();
    } catch (err) {
      finish({ status: 'failed', error: (err as Error).message, pid, uid });
    }
  });
}

/**
 * A connection the kernel refused because the listener's queue is full: no `SO_PEERCRED` to
 * check, so the thread is said busy only when the named process holds the listening socket.
 */
function queueFull(ep: Endpoint, proc: string): QueryResult {
  const holds = holdsSocket(ep.pid, ep.inode, proc);
  if (holds === false) {
    return { status: 'skipped', reason: `its connection queue is full, and pid ${ep.pid} does not hold its socket: another process took the name`, pid: null, uid: null };
  }
  const busy = 'its connection queue is full: it is not accepting connections (flooded, or its event loop is blocked)';
  return { status: 'busy', error: holds ? busy : `${busy}; that it is pid ${ep.pid}'s could not be checked`, pid: null, uid: null };
}

/** Asks every thread, at most 32 at a time; the results are in the order of `endpoints`. */
export async function queryAll(endpoints: Endpoint[], options: QueryOptions): Promise<QueryResult[]> {
  const out: QueryResult[] = new Array(endpoints.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < endpoints.length) {
      const i = next++;
      out[i] = await query(endpoints[i]!, options);
    }
  };
  await Promise.all(Array.from({ length: Math.min(MAX_CONCURRENT_QUERIES, endpoints.length) }, worker));
  return out;
}

/** Most threads asked at once: at most this many answers of `maxAnswer` bytes are held at once. */
export const MAX_CONCURRENT_QUERIES = 32;
