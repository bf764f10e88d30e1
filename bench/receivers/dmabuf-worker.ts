/**
 * The worker-thread receiver of the dmabuf worker methods and of the small-object baseline,
 * in this one thread (so that they compare the same two threads; the copying baseline has a
 * worker of its own, whose garbage stays out of this one's collections). Messages:
 *
 * - a buffer message (`postBuffer`): `receiveBuffer(m, { map: { device: cpu, direction:
 *   'to-device' } })`, read the first and last byte, unmap, detach, put, answer
 *   `{ first, last, stale, tMapped, tRead, tDone }` (a small postMessage; `stale`: the view's
 *   byteLength after unmap, 0 when unmap detached it).
 * - `{ kind: 'small' }`: the bare postMessage of a small object; answers `{ tRead }`.
 * - `{ kind: 'stats' }`: this thread's CPU time (ns, /proc/thread-self/schedstat), its garbage
 *   collections, and its kernel thread id (for strace).
 */
import { parentPort } from 'node:worker_threads';
import { CpuDevice, isBufferMessage, receiveBuffer } from '../../src/index.js';
import { threadCpuNs, threadId } from '../costs.js';
import { observeGc, readAndRelease } from './wire.js';

const port = parentPort!;
const map = { device: new CpuDevice({ name: 'bench-worker-receiver' }), direction: 'to-device' as const };

const gc = observeGc();

async function onBuffer(m: unknown): Promise<void> {
  const got = await receiveBuffer(m, { map });
  const tMapped = process.hrtime.bigint();
  const { first, last, stale, tRead, tDone } = await readAndRelease(got);
  port.postMessage({ first, last, stale, tMapped, tRead, tDone });
}

port.on('message', (m: { kind?: string }) => {
  if (isBufferMessage(m)) {
    onBuffer(m).catch((err: unknown) => port.postMessage({ error: String((err as Error)?.stack ?? err) }));
  } else if (m.kind === 'small') {
    port.postMessage({ tRead: process.hrtime.bigint() });
  } else if (m.kind === 'stats') {
    port.postMessage({ cpuNs: threadCpuNs(), gc: { ...gc }, tid: threadId() });
  }
});
port.postMessage({ ready: true });
