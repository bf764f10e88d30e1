/**
 * Finding the threads that export or import buffers, and asking each for its snapshot. Every
 * such thread listens on an abstract Unix socket `@dmabuf-info.<pid>.<threadId>` (see
 * `src/remote/introspect.ts`); the listening ones are found in `/proc/net/unix` (this network
 * namespace). A thread answers only a peer of its own user, or root.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { DmaBufError } from '../../src/core/errors.js';
import { native, type PollHandle } from '../../src/native/binding.js';
import { INTROSPECTION_PREFIX, type Snapshot } from '../../src/remote/introspect.js';

/** One listening thread. */
export interface Endpoint { address: string; name: string; pid: number; threadId: number }

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
    seen.set(path, { address: path, name: m[1]!, pid: Number(m[2]), threadId: Number(m[3]) });
  }
  return [...seen.values()];
}

/** What one thread said, or why it did not. */
export type QueryResult =
  | { status: 'answered'; snapshot: Snapshot; pid: number; uid: number }
  | { status: 'refused'; pid: number | null; uid: number | null }
  | { status: 'failed'; error: string; pid: number | null; uid: number | null };

/** Asks one thread for its snapshot. Never throws. */
export function query(name: string, timeout: number): Promise<QueryResult> {
  const c = native.constants;
  let fd: number;
  try {
    fd = native.socket(c.SOCK_STREAM, true);
  } catch (err) {
    return Promise.resolve({ status: 'failed', error: (err as Error).message, pid: null, uid: null });
  }
  let pid: number | null = null;
  let uid: number | null = null;
  try {
    native.connect(fd, `\0${name}`);
    const cred = native.peerCred(fd);
    pid = cred.pid;
    uid = cred.uid;
  } catch (err) {
    native.close(fd);
    const e = err as DmaBufError;
    const why = e.code === 'ECONNREFUSED' ? 'the thread stopped listening' : e.code === 'EAGAIN' ? 'the thread is not accepting connections (busy or blocked)' : e.message;
    return Promise.resolve({ status: 'failed', error: why, pid, uid });
  }
  return new Promise<QueryResult>((resolve) => {
    const chunks: Buffer[] = [];
    let poll: PollHandle | null = null;
    let finished = false;
    const finish = (r: QueryResult): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (poll) native.pollClose(poll);
      native.close(fd);
      resolve(r);
    };
    const timer = setTimeout(() => finish({ status: 'failed', error: `no answer within ${timeout} ms (is its event loop blocked?)`, pid, uid }), timeout);
    const onEof = (): void => {
      const data = Buffer.concat(chunks);
      if (data.length === 0) {
        finish({ status: 'refused', pid, uid });
        return;
      }
      try {
        const snapshot = JSON.parse(data.toString('utf8')) as Snapshot;
        if (typeof snapshot !== 'object' || snapshot === null || !Array.isArray(snapshot.exported) || !Array.isArray(snapshot.imported)) {
          throw new Error('not a snapshot');
        }
        finish({ status: 'answered', snapshot, pid: pid ?? snapshot.pid, uid: uid ?? -1 });
      } catch (err) {
        finish({ status: 'failed', error: `a malformed answer: ${(err as Error).message}`, pid, uid });
      }
    };
    const drain = (): void => {
      for (;;) {
        let r;
        try {
          r = native.recvmsg(fd, 1 << 20, 0, c.MSG_DONTWAIT);
        } catch (err) {
          const e = err as DmaBufError;
          if (e.code === 'EAGAIN') return;
          if (e.code === 'ECONNRESET') { onEof(); return; }
          finish({ status: 'failed', error: e.message, pid, uid });
          return;
        }
        if (r.data.length === 0) { onEof(); return; }
        chunks.push(Buffer.from(r.data));
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

/** Asks every thread, at most 32 at a time; the results are in the order of `endpoints`. */
export async function queryAll(endpoints: Endpoint[], timeout: number): Promise<QueryResult[]> {
  const out: QueryResult[] = new Array(endpoints.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < endpoints.length) {
      const i = next++;
      out[i] = await query(endpoints[i]!.name, timeout);
    }
  };
  await Promise.all(Array.from({ length: Math.min(32, endpoints.length) }, worker));
  return out;
}
