/**
 * The demo's consumer: runs in a worker thread or a child process. In zero-copy mode it
 * imports the producer's pool of frames once (`DmaBuf.get` of each descriptor) and maps each
 * frame once; then, for each announced frame, it adds a read fence to the frame's
 * reservation object, claims the frame, waits for the producer's write fence
 * (`beginCpuAccess('read')`), verifies the sealed frame in place and signals its read fence
 * (see `fenced-ring.ts`). In copy mode it receives each frame's bytes in the message,
 * checksums them and answers.
 */
import { isMainThread, parentPort, workerData } from 'node:worker_threads';
import { CpuDevice, DmaBuf, type SgTable } from '../src/index.js';
import { native } from '../src/native/binding.js';
import { checksum, verifySealed } from './checksum.js';
import { consumeFrame } from './fenced-ring.js';

/** A frame announcement. */
export interface FrameMsg {
  frame: number;
  slot: number;
  /** Copy mode: the frame's checksum. */
  sum?: number;
  /** Copy mode: the frame's bytes. */
  data?: Uint8Array;
}

/** Copy mode: the consumer's answer. */
export interface AckMsg {
  frame: number;
  slot: number;
  ok: boolean;
}

/** Zero-copy mode: the consumer's read fence for `claim` is in; what it verified so far. */
export interface ClaimMsg {
  claim: number;
  verified: number;
  failures: number;
}

/** The consumer's last word. */
export interface DoneMsg {
  done: true;
  maxRssKiB: number;
  verified: number;
  failures: number;
}

type Send = (msg: unknown) => void;

async function run(mode: 'zero-copy' | 'copy', fds: number[], send: Send, onMessage: (fn: (m: FrameMsg | { done: true }) => void) => void): Promise<void> {
  const pool: { buf: DmaBuf; view: Uint8Array }[] = [];
  const cleanup: (() => Promise<void>)[] = [];
  if (mode === 'zero-copy') {
    const device = new CpuDevice({ name: isMainThread ? `child-${process.pid}` : 'worker' });
    for (const fd of fds) {
      const buf = await DmaBuf.get(fd);
      native.close(fd); // not fs.closeSync: a worker thread warns about descriptors fs did not open
      const att = await buf.attach(device);
      const sgt: SgTable = await att.map('to-device');
      pool.push({ buf, view: sgt.views()[0]! });
      cleanup.push(async () => { await att.detach(); buf.put(); });
    }
  }
  let verified = 0;
  let failures = 0;
  send({ ready: true });
  onMessage((m) => {
    if ('done' in m) {
      void Promise.all(cleanup.map((f) => f())).then(() => {
        const last: DoneMsg = { done: true, maxRssKiB: process.resourceUsage().maxRSS, verified, failures };
        send(last);
        if (isMainThread) process.disconnect?.();
      });
      return;
    }
    if (mode === 'copy') {
      const ack: AckMsg = { frame: m.frame, slot: m.slot, ok: checksum(m.data!) === m.sum };
      send(ack);
      return;
    }
    const { buf, view } = pool[m.slot]!;
    const claim = (): void => {
      const msg: ClaimMsg = { claim: m.frame, verified, failures };
      send(msg);
    };
    consumeFrame(buf, claim, () => {
      verified += 1;
      if (!verifySealed(view, m.frame)) failures += 1;
    }).catch((err: unknown) => {
      console.error(`demo consumer: frame ${m.frame}: ${String(err)}`);
      process.exitCode = 1;
    });
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
