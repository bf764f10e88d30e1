/**
 * The ratio the hand-off targets judge, for A/B comparisons of two builds: N first hand-offs
 * alternating with N bare hops to the same receiver, with the receiver left idle for a moment
 * (`--gap`, 2 ms) before each, as in the full run where the other methods take turns in
 * between; one-way and round-trip medians of each and their ratio. The full run's ratio moves
 * by ±20% between runs on the benchmark machine, as the bare hop does; this one moves by
 * about ±5%, because the two are measured in the same rhythm, hundreds of times.
 *
 * `node dist/bench/ratio.js [N] [SIZE] [--worker] [--minimal] [--gap MS]`, e.g.
 * `node dist/bench/ratio.js 300 4K`: `dmabuf-channel` against the BufferChannel bare hop;
 * with `--worker`, `dmabuf-worker` against a small postMessage to the same worker. With
 * `--minimal`, the minimal JavaScript receiver (`receivers/minimal.ts`, or
 * `receivers/minimal-worker.ts` with `--worker`) takes its turn too, and the hand-off is also
 * given against it: what this package's receive path costs over the least one can do. The
 * line ends with the median CPU time of the exporter per hand-off (from t0 until it has the
 * ack and has run the receiver's unmap and detach).
 *
 * @module
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { ChannelBareMethod, ChannelHost, DmabufChannelMethod, MinimalReceiverMethod, MinimalWorkerMethod, WorkerDmabufMethod, WorkerHost, WorkerSmallMethod, startWarm } from './methods.js';
import { fmtSize, fmtTime, parseSize, stats } from './harness.js';

const args = process.argv.slice(2);
const flag = (name: string): boolean => args.includes(name);
const option = (name: string, fallback: string): string => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1]! : fallback;
};
const positional = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--gap');
const n = Number(positional[0] ?? 300);
const size = parseSize(positional[1] ?? '4K');
const gapMs = Number(option('--gap', '2'));
const worker = flag('--worker');
const withMinimal = flag('--minimal');

let handoff: DmabufChannelMethod | WorkerDmabufMethod;
let bare: ChannelBareMethod | WorkerSmallMethod;
if (worker) {
  const host = new WorkerHost();
  handoff = new WorkerDmabufMethod(host);
  bare = new WorkerSmallMethod(host);
} else {
  const host = new ChannelHost();
  handoff = new DmabufChannelMethod(host);
  bare = new ChannelBareMethod(host);
}
type Turn = DmabufChannelMethod | ChannelBareMethod | WorkerDmabufMethod | WorkerSmallMethod;
const minimal: Turn | null = withMinimal ? (worker ? new MinimalWorkerMethod() : new MinimalReceiverMethod()) : null;
const turns: ['handoff' | 'bare' | 'minimal', Turn][] = [['handoff', handoff], ['bare', bare]];
if (minimal) turns.push(['minimal', minimal]);
await startWarm(turns.map(([, m]) => m), size, 100);
const serie = (): { oneWay: number[]; roundTrip: number[]; cpu: number[] } => ({ oneWay: [], roundTrip: [], cpu: [] });
const series = { handoff: serie(), bare: serie(), minimal: serie() };
for (let i = 0; i < n; i++) {
  for (const [name, method] of turns) {
    await sleep(gapMs);
    const s = await method.once('ends');
    series[name].oneWay.push(s.oneWayNs);
    series[name].roundTrip.push(s.roundTripNs);
    if (s.cpu?.sender !== undefined) series[name].cpu.push(s.cpu.sender);
  }
}
const line = (what: 'oneWay' | 'roundTrip'): string => {
  const h = stats(series.handoff[what]).median;
  const b = stats(series.bare[what]).median;
  const m = minimal ? stats(series.minimal[what]).median : 0;
  const overMinimal = minimal ? `; the minimal receiver ${fmtTime(m)} (${(m / b).toFixed(2)}x), the hand-off ${(h / m).toFixed(2)}x it` : '';
  return `${what === 'oneWay' ? 'one-way' : 'round trip'} ${fmtTime(h)} against ${fmtTime(b)}: ${(h / b).toFixed(2)}x${overMinimal}`;
};
const cpu = series.handoff.cpu.length > 0 ? ` | sender CPU ${fmtTime(stats(series.handoff.cpu).median)}` : '';
console.log(`${n} x ${handoff.name} and ${bare.name}, ${fmtSize(size)}, ${gapMs} ms idle before each | ${line('oneWay')} | ${line('roundTrip')}${cpu}`);
await handoff.close();
await bare.close();
await minimal?.close();
