/**
 * One method at a time, warm: N back-to-back hand-offs of `dmabuf-channel`, then N bare
 * BufferChannel hops, then N hand-offs again, between the same two processes; then the same
 * hand-offs from the same exporter to a minimal receiver with no framework
 * (`receivers/minimal.ts`), which shows what this package's receive path costs over the least a
 * JavaScript receiver must do. For each phase:
 * the median one-way time, and per hand-off the CPU time, voluntary context switches and page
 * faults of the receiver's main thread and of this (the exporter's) main thread, read from
 * `/proc`. Unlike the hand-off case, nothing else runs in between, so the receiver never goes
 * cold: use it to compare two builds (A/B, alternating runs), not to judge the targets.
 *
 * `node dist/bench/phase.js [N] [SIZE]`, e.g. `node dist/bench/phase.js 300 4K`.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { ChannelBareMethod, ChannelHost, DmabufChannelMethod, MinimalReceiverMethod, startWarm, type Method } from './methods.js';
import { fmtSize, fmtTime, parseSize, stats } from './harness.js';

interface ThreadSnapshot {
  /** Run time (ns, schedstat). */
  run: number;
  /** Voluntary context switches. */
  switches: number;
  /** Minor page faults of the whole process. */
  faults: number;
}

/** The main thread of process `pid` (its thread id is the pid). */
function snapshot(pid: number): ThreadSnapshot {
  const run = Number(readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'utf8').split(' ')[0]);
  const status = readFileSync(`/proc/${pid}/task/${pid}/status`, 'utf8');
  const switches = Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1] ?? NaN);
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const faults = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[7]);
  return { run, switches, faults };
}

function perOp(a: ThreadSnapshot, b: ThreadSnapshot, n: number): string {
  return `${fmtTime((b.run - a.run) / n)} CPU, ${((b.switches - a.switches) / n).toFixed(2)} switches, ${((b.faults - a.faults) / n).toFixed(2)} faults`;
}

const n = Number(process.argv[2] ?? 300);
const size = parseSize(process.argv[3] ?? '4K');
const host = new ChannelHost();
const handoff = new DmabufChannelMethod(host);
const bare = new ChannelBareMethod(host);
await startWarm([handoff, bare], size, 50);
console.log(`${n} hand-offs of ${fmtSize(size)} per phase, one method at a time (receiver pid ${host.pid})`);
const minimal = new MinimalReceiverMethod();
const minimalHost = minimal.host;
await startWarm([minimal], size, 50);
const phases: [string, Method, ChannelHost][] = [
  ['dmabuf-channel', handoff, host],
  ['bare hop', bare, host],
  ['dmabuf-channel', handoff, host],
  ['minimal receiver', minimal, minimalHost],
];
for (const [name, method, receiverHost] of phases) {
  const r0 = snapshot(receiverHost.pid);
  const s0 = snapshot(process.pid);
  const oneWay: number[] = [];
  for (let i = 0; i < n; i++) oneWay.push((await method.once('ends')).oneWayNs);
  const r1 = snapshot(receiverHost.pid);
  const s1 = snapshot(process.pid);
  console.log(`${name.padEnd(16)} one-way ${fmtTime(stats(oneWay).median).padStart(8)} | receiver main thread: ${perOp(r0, r1, n)} | exporter main thread (with allocating and freeing): ${perOp(s0, s1, n)}`);
}
await minimal.close();
await handoff.close();
await bare.close();
