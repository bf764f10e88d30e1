/**
 * The demo's consumer: runs in a worker thread or a child process. In zero-copy mode it
 * imports the producer's pool of frames once (`DmaBuf.get` of each descriptor), maps each
 * frame once, and then verifies each announced frame in place. In copy mode it receives each
 * frame's bytes in the message. Either way it checksums the frame and answers.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { CpuDevice, DmaBuf, type SgTable } from '../src/index.js';
import { native } from '../src/native/binding.js';
import { checksum } from './checksum.js';

/** A frame announcement. */
export interface FrameMsg {
  frame: number;
  slot: number;
  sum: number;
  /** Copy mode: the frame's bytes. */
  data?: Uint8Array;
}

/** The consumer's answer. */
export interface AckMsg {
  frame: number;
  slot: number;
  ok: boolean;
}

type Send = (msg: unknown) => void;

async function run(mode: 'zero-copy' | 'copy', fds: number[], send: Send, onMessage: (fn: (m: FrameMsg | { done: true }) => void) => void): Promise<void> {
  const views: Uint8Array[] = [];
  const cleanup: (() => Promise<void>)[] = [];
  if (mode === 'zero-copy') {
    const device = new CpuDevice({ name: isMainThread ? `child-${process.pid}` : 'worker' });
    for (const fd of fds) {
      const buf = await DmaBuf.get(fd);
      native.close(fd); // not fs.closeSync: a worker thread warns about descriptors fs did not open
      const att = await buf.attach(device);
      const sgt: SgTable = await att.map('to-device');
      views.push(sgt.views()[0]!);
      cleanup.push(async () => { await att.detach(); buf.put(); });
    }
  }
  send({ ready: true });
  onMessage((m) => {
    if ('done' in m) {
      void Promise.all(cleanup.map((f) => f())).then(() => {
        send({ done: true, maxRssKiB: process.resourceUsage().maxRSS });
        if (isMainThread) process.disconnect?.();
      });
      return;
    }
    const bytes = mode === 'zero-copy' ? views[m.slot]! : m.data!;
    const ack: AckMsg = { frame: m.frame, slot: m.slot, ok: checksum(bytes) === m.sum };
    send(ack);
  });
}

if (!isMainThread && workerData?.dmabufDemo) {
  const port = parentPort!;
  void run(workerData.mode, workerData.fds, (m) => port.postMessage(m), (fn) => port.on('message', fn));
} else if (isMainThread && process.env.DMABUF_DEMO_MODE) {
  const mode = process.env.DMABUF_DEMO_MODE as 'zero-copy' | 'copy';
  const count = Number(process.env.DMABUF_DEMO_FDS ?? 0);
  const fds = Array.from({ length: count }, (_, i) => 3 + i);
  void run(mode, fds, (m) => process.send!(m), (fn) => {
    process.on('message', (m) => fn(m as FrameMsg));
  });
}
