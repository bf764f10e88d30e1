/**
 * What the receiver allocates per first hand-off, on the JavaScript heap: the number that
 * decides how often its young generation fills up (the "no GC" target). N `dmabuf-channel`
 * hand-offs to a warmed-up receiver, back to back, under V8's sampling heap profiler (through
 * the inspector, counting what the collections freed too); the receiver's whole process, the
 * benchmark's acknowledgement included (`receivers/channel.ts`). Prints the bytes per hand-off
 * and the functions that allocate most. Estimates from samples (one per 64 bytes on average):
 * compare builds with a few thousand hand-offs.
 *
 * `node dist/bench/alloc.js [N] [SIZE]`, e.g. `node dist/bench/alloc.js 3000 4K`.
 *
 * @module
 */
import { ChannelHost, DmabufChannelMethod, startWarm } from './methods.js';
import { fmtSize, parseSize } from './harness.js';

const n = Number(process.argv[2] ?? 3000);
const size = parseSize(process.argv[3] ?? '4K');
const host = new ChannelHost();
const handoff = new DmabufChannelMethod(host);
await startWarm([handoff], size, 200);
await host.control('alloc-start');
for (let i = 0; i < n; i++) await handoff.once('ends');
const summary = (await host.control('alloc-stop')) as unknown as { bytes: number; top: [string, number][] };
console.log(`${n} hand-offs of ${fmtSize(size)}: the receiver allocated ${(summary.bytes / n / 1024).toFixed(1)} KiB per hand-off (JavaScript heap, its acknowledgement included)`);
for (const [name, bytes] of summary.top) console.log(`${String(Math.round(bytes / n)).padStart(7)} B  ${name}`);
await handoff.close();
