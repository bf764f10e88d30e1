/**
 * Case 8: the fenced ring against the pooled message ring, at 8 MiB, in the same run. Both
 * pass frames between this process and a child through a ring of 8 buffers exported here and
 * mapped once on both sides; no descriptor and no mapping per frame.
 *
 * - The pooled message ring (case 3's, `pooled.ts`, event-loop mode): per frame the sender
 *   writes the slot, sends its number, and waits for the receiver's answer: one frame at a
 *   time, by construction.
 * - The fenced ring (`cli/fenced-ring.ts`, `receivers/fenced.ts`): per frame the producer
 *   waits for the slot (the consumer's claim of its previous frame), then
 *   `beginCpuAccess('write', { fence })` adds the frame's write fence to the slot's
 *   reservation object after the consumer's read fence and waits for it; it announces the
 *   frame, writes it and signals. The consumer's `beginCpuAccess('read', { fence })` adds its
 *   read fence after the write fence and waits for that (one RESV_WAIT to the exporter,
 *   carrying the read fence); it claims the frame, reads and signals. Up to 8 frames are in
 *   flight.
 *
 * Two kinds of frame: "ends" (the first and last byte written and read, as case 3: the cost
 * of the synchronisation alone) and "full" (every byte written with `fill` and read, compared
 * 4 bytes at a time: a frame's real work, which the fenced ring overlaps on both sides).
 */
import { once } from 'node:events';
import { CpuDevice, systemHeap, type DmaBuf, type DmaBufAttachment } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { RingProducer } from '../../cli/fenced-ring.js';
import { MiB, fmtTime, now, receiver, stats, track, type BenchCase, type CaseResult, type Context, type Row, type Target } from '../harness.js';
import { startRingReceiver, watchPackets } from '../receivers/wire.js';
import { dmabufRing, type RingWork } from './pooled.js';

const RING = 8;
const FRAME = 8 * MiB;
const ROUNDS = 2;

/** What one run of a ring gave: the per-frame times (ns) and the frames per second. */
interface Measured {
  times: number[];
  fps: number;
  /** Fenced ring: CPU time per frame (µs, user + system) of the producer and of the consumer. */
  cpu?: { producer: number; consumer: number };
}

/** The fenced ring: per-frame periods (ns, between frames finished) and frames per second. */
async function fencedRing(ctx: Context, work: RingWork): Promise<Measured> {
  const { child, link, reply, notify: ntfMine } = startRingReceiver(receiver('fenced'), track);
  const bufs: DmaBuf[] = [];
  const atts: DmaBufAttachment[] = [];
  const slots: { buf: DmaBuf; view: Uint8Array }[] = [];
  let stopClaims = (): void => {};
  try {
    await reply();
    for (let i = 0; i < RING; i++) {
      const buf = systemHeap.allocate(work.frame, { name: `bench-fenced-${i}` });
      const att = await buf.attach(new CpuDevice({ name: 'bench-producer' }));
      bufs.push(buf);
      atts.push(att);
      slots.push({ buf, view: (await att.map('bidirectional')).views()[0]! });
    }
    const fds = bufs.map((b) => b.fd());
    link.send({ op: 'ring' }, fds);
    fds.forEach((fd) => native.close(fd));
    await reply();
    link.send({ op: 'run', full: work.full });
    await reply();
    const ring = new RingProducer(slots, 1);
    stopClaims = watchPackets(ntfMine, (data) => ring.claim(0, data.readUInt32LE(0)));
    const note = Buffer.alloc(6);
    const announce = (frame: number, slot: number): void => {
      note.writeUInt32LE(frame, 0);
      note[4] = slot;
      note[5] = 0;
      native.sendmsg(ntfMine, note, [], 0);
    };
    const write = (v: Uint8Array, frame: number): void => {
      const tag = frame & 0x7f;
      if (work.full) v.fill(tag);
      else {
        v[0] = tag;
        v[v.length - 1] = tag;
      }
    };
    const warm = Math.min(200, work.frames);
    const cpu0 = process.cpuUsage();
    for (let f = 0; f < warm; f++) await ring.produce(announce, write);
    await ring.drain();
    const times: number[] = [];
    const t0 = now();
    let last = t0;
    for (let f = 0; f < work.frames; f++) {
      await ring.produce(announce, write);
      const t = now();
      times.push(Number(t - last));
      last = t;
    }
    await ring.drain();
    const elapsed = Number(now() - t0);
    note.fill(0);
    note[5] = 1;
    native.sendmsg(ntfMine, note, [], 0);
    const cpuP = process.cpuUsage(cpu0);
    const stopped = await reply();
    if (stopped.bad !== 0) throw new Error(`fenced ring: the consumer read ${String(stopped.bad)} frames that were not whole`);
    const fps = work.frames / (elapsed / 1e9);
    const all = warm + work.frames;
    const cpu = { producer: (cpuP.user + cpuP.system) / all, consumer: Number(stopped.cpuUs) / all };
    ctx.log(`  fenced ring (${work.full ? 'full' : 'ends'}): ${fps.toFixed(0)} frames/s, median period ${fmtTime(stats(times).median)} over ${times.length} frames; CPU per frame ${cpu.producer.toFixed(0)} µs producer, ${cpu.consumer.toFixed(0)} µs consumer`);
    return { times, fps, cpu };
  } finally {
    stopClaims();
    link.close();
    native.close(ntfMine);
    for (const a of atts) await a.detach().catch(() => {});
    for (const b of bufs) b.put();
    if (child.exitCode === null) await once(child, 'exit');
  }
}

/** The pooled message ring at the same size: per-frame round trips and frames per second. */
async function messageRing(ctx: Context, work: RingWork): Promise<Measured> {
  const times = (await dmabufRing(ctx, ['loop'], work)).frames.get('loop')!;
  const fps = times.length / (times.reduce((a, b) => a + b, 0) / 1e9);
  ctx.log(`  message ring (${work.full ? 'full' : 'ends'}): ${fps.toFixed(0)} frames/s`);
  return { times, fps };
}

export const ring: BenchCase = {
  name: 'ring',
  async run(ctx): Promise<CaseResult> {
    const rows: Row[] = [];
    const targets: Target[] = [];
    const notes: string[] = [];
    const kinds = [
      { label: 'ends', work: { frame: FRAME, frames: ctx.options.frames, full: false } },
      { label: 'full', work: { frame: FRAME, frames: Math.max(10, Math.round(ctx.options.frames / 10)), full: true } },
    ];
    for (const { label, work } of kinds) {
      const fenced: Measured[] = [];
      const message: Measured[] = [];
      // Alternate the two rings in rounds, so that both meet the same conditions.
      for (let round = 0; round < ROUNDS; round++) {
        message.push(await messageRing(ctx, work));
        fenced.push(await fencedRing(ctx, work));
      }
      const fps = (ms: Measured[]): number => ms.reduce((a, m) => a + m.fps, 0) / ms.length;
      const f = fps(fenced);
      const m = fps(message);
      const what = label === 'ends' ? 'first and last byte written and read' : 'every byte written (fill) and read (compared)';
      const cpuOf = (side: 'producer' | 'consumer'): number => fenced.reduce((a, x) => a + x.cpu![side], 0) / fenced.length;
      rows.push({ case: 'ring', method: `fenced ring, ${what}`, size: FRAME, metric: 'period per frame', unit: 'ns', stats: stats(fenced.flatMap((x) => x.times)), extra: { fps: f, roundsFps: fenced.map((x) => x.fps), cpuPerFrameUs: { producer: cpuOf('producer'), consumer: cpuOf('consumer') } } });
      rows.push({ case: 'ring', method: `pooled message ring, ${what}`, size: FRAME, metric: 'round trip per frame', unit: 'ns', stats: stats(message.flatMap((x) => x.times)), extra: { fps: m, roundsFps: message.map((x) => x.fps) } });
      targets.push({
        name: `fenced ring at 8 MiB against the pooled message ring (${what})`,
        goal: 'frames per second of each, in the same run (no goal set)',
        measured: `${f.toFixed(0)} against ${m.toFixed(0)} frames/s (${(f / m).toFixed(2)}x)`,
        met: null,
      });
      notes.push(`${what}: fenced ring ${f.toFixed(0)} frames/s (rounds: ${fenced.map((x) => x.fps.toFixed(0)).join(', ')}; CPU per frame, warm-up included: ${cpuOf('producer').toFixed(0)} µs in the producer, ${cpuOf('consumer').toFixed(0)} µs in the consumer), pooled message ring ${m.toFixed(0)} frames/s (rounds: ${message.map((x) => x.fps.toFixed(0)).join(', ')}); ${work.frames} frames per round after ${Math.min(200, work.frames)} warm-up frames, ${ROUNDS} rounds alternating.`);
    }
    return {
      name: 'ring',
      title: 'Fenced ring against the pooled message ring, 8 MiB frames',
      description: 'Case 8',
      rows,
      notes: [
        `A ring of ${RING} buffers of ${FRAME / MiB} MiB exported here and mapped once by this process and a child. Pooled message ring (case 3's protocol, event loop): per frame the sender writes the slot, sends one byte, and waits for the receiver's two-byte answer; one frame at a time; the row's time is that round trip. Fenced ring (cli/fenced-ring.ts): per frame the producer waits for the slot (the consumer's claim of the slot's previous frame), then beginCpuAccess('write', { fence }) adds the frame's write fence to the slot's reservation object after the consumer's read fence and waits for it; it announces the frame (6 bytes), writes it and signals; the consumer's beginCpuAccess('read', { fence }) adds its read fence after the write fence and waits for it (one RESV_WAIT carrying the read fence's fence file, answered once the write fence signalled), then it claims the frame (4 bytes back), reads and signals its read fence; up to ${RING} frames in flight; the row's time is the period between frames finished (a median of bursts and waits). Frames per second: frames over the whole timed span (fenced: until the ring drained), averaged over the rounds.`,
        ...notes,
      ],
      targets,
    };
  },
};
