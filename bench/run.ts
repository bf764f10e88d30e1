/**
 * `npm run bench [-- --quick] [--sizes 4K,1M,1G] [--reps N] [--only case[,case]] [--frames N] [--out DIR]`
 *
 * Runs the cases (hand-off and its baselines, pooled, full read, memory, in-process, views,
 * fence, fenced ring), prints
 * progress, and writes bench/results/<date>.json, .md and .svg (<date>-quick.* with --quick).
 */
import { handoff } from './cases/handoff.js';
import { pooled } from './cases/pooled.js';
import { fullread } from './cases/fullread.js';
import { memory } from './cases/memory.js';
import { inprocess } from './cases/inprocess.js';
import { views } from './cases/views.js';
import { fence } from './cases/fence.js';
import { ring } from './cases/ring.js';
import os from 'node:os';
import { USAGE, machine, now, parseArgs, runCases, since, type Context, type Options } from './harness.js';
import { markdown, writeReport } from './report.js';
import { runCommand } from '../cli/args.js';

const parsed: { options: Options | null } = { options: null };
const code = await runCommand('bench', USAGE, () => {
  parsed.options = parseArgs(process.argv.slice(2));
  if (parsed.options === null) console.log(USAGE);
  return 0;
});
if (code !== 0 || parsed.options === null) process.exit(code);
const options = parsed.options;
const m = machine();
const startedAt = new Date();
const t0 = now();
const ctx: Context = { options, machine: m, log: (line) => console.log(line) };
const loadStart = os.loadavg()[0]!;
console.log(`dmabuf benchmarks: ${m.description}; load average ${loadStart.toFixed(2)}`);
if (loadStart > m.cores / 2) console.log(`note: the machine is busy (load ${loadStart.toFixed(2)} on ${m.cores} cores): times will be noisier`);
const cases = await runCases([handoff, pooled, fullread, memory, inprocess, views, fence, ring], ctx);
const date = startedAt.toISOString().slice(0, 10) + (options.quick ? '-quick' : '');
const report = {
  date,
  startedAt: startedAt.toISOString(),
  durationS: since(t0) / 1e9,
  command: ['npm run bench', ...(process.argv.length > 2 ? ['--', ...process.argv.slice(2)] : [])].join(' '),
  machine: m,
  load: { start: loadStart, end: os.loadavg()[0]! },
  options: { ...options },
  cases,
};
const files = writeReport(report, options.out);
console.log(`\n${markdown(report)}`);
console.log(`wrote ${files.join(', ')}`);
process.exit(0);
