/**
 * Cases 1 and 2: the cross-process first hand-off of a buffer, against its baselines, side by
 * side (each repetition runs every method once, in turn, on the same size).
 */
import { fmtSize, fmtTime, repsFor, stats, type BenchCase, type CaseResult, type Context, type Row, type Target } from '../harness.js';
import {
  DmabufMethod, FloorMethod, Payload, SabAtomicsMethod, SabPostMethod, SendMethod, StreamMethod, WorkerCopyMethod,
  compileFloor, floorCompileNote, type Method, type ReadMode, type Sample,
} from '../methods.js';

/** Runs `methods` on every size, interleaved, and returns rows of receiver, one-way and round-trip times. */
export async function runSideBySide(ctx: Context, caseName: string, methods: Method[], read: ReadMode, notes: string[]): Promise<Row[]> {
  const rows: Row[] = [];
  const live: Method[] = [];
  for (const m of methods) {
    try {
      await m.start();
      live.push(m);
    } catch (err) {
      notes.push(`${m.name}: skipped: ${(err as Error).message}`);
    }
  }
  const payload = new Payload();
  let first = true;
  try {
    for (const size of ctx.options.sizes) {
      const reps = repsFor(ctx.options, size);
      payload.reset(size);
      const samples = new Map<Method, Sample[]>();
      const active: Method[] = [];
      for (const m of live) {
        try {
          await m.prepare(size, payload);
          active.push(m);
          samples.set(m, []);
        } catch (err) {
          notes.push(`${m.name} at ${fmtSize(size)}: skipped: ${(err as Error).message}`);
        }
      }
      const cold = new Map<Method, Sample>();
      if (first) {
        // The receivers are long-lived: warm them up (JIT, first contact with the exporter)
        // before timing. The very first hand-off of each method is kept as "cold".
        for (const m of active) cold.set(m, await m.once(read));
        for (let i = 1; i < (size <= 16 << 20 ? warmup(ctx) : 1); i++) for (const m of active) await m.once(read);
        first = false;
      } else if (size < 64 << 20) {
        for (const m of active) await m.once(read);
      }
      for (let r = 0; r < reps; r++) {
        for (const m of active) samples.get(m)!.push(await m.once(read));
      }
      for (const m of active) {
        await m.free();
        rows.push(...toRows(caseName, m.name, size, samples.get(m)!, cold.get(m)));
      }
      payload.reset(0);
      const med = (m: Method): string => fmtTime(stats(samples.get(m)!.map((x) => x.receiverNs ?? x.oneWayNs)).median);
      ctx.log(`  ${fmtSize(size).padStart(7)} x${reps} (receiver, else one-way): ${active.map((m) => `${m.name} ${med(m)}`).join(' | ')}`);
    }
  } finally {
    for (const m of live) await m.close().catch(() => {});
  }
  return rows;
}

/** Untimed hand-offs per method before the first timed one. */
export function warmup(ctx: Context): number {
  return ctx.options.quick ? 5 : 20;
}

function toRows(caseName: string, method: string, size: number, samples: Sample[], cold: Sample | undefined): Row[] {
  const rows: Row[] = [];
  const row = (metric: string, xs: number[]): Row => ({ case: caseName, method, size, metric, unit: 'ns', stats: stats(xs) });
  if (samples.every((s) => s.receiverNs !== undefined)) {
    const r = row('receiver', samples.map((s) => s.receiverNs!));
    const keys = Object.keys(samples[0]?.steps ?? {});
    if (keys.length) r.steps = Object.fromEntries(keys.map((k) => [k, stats(samples.map((s) => s.steps![k]!)).median]));
    const cpuKeys = Object.keys(samples[0]?.cpu ?? {});
    // Means, not medians: the kernel splits CPU time into user and system by sampling at each
    // tick, so one hand-off's split is coarse; the mean over the repetitions is not.
    if (cpuKeys.length) r.cpu = Object.fromEntries(cpuKeys.map((k) => [k, samples.reduce((a, s) => a + s.cpu![k]!, 0) / samples.length]));
    if (samples.every((s) => s.gc)) {
      const sum = (f: (g: NonNullable<Sample['gc']>) => number): number => samples.reduce((a, s) => a + f(s.gc!), 0) / samples.length;
      r.gc = { perHandoff: sum((g) => g.count), majorPerHandoff: sum((g) => g.major), msPerHandoff: sum((g) => g.ms) };
    }
    if (cold?.receiverNs !== undefined) r.extra = { coldNs: cold.receiverNs, coldSteps: cold.steps };
    rows.push(r);
  }
  const ow = row('one-way', samples.map((s) => s.oneWayNs));
  if (cold) ow.extra = { coldNs: cold.oneWayNs };
  rows.push(ow);
  rows.push(row('round-trip', samples.map((s) => s.roundTripNs)));
  return rows;
}

export function median(rows: Row[], method: string, size: number, metric: string): number | undefined {
  return rows.find((r) => r.method === method && r.size === size && r.metric === metric)?.stats.median;
}

const FLAT_LIMIT = 2;

/** The CPU time of one hand-off on both sides, in words. */
function cpuWords(cpu: Record<string, number>): string {
  const ru = cpu['receiver user']!;
  const rs = cpu['receiver sys']!;
  const eu = cpu['exporter user']!;
  const es = cpu['exporter sys']!;
  const userShare = (ru + eu) / (ru + rs + eu + es);
  return `. One whole hand-off (with its cleanup) costs, on average, ${us(ru + rs)} of CPU in the receiver and ${us(eu + es)} in the exporter, ${(100 * userShare).toFixed(0)}% of it in user space: the time goes to JavaScript work on both sides (protocol messages, the exporter's ops, promises), not to system calls or waiting`;
}

function gcAt(rows: Row[], method: string, size: number): string {
  const g = rows.find((r) => r.method === method && r.size === size && r.metric === 'receiver')?.gc;
  return g ? g.perHandoff.toFixed(2) : '?';
}

/** What the receiver's garbage collector did at two sizes, in words. */
function gcText(rows: Row[], method: string, small: number, large: number): string {
  const g = (size: number): Row['gc'] => rows.find((r) => r.method === method && r.size === size && r.metric === 'receiver')?.gc;
  const a = g(small);
  const b = g(large);
  if (!a || !b) return '';
  return `; the receiver ran ${b.perHandoff.toFixed(2)} garbage collections per hand-off at ${fmtSize(large)} (${b.majorPerHandoff.toFixed(2)} major, ${b.msPerHandoff.toFixed(2)} ms of pauses, not counting incremental marking) against ${a.perHandoff.toFixed(2)} at ${fmtSize(small)}: V8 counts the mapping behind the view (an external ArrayBuffer of the whole buffer) as external memory, and a large one starts collections`;
}

function us(ns: number): string {
  return ns >= 1e6 ? `${(ns / 1e6).toFixed(2)} ms` : `${(ns / 1e3).toFixed(1)} µs`;
}

export const handoff: BenchCase = {
  name: 'handoff',
  async run(ctx): Promise<CaseResult> {
    const notes: string[] = [];
    compileFloor();
    const dmabuf = new DmabufMethod();
    const floor = new FloorMethod();
    const send = new SendMethod();
    const oneTrip = new DmabufMethod({ oneTrip: true });
    const methods: Method[] = [dmabuf, oneTrip, floor, send, new WorkerCopyMethod(), new StreamMethod(), new SabPostMethod(), new SabAtomicsMethod()];
    const rows = await runSideBySide(ctx, 'handoff', methods, 'ends', notes);
    if (floorCompileNote()) notes.push(floorCompileNote());
    notes.push(
      'receiver: from the moment recvmsg returned the descriptor to having read the first and last byte (dmabuf: DmaBuf.get + attach(CpuDevice) + map(\'to-device\') + read; C: mmap + read). The dmabuf receiver then unmaps, detaches, puts and acks (the "cleanup" step), which the round trip includes.',
      'one-way: from the sender starting the hand-off (dmabuf: before buf.fd(); the copies: before send/postMessage/write) to the receiver having read both bytes; both timestamps are CLOCK_MONOTONIC, the same clock in every process.',
      'round-trip: from the same start to the sender having the receiver\'s ack (a small message back), as the sender sees it; nothing is subtracted.',
      `Each repetition hands the same, already filled buffer again (a new descriptor each time for dmabuf and C); the methods take turns within each repetition. The receivers are long-lived and warmed up: ${warmup(ctx)} untimed hand-offs per method at the first size, then one more per size below 64 MiB. The very first hand-off of each method (for dmabuf, the receiver's first contact with the exporter) is kept in the JSON as coldNs.`,
      'The copying baselines (child_process.send, worker postMessage, Unix socket stream) hand over a Uint8Array of the same bytes; the stream receiver assembles the bytes into one Buffer before reading.',
    );
    notes.push('"dmabuf getMapped" is the same hand-off through DmaBuf.getMapped, which asks the exporter for the attach and the map along with the handshake: one round trip instead of three. The targets are judged on it (the best the library offers for a first hand-off); the three-call row is kept for comparison.');
    return { name: 'handoff', title: 'Cross-process first hand-off, against its baselines', description: 'Cases 1 and 2', rows, notes, targets: targets(ctx, rows, oneTrip.name, floor.name, send.name) };
  },
};

function targets(ctx: Context, rows: Row[], dmabuf: string, floor: string, send: string): Target[] {
  const out: Target[] = [];
  const sizes = ctx.options.sizes;
  // 1. At most 5x the C floor, and flat in size.
  const ratios = sizes.map((s) => {
    const d = median(rows, dmabuf, s, 'receiver');
    const f = median(rows, floor, s, 'receiver');
    return { s, d, f, r: d !== undefined && f ? d / f : undefined };
  });
  const known = ratios.filter((x) => x.r !== undefined);
  if (known.length) {
    const worst = known.reduce((a, b) => (b.r! > a.r! ? b : a));
    const met = known.every((x) => x.r! <= 5);
    const worstRow = rows.find((r) => r.method === dmabuf && r.size === worst.s && r.metric === 'receiver');
    const steps = worstRow?.steps;
    const dominant = steps ? Object.entries(steps).filter(([k]) => ['get', 'attach', 'map', 'read'].includes(k)).sort((a, b) => b[1] - a[1]) : [];
    const cpu = worstRow?.cpu;
    const cpuText = cpu ? cpuWords(cpu) : '';
    out.push({
      name: 'first hand-off ≤ 5x the C floor',
      goal: 'dmabuf receiver time ≤ 5 × C floor receiver time, at every size',
      measured: known.map((x) => `${fmtSize(x.s)}: ${x.r!.toFixed(1)}x`).join(', '),
      met,
      ...(met ? {} : { why: `worst at ${fmtSize(worst.s)}: ${us(worst.d!)} against ${us(worst.f!)}. Of the dmabuf receiver's time: ${dominant.map(([k, v]) => `${k} ${us(v)}`).join(', ')}. get, attach and map are each one request to the exporter's event loop and its answer (the HELLO handshake, ATTACH, MAP with the memfd); the C floor has none of them${cpuText}` }),
    });
  } else {
    out.push({ name: 'first hand-off ≤ 5x the C floor', goal: 'dmabuf ≤ 5 × C floor', measured: 'no C floor measured', met: null });
  }
  const ds = sizes.map((s) => median(rows, dmabuf, s, 'receiver')).filter((x): x is number => x !== undefined);
  if (ds.length >= 2) {
    const small = ds[0]!;
    const large = ds[ds.length - 1]!;
    const spread = Math.max(...ds) / Math.min(...ds);
    const stepsAt = (size: number): Record<string, number> | undefined => rows.find((r) => r.method === dmabuf && r.size === size && r.metric === 'receiver')?.steps;
    const s0 = stepsAt(sizes[0]!);
    const s1 = stepsAt(sizes[sizes.length - 1]!);
    const growth = s0 && s1 ? ['get', 'attach', 'map', 'read'].map((k) => [k, s1[k]! - s0[k]!] as const).sort((a, b) => b[1] - a[1])[0] : undefined;
    out.push({
      name: `first hand-off flat in size up to ${fmtSize(sizes[sizes.length - 1]!)}`,
      goal: `largest / smallest median (dmabuf receiver) ≤ ${FLAT_LIMIT} over ${fmtSize(sizes[0]!)}..${fmtSize(sizes[sizes.length - 1]!)}`,
      measured: `${fmtSize(sizes[0]!)}: ${us(small)}, ${fmtSize(sizes[sizes.length - 1]!)}: ${us(large)}; max/min over all sizes ${spread.toFixed(2)}x`,
      met: spread <= FLAT_LIMIT,
      ...(spread <= FLAT_LIMIT || !growth ? {} : { why: `the step that grows most from the smallest to the largest size is ${growth[0]} (+${us(growth[1])})${gcText(rows, dmabuf, sizes[0]!, sizes[sizes.length - 1]!)}` }),
    });
  }
  // 2. At 64 MiB, 500x faster than child_process.send.
  const at = 64 << 20;
  const dRt = median(rows, dmabuf, at, 'round-trip');
  const sRt = median(rows, send, at, 'round-trip');
  const dOw = median(rows, dmabuf, at, 'one-way');
  const sOw = median(rows, send, at, 'one-way');
  if (dRt && sRt) {
    const r = sRt / dRt;
    const dRow = rows.find((x) => x.method === dmabuf && x.size === at && x.metric === 'receiver');
    const st = dRow?.steps;
    const parts = st ? `the dmabuf round trip (median ${us(dRt)}) is, step by step (medians): send ${us(st.send!)}, get ${us(st.get!)}, attach ${us(st.attach!)}, map ${us(st.map!)}, read ${us(st.read!)}, cleanup (unmap, detach, put) ${us(st.cleanup!)}, ack ${us(st.ack!)}; at this size the receiver also ran ${dRow?.gc ? dRow.gc.perHandoff.toFixed(2) : '?'} garbage collections per hand-off (${gcAt(rows, dmabuf, sizes[0]!)} at ${fmtSize(sizes[0]!)}), which land in map and cleanup. The copy costs ${us(sRt)}, so 500x would need a round trip of ${us(sRt / 500)}` : '';
    out.push({
      name: 'at 64 MiB ≥ 500x faster than child_process.send',
      goal: 'child_process.send round trip ÷ dmabuf round trip ≥ 500 (both as the sender sees them)',
      measured: `${r.toFixed(0)}x (${us(sRt)} against ${us(dRt)}); one-way ${sOw && dOw ? (sOw / dOw).toFixed(0) : '?'}x`,
      met: r >= 500,
      ...(r >= 500 ? {} : { why: parts }),
    });
  } else {
    out.push({ name: 'at 64 MiB ≥ 500x faster than child_process.send', goal: 'child_process.send ÷ dmabuf ≥ 500', measured: '64 MiB not in --sizes', met: null });
  }
  return out;
}
