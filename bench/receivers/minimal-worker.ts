/**
 * The least a safe JavaScript receiver of a worker hand-off can do, with no framework: the
 * floor of any JavaScript design of the receiving thread, to weigh what `receiveBuffer(m, {
 * map })` costs over it. It receives the very messages `postBuffer` makes (the exporter side
 * is the package's), and answers like `receivers/dmabuf-worker.ts`.
 *
 * Per hand-off: the message's descriptor is still the one posted (its `dev:ino` against the
 * key, as any receiver of a descriptor number must check), the memfd is sealed against
 * shrinking and growing and covers the size; then what `minimal-read.ts` does (`mmap`, one
 * view, both ends read, `munmap`; after the answer, UNMAP, DETACH and PUT as one BATCH on the
 * route's channel, carried by the first hand-off). No buffer, attachment or table object; no
 * limits, no fallback.
 *
 * Messages other than buffers: `{ kind: 'stats' }` as in `receivers/dmabuf-worker.ts`.
 */
import { parentPort } from 'node:worker_threads';
import { native } from '../../src/native/binding.js';
import { checkStorage, giveBack, readAndRelease, type MinimalOffer } from './minimal-read.js';
import { threadCpuNs, threadId } from '../costs.js';
import { observeGc } from './wire.js';

const port = parentPort!;
const gc = observeGc();
/** The route's channel to the exporter, from the first hand-off on. */
let route = -1;

interface Message {
  fd: number;
  key: string;
  pid: number;
  handoff?: { body: MinimalOffer; fds: number[] };
}

function onBuffer(m: Message): void {
  if (m.pid !== process.pid || !m.handoff) throw new Error('not a hand-off of this process');
  const h = m.handoff.body;
  const [memfd, channel] = m.handoff.fds as [number, number | undefined];
  if (h.channel && channel !== undefined) route = channel;
  if (native.statKey(m.fd) !== m.key) throw new Error('the descriptor is not the one posted');
  checkStorage(memfd, h.size);
  port.postMessage(readAndRelease(memfd, m.fd, h));
  giveBack(route, h);
}

port.on('message', (m: { kind?: string; fd?: unknown }) => {
  if (typeof m.fd === 'number') {
    try {
      onBuffer(m as Message);
    } catch (err) {
      port.postMessage({ error: String((err as Error)?.stack ?? err) });
    }
  } else if (m.kind === 'stats') {
    port.postMessage({ cpuNs: threadCpuNs(), gc: { ...gc }, tid: threadId() });
  }
});
port.postMessage({ ready: true });
