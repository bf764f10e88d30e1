/**
 * A fenced ring: frames pass from a producer to two consumers, a worker thread and a child
 * process, through a ring of pooled buffers, with fences only.
 *
 * The producer exports RING buffers once; each consumer imports and maps each of them once.
 * After that, no descriptor and no mapping is made per frame: each frame is a few small
 * messages and fences on the buffer's reservation object (`buf.resv`), which is one object
 * for the producer and both consumers.
 *
 * Per frame, in slot `frame % RING`:
 * - the producer waits until both consumers have claimed the slot's previous frame, then
 *   `beginCpuAccess('write')` waits for their read fences: nobody still reads the slot;
 * - it adds a write fence, announces the frame, paints it (the frame's number first, a
 *   checksum last) and signals the write fence;
 * - each consumer adds a read fence and claims the frame, waits with
 *   `beginCpuAccess('read')` for the write fence, checks the number and the checksum in
 *   place, and signals its read fence.
 *
 * A frame lost, duplicated or torn (painted while read) shows as a wrong number or checksum.
 *
 * Run (after `npm run build`):
 *
 *   node dist/examples/fenced-ring.js [frames]
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync } from 'node:fs';
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import {
  BufferChannel, CpuDevice, DmaFence, DmaFenceTimeline, isBufferMessage, postBuffer, receiveBuffer,
  systemHeap, type DmaBuf,
} from '../src/index.js';

const RING = 4;
const SIZE = 1 << 20;
const FRAMES = Number(process.argv[2] ?? 300);

/** Producer to consumers: frame `frame` is coming in slot `slot`. */
interface Announce { frame: number; slot: number }
/** Consumer to producer: my read fence for `frame` is in (with my counts so far). */
interface Claim { claim: number; verified: number; bad: number }
/** Consumer to producer: every buffer is imported and mapped. */
interface Ready { ready: true }
/** Consumer to producer, at the end. */
interface Report { done: true; verified: number; bad: number; duplicated: number }

// ---------------------------------------------------------------------------------------
// The frame: word 0 is its number, the last word the checksum of the words before it.

function fold(words: Uint32Array, n: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < n; i++) h = Math.imul(h ^ words[i]!, 0x01000193);
  return h >>> 0;
}

function paint(view: Uint8Array, frame: number): void {
  const w = new Uint32Array(view.buffer, view.byteOffset, view.byteLength >>> 2);
  w[0] = frame;
  for (let i = 1; i < w.length - 1; i++) w[i] = (frame * 2654435761 + i) >>> 0;
  w[w.length - 1] = fold(w, w.length - 1);
}

function check(view: Uint8Array, frame: number): boolean {
  const w = new Uint32Array(view.buffer, view.byteOffset, view.byteLength >>> 2);
  return w[0] === frame && w[w.length - 1] === fold(w, w.length - 1);
}

// ---------------------------------------------------------------------------------------
// The producer.

async function producer(): Promise<void> {
  const slots: { buf: DmaBuf; view: Uint8Array }[] = [];
  for (let i = 0; i < RING; i++) {
    const buf = systemHeap.allocate(SIZE, { name: `ring-${i}` });
    const att = await buf.attach(new CpuDevice({ name: 'producer' }));
    slots.push({ buf, view: (await att.map('bidirectional')).views()[0]! });
  }

  // The worker gets each buffer in a worker message, the child over a buffer channel.
  const worker = new Worker(new URL(import.meta.url));
  const [channel, theirs] = BufferChannel.pair();
  const child = spawn(process.execPath, ['--no-warnings', new URL(import.meta.url).pathname], {
    stdio: ['ignore', 'inherit', 'inherit', theirs, 'ipc'],
    env: { ...process.env, FENCED_RING_CHILD: '1' },
  });
  closeSync(theirs);
  // Listened for now: a consumer may be gone by the time the producer has read its report.
  const exited = Promise.all([once(worker, 'exit'), once(child, 'exit')]);
  for (const { buf } of slots) {
    postBuffer(worker, buf);
    await channel.send(buf);
  }

  // Claims: per slot, per consumer, the last frame whose read fence is in.
  const consumers = [
    { name: 'worker', send: (m: Announce) => worker.postMessage(m) },
    { name: 'child', send: (m: Announce) => child.send(m) },
  ];
  const claimed = slots.map(() => consumers.map(() => -1));
  const ready: Promise<void>[] = [];
  const reports: Promise<Report>[] = [];
  let wake: (() => void) | null = null;
  const listen = (i: number, on: (fn: (m: Ready | Claim | Report) => void) => void): void => {
    let isReady!: () => void;
    ready.push(new Promise((resolve) => { isReady = resolve; }));
    reports.push(new Promise((resolve) => on((m) => {
      if ('ready' in m) { isReady(); return; }
      if ('done' in m) { resolve(m); return; }
      const slot = claimed[m.claim % RING]!;
      slot[i] = Math.max(slot[i]!, m.claim);
      const w = wake; wake = null; w?.();
    })));
  };
  listen(0, (fn) => worker.on('message', fn));
  listen(1, (fn) => child.on('message', fn));
  const slotClaimed = async (slot: number, frame: number): Promise<void> => {
    while (claimed[slot]!.some((c) => c < frame)) await new Promise<void>((r) => { wake = r; });
  };

  await Promise.all(ready);
  // The write fences: one timeline, so that a frame's fence replaces the last one in buf.resv.
  const painted = new DmaFenceTimeline('frames painted');
  const started = performance.now();
  for (let frame = 0; frame < FRAMES; frame++) {
    const slot = frame % RING;
    const { buf, view } = slots[slot]!;
    await slotClaimed(slot, frame - RING);         // both consumers' read fences are in
    await buf.beginCpuAccess('write');             // ... and have signalled
    const fence = painted.create(frame + 1, { name: `frame ${frame} painted` });
    await buf.resv.add(fence, 'write');            // readers everywhere now wait for it
    for (const c of consumers) c.send({ frame, slot });
    paint(view, frame);
    await buf.endCpuAccess('write');
    fence.signal();
  }
  for (let f = Math.max(0, FRAMES - RING); f < FRAMES; f++) await slotClaimed(f % RING, f);
  for (const { buf } of slots) await buf.beginCpuAccess('write'); // every frame was read
  const seconds = (performance.now() - started) / 1000;

  worker.postMessage('done');
  child.send('done');
  const [w, c] = await Promise.all(reports);
  await exited;
  channel.close();
  for (const { buf } of slots) {
    for (const att of buf.attachments) await att.detach();
    buf.put();
  }
  for (const [name, r] of [['worker', w!], ['child', c!]] as const) {
    console.log(`[producer] the ${name} verified ${r.verified} of ${FRAMES} frames: ${r.bad} torn or misplaced, ${r.duplicated} duplicated, ${FRAMES - r.verified} lost`);
  }
  const ok = [w!, c!].every((r) => r.verified === FRAMES && r.bad === 0 && r.duplicated === 0);
  console.log(`[producer] ${FRAMES} frames of ${SIZE >> 20} MiB through a ring of ${RING} buffers in ${seconds.toFixed(2)} s (${(FRAMES / seconds).toFixed(0)} frames/s): ${ok ? 'every frame arrived once, whole' : 'FRAMES WERE LOST OR TORN'}`);
  if (!ok) process.exitCode = 1;
}

// ---------------------------------------------------------------------------------------
// A consumer (the worker or the child): the same code, other messages.

async function consumer(name: string, buffers: Promise<DmaBuf[]>, send: (m: Ready | Claim | Report) => void, on: (fn: (m: Announce | 'done') => void) => void, end: () => void): Promise<void> {
  const device = new CpuDevice({ name });
  const pool: { buf: DmaBuf; view: Uint8Array }[] = [];
  for (const buf of await buffers) {
    const att = await buf.attach(device);
    pool.push({ buf, view: (await att.map('to-device')).views()[0]! }); // mapped once
  }
  const seen = new Set<number>();
  let verified = 0;
  let bad = 0;
  let duplicated = 0;
  on(async (m) => {
    if (m === 'done') {
      for (const { buf } of pool) {
        for (const att of buf.attachments) await att.detach();
        buf.put();
      }
      send({ done: true, verified, bad, duplicated });
      end();
      return;
    }
    const { buf, view } = pool[m.slot]!;
    const reading = new DmaFence({ name: `${name} reads frame ${m.frame}` });
    await buf.resv.add(reading, 'read');           // the producer's writer now waits for it
    send({ claim: m.frame, verified, bad });
    await buf.beginCpuAccess('read');              // waits for the frame's write fence
    if (seen.has(m.frame)) duplicated += 1;
    seen.add(m.frame);
    if (check(view, m.frame)) verified += 1;
    else bad += 1;
    await buf.endCpuAccess('read');
    reading.signal();
  });
  send({ ready: true });
}

if (!isMainThread) {
  const port = parentPort!;
  const arrived: DmaBuf[] = [];
  const buffers = new Promise<DmaBuf[]>((resolve) => {
    port.on('message', async function first(m: unknown) {
      if (!isBufferMessage(m)) return;
      arrived.push((await receiveBuffer(m)).buffer);
      if (arrived.length === RING) {
        port.off('message', first);
        resolve(arrived);
      }
    });
  });
  await consumer('worker', buffers, (m) => port.postMessage(m), (fn) => port.on('message', (m: unknown) => { if (!isBufferMessage(m)) fn(m as Announce | 'done'); }), () => port.close());
} else if (process.env.FENCED_RING_CHILD) {
  const channel = BufferChannel.fromFd(3);
  const buffers = (async () => {
    const out: DmaBuf[] = [];
    for (let i = 0; i < RING; i++) out.push((await channel.receive()).buffer);
    return out;
  })();
  await consumer('child', buffers, (m) => process.send!(m), (fn) => process.on('message', (m) => fn(m as Announce | 'done')), () => {
    channel.close();
    process.disconnect();
  });
} else {
  await producer();
}
