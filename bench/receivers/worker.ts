/**
 * The worker-thread receiver. Messages:
 * - `{ kind: 'bytes' | 'sab', data, read, t0 }`: reads `data` (a copied Uint8Array or a
 *   SharedArrayBuffer) and answers `{ first, last, tRead }`.
 * - `{ kind: 'atomics', ctl, data }`: answers, then serves hand-offs of the shared `data` in
 *   Atomics.wait until the sequence is set to -1 (see SabAtomicsMethod), then answers again.
 * - `{ kind: 'ring', ctl, slots, async }`: the pooled ping-pong (see cases/pooled.ts).
 */
import { parentPort } from 'node:worker_threads';
import { readEnds, sumAll, waitAsync } from './wire.js';

interface Request { kind: string; data?: Uint8Array | SharedArrayBuffer; read?: string; ctl?: SharedArrayBuffer; slots?: SharedArrayBuffer[]; async?: boolean }

function atomicsLoop(ctlBuf: SharedArrayBuffer, data: SharedArrayBuffer): void {
  const ctl = new Int32Array(ctlBuf);
  const times = new BigInt64Array(ctlBuf, 32, 2);
  const view = new Uint8Array(data);
  let seen = 0;
  for (;;) {
    Atomics.wait(ctl, 0, seen);
    const seq = Atomics.load(ctl, 0);
    if (seq < 0) return;
    if (seq === seen) continue;
    seen = seq;
    const [first, last] = readEnds(view);
    if (Atomics.load(ctl, 2) === 1) sumAll(view);
    times[0] = process.hrtime.bigint();
    ctl[4] = first;
    ctl[5] = last;
    Atomics.store(ctl, 1, seq);
    Atomics.notify(ctl, 1);
  }
}

/**
 * The pooled ping-pong: ctl[0] is the frame the main thread published (slot in ctl[2]),
 * ctl[1] the frame acknowledged; the ack carries the first and last byte read (ctl[3], ctl[4]).
 */
function ringSync(ctlBuf: SharedArrayBuffer, slots: Uint8Array[]): void {
  const ctl = new Int32Array(ctlBuf);
  let seen = 0;
  for (;;) {
    Atomics.wait(ctl, 0, seen);
    const seq = Atomics.load(ctl, 0);
    if (seq < 0) return;
    if (seq === seen) continue;
    seen = seq;
    answerFrame(ctl, slots, seq);
  }
}

/** Reads the announced slot's ends and answers frame `seq`. */
function answerFrame(ctl: Int32Array, slots: Uint8Array[], seq: number): void {
  const [first, last] = readEnds(slots[ctl[2]!]!);
  ctl[3] = first;
  ctl[4] = last;
  Atomics.store(ctl, 1, seq);
  Atomics.notify(ctl, 1);
}

async function ringAsync(ctlBuf: SharedArrayBuffer, slots: Uint8Array[]): Promise<void> {
  const ctl = new Int32Array(ctlBuf);
  let seen = 0;
  for (;;) {
    const w = waitAsync(ctl, 0, seen);
    if (w.async) await w.value;
    const seq = Atomics.load(ctl, 0);
    if (seq < 0) return;
    if (seq === seen) continue;
    seen = seq;
    answerFrame(ctl, slots, seq);
  }
}

parentPort!.on('message', (m: Request & { t0?: bigint }) => {
  if (m.kind === 'bytes' || m.kind === 'sab') {
    const view = m.data instanceof SharedArrayBuffer ? new Uint8Array(m.data) : m.data!;
    const [first, last] = readEnds(view);
    if (m.read === 'all') sumAll(view);
    const tRead = process.hrtime.bigint();
    parentPort!.postMessage({ first, last, tRead });
  } else if (m.kind === 'atomics') {
    parentPort!.postMessage({ ready: true });
    atomicsLoop(m.ctl!, m.data as SharedArrayBuffer);
    parentPort!.postMessage({ stopped: true });
  } else if (m.kind === 'ring') {
    const slots = m.slots!.map((s) => new Uint8Array(s));
    parentPort!.postMessage({ ready: true });
    if (m.async) {
      void ringAsync(m.ctl!, slots).then(() => parentPort!.postMessage({ stopped: true }));
    } else {
      ringSync(m.ctl!, slots);
      parentPort!.postMessage({ stopped: true });
    }
  }
});
