/**
 * A stress test of buffers' reservation objects across processes: 4 producer processes and 1
 * consumer (this process, which exports a ring of buffers per producer) pass 10,000 frames
 * with fences only. Each producer waits with `beginCpuAccess('write')` for the consumer's read
 * fences, adds its write fence to the slot's reservation object, announces the frame, paints
 * it and signals; the consumer adds its read fence, claims the frame, waits with
 * `beginCpuAccess('read')`, checks the frame and signals. No frame is lost, duplicated or torn,
 * and the descriptors of every process are back at their count at the start.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync } from 'node:fs';
import { BufferChannel, CpuDevice, DmaFence, systemHeap, type DmaBuf, type DmaBufAttachment } from '../../src/index.js';
import { usageFor } from '../../src/remote/limits.js';
import { INDEX_URL, openFdCount, waitFor } from '../helpers.js';

const PRODUCERS = 4;
const FRAMES = 10_000;
const PER_PRODUCER = FRAMES / PRODUCERS;
const RING = 4;
const SIZE = 16 * 1024;

/** Frame words: [producer, seq, pattern..., checksum of the words before it]. */
const PAINT = `
function fold(words, n) { let h = 0x811c9dc5; for (let i = 0; i < n; i++) h = Math.imul(h ^ words[i], 0x01000193); return h >>> 0; }
function paint(view, producer, seq) {
  const w = new Uint32Array(view.buffer, view.byteOffset, view.byteLength >>> 2);
  w[0] = producer; w[1] = seq;
  for (let i = 2; i < w.length - 1; i++) w[i] = (seq * 2654435761 + i * (producer + 1)) >>> 0;
  w[w.length - 1] = fold(w, w.length - 1);
}
`;

const children: ChildProcess[] = [];
after(() => { for (const c of children) if (c.exitCode === null) c.kill('SIGKILL'); });

const PRODUCER = `
import * as m from ${JSON.stringify(INDEX_URL)};
import { readdirSync } from 'node:fs';
${PAINT}
const id = Number(process.env.PRODUCER);
const frames = Number(process.env.FRAMES);
const ring = Number(process.env.RING);
const channel = m.BufferChannel.fromFd(3);
const slots = [];
for (let i = 0; i < ring; i++) {
  const { buffer, attachment, sgt } = await channel.receive({ map: { device: new m.CpuDevice({ name: 'producer ' + id }), direction: 'bidirectional' } });
  slots.push({ buffer, attachment, view: sgt.views()[0] });
}
// The descriptors of this process, less the \`dmabuf info\` listener (made once, lazily).
const { introspectionFd } = await import(new URL('./remote/introspect.js', ${JSON.stringify(INDEX_URL)}).href);
const fdCount = () => readdirSync('/proc/self/fd').filter((n) => n !== String(introspectionFd())).length;
const fdsAtStart = fdCount();
let claimed = -1;
let wake = null;
process.on('message', (msg) => {
  if (msg.claim !== undefined) { claimed = Math.max(claimed, msg.claim); const w = wake; wake = null; w?.(); }
  if (msg.exit) {
    Promise.all(slots.map(async (s) => { await s.attachment.detach(); s.buffer.put(); })).then(() => { channel.close(); process.disconnect(); });
  }
});
for (let seq = 0; seq < frames; seq++) {
  const s = slots[seq % ring];
  // The consumer holds the slot until it has claimed its last frame there (its read fence is in).
  while (claimed < seq - ring) await new Promise((r) => { wake = r; });
  await s.buffer.beginCpuAccess('write');
  const painted = new m.DmaFence({ name: 'p' + id + ' frame ' + seq });
  await s.buffer.resv.add(painted, 'write');
  process.send({ producer: id, frame: seq, slot: seq % ring });
  paint(s.view, id, seq);
  await s.buffer.endCpuAccess('write');
  painted.signal();
}
for (const s of slots) await s.buffer.beginCpuAccess('write');
await new Promise((r) => setTimeout(r, 20)); // the signalled fences' files close about 1 ms after
process.send({ done: true, fdsAtStart, fdsAtEnd: fdCount() });
`;

/** The consumer's check of a frame: its producer, its number and its checksum. */
function check(view: Uint8Array, producer: number, seq: number): string | null {
  const w = new Uint32Array(view.buffer, view.byteOffset, view.byteLength >>> 2);
  if (w[0] !== producer || w[1] !== seq) return `frame ${seq} of producer ${producer} holds frame ${w[1]} of producer ${w[0]}`;
  let h = 0x811c9dc5;
  for (let i = 0; i < w.length - 1; i++) h = Math.imul(h ^ w[i]!, 0x01000193);
  if (h >>> 0 !== w[w.length - 1]) return `frame ${seq} of producer ${producer} is torn (checksum)`;
  return null;
}

interface Producer {
  child: ChildProcess;
  channel: BufferChannel;
  slots: { buf: DmaBuf; att: DmaBufAttachment; view: Uint8Array }[];
  seen: Set<number>;
  done: Promise<Record<string, number>>;
}

test('4 producer processes and 1 consumer pass 10,000 frames with fences only: none lost, duplicated or torn, and descriptors back at their start', async () => {
  const fdsBefore = openFdCount();
  const problems: string[] = [];
  const producers: Producer[] = [];
  let verified = 0;
  for (let p = 0; p < PRODUCERS; p++) {
    const [channel, theirs] = BufferChannel.pair();
    const child = spawn(process.execPath, ['--no-warnings', '--input-type=module', '-e', PRODUCER], {
      stdio: ['ignore', 'inherit', 'inherit', theirs, 'ipc'],
      env: { ...process.env, PRODUCER: String(p), FRAMES: String(PER_PRODUCER), RING: String(RING) },
    });
    children.push(child);
    closeSync(theirs);
    const slots: Producer['slots'] = [];
    for (let i = 0; i < RING; i++) {
      const buf = systemHeap.allocate(SIZE, { name: `stress-${p}-${i}` });
      const att = await buf.attach(new CpuDevice({ name: 'consumer' }));
      slots.push({ buf, att, view: (await att.map('to-device')).views()[0]! });
      await channel.send(buf);
    }
    const seen = new Set<number>();
    let finished!: (v: Record<string, number>) => void;
    const done = new Promise<Record<string, number>>((resolve) => { finished = resolve; });
    child.on('message', (msg: { producer?: number; frame?: number; slot?: number; done?: boolean; fdsAtStart?: number; fdsAtEnd?: number }) => {
      if (msg.done) {
        finished(msg as Record<string, number>);
        return;
      }
      const { frame, slot } = msg as { frame: number; slot: number };
      const s = slots[slot]!;
      // The claim: the read fence is in the slot's reservation object before the producer
      // may come back to the slot, and its write waits for it.
      const reading = new DmaFence({ name: `consumer reads ${p}/${frame}` });
      s.buf.resv.add(reading, 'read');
      child.send({ claim: frame });
      s.buf.beginCpuAccess('read').then(async () => {
        if (seen.has(frame)) problems.push(`frame ${frame} of producer ${p} came twice`);
        seen.add(frame);
        const bad = check(s.view, p, frame);
        if (bad) problems.push(bad);
        await s.buf.endCpuAccess('read');
        reading.signal();
        verified += 1;
      }, (err: unknown) => problems.push(String(err)));
    });
    producers.push({ child, channel, slots, seen, done });
  }
  const reports = await Promise.all(producers.map((p) => p.done));
  await waitFor(() => verified === FRAMES || problems.length > 0, 30_000, 'every frame to be verified');
  assert.deepEqual(problems.slice(0, 5), [], `${problems.length} problems`);
  for (const [p, { seen }] of producers.entries()) {
    assert.equal(seen.size, PER_PRODUCER, `producer ${p}: every frame arrived once`);
    for (let f = 0; f < PER_PRODUCER; f++) assert.ok(seen.has(f), `producer ${p}: frame ${f}`);
  }
  for (const [p, r] of reports.entries()) assert.equal(r.fdsAtEnd, r.fdsAtStart, `producer ${p}'s descriptors`);
  for (const { child, channel, slots } of producers) {
    const exited = once(child, 'exit');
    child.send({ exit: true });
    await exited;
    channel.close();
    for (const s of slots) {
      await s.att.detach();
      s.buf.put();
    }
  }
  assert.deepEqual({ fences: usageFor(process.pid).fences, waits: usageFor(process.pid).waits }, { fences: 0, waits: 0 });
  await waitFor(() => openFdCount() === fdsBefore, 5000, `this process's descriptors to come back to ${fdsBefore} (now ${openFdCount()})`);
});
