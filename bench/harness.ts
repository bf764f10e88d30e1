/**
 * The benchmark harness: options, clocks, statistics, the machine's description, children
 * and settings that must be undone (huge pages), and the runner that runs the cases.
 *
 * Every time is in nanoseconds internally (process.hrtime.bigint, CLOCK_MONOTONIC: the same
 * clock in every process of the machine, so one process can subtract another's timestamp).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { execFileSync, type ChildProcess } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UsageError, integerOption, parseOptions } from '../cli/args.js';
import type { Costs } from './costs.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const HUGE_PAGE = 2 * MiB;

/** dist/bench (the compiled harness) and the package root. */
export const distBench = path.dirname(fileURLToPath(import.meta.url));
export const root = path.resolve(distBench, '..', '..');
/** The compiled receivers (child and worker programs). */
export function receiver(name: string): string {
  return path.join(distBench, 'receivers', `${name}.js`);
}

/** Now, in nanoseconds (CLOCK_MONOTONIC). */
export function now(): bigint {
  return process.hrtime.bigint();
}

/** Nanoseconds elapsed since `t0`. */
export function since(t0: bigint): number {
  return Number(now() - t0);
}

// ---------------------------------------------------------------------------------------
// Options

export interface Options {
  quick: boolean;
  sizes: number[];
  /** Repetitions per size below 256 MiB; larger sizes get fewer (see {@link repsFor}). */
  reps: number;
  /** Cases to run (all when empty). */
  only: string[];
  /** Where to write results. */
  out: string;
  /** Frames per mode in the pooled case. */
  frames: number;
  /** Whether --reps was given (then it applies to every size). */
  repsGiven: boolean;
}

export const FULL_SIZES = [4 * KiB, 64 * KiB, MiB, 16 * MiB, 64 * MiB, 256 * MiB, GiB];
export const QUICK_SIZES = [4 * KiB, MiB, 64 * MiB];

/** Parses "4K", "64KiB", "1M", "1G", "4096". */
export function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmg]?)(?:i?b)?$/i.exec(s.trim());
  if (!m) throw new Error(`bad size "${s}" (use e.g. 4K, 64K, 1M, 1G)`);
  const unit = { '': 1, k: KiB, m: MiB, g: GiB }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  return Math.round(Number(m[1]) * unit);
}

export function fmtSize(n: number): string {
  if (n >= GiB && n % GiB === 0) return `${n / GiB} GiB`;
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= KiB && n % KiB === 0) return `${n / KiB} KiB`;
  return `${n} B`;
}

/** Formats nanoseconds with a unit that keeps 3 significant digits. */
export function fmtTime(ns: number | undefined): string {
  if (ns === undefined || !Number.isFinite(ns)) return '';
  if (ns < 1e3) return `${ns.toFixed(0)} ns`;
  if (ns < 1e6) return `${(ns / 1e3).toPrecision(3)} µs`;
  if (ns < 1e9) return `${(ns / 1e6).toPrecision(3)} ms`;
  return `${(ns / 1e9).toPrecision(3)} s`;
}

export const CASES = ['handoff', 'pooled', 'fullread', 'memory', 'inprocess', 'views', 'fence', 'ring'] as const;
export type CaseName = (typeof CASES)[number];

export const USAGE = `usage: npm run bench -- [--quick] [--sizes 4K,1M,1G] [--reps N] [--only ${CASES.join('|')}[,...]] [--frames N] [--out DIR]

  --quick        a short run: sizes ${QUICK_SIZES.map(fmtSize).join(', ')}, 3 repetitions (12 up to 1 MiB), 300 frames, written to
                 bench/results/tmp (ignored by git) unless --out says otherwise
  --sizes LIST   buffer sizes, comma-separated: 4K, 64KiB, 1M, 1G, 4096 (default ${FULL_SIZES.map(fmtSize).join(', ')})
  --reps N       repetitions of each size (default 7: 28 up to 1 MiB, fewer for 256 MiB and up, unless given)
  --only LIST    the cases to run, comma-separated (default all)
  --frames N     frames per mode in the pooled and ring cases, at least 10 (default 3000)
  --out DIR      where the reports go (default bench/results)
  -h, --help     this text`;

/**
 * Parses the benchmarks' command line (the `cli/args.ts` convention); `null` for `--help`.
 *
 * @throws {UsageError} for an unknown option or case, a stray argument, a bad size or number.
 */
export function parseArgs(argv: string[]): Options | null {
  const v = parseOptions(argv, {
    quick: { type: 'boolean' }, sizes: { type: 'string' }, reps: { type: 'string' }, only: { type: 'string' },
    frames: { type: 'string' }, out: { type: 'string' },
  });
  if (v.help) return null;
  const quick = v.quick === true;
  const list = (s: string | undefined): string[] | undefined => s?.split(',').map((x) => x.trim()).filter(Boolean);
  let sizes: number[] | undefined;
  try {
    sizes = list(v.sizes)?.map(parseSize).sort((a, b) => a - b);
  } catch (err) {
    throw new UsageError(`--sizes: ${(err as Error).message}`);
  }
  if (sizes !== undefined && sizes.length === 0) throw new UsageError('--sizes needs at least one size');
  const only = list(v.only) ?? [];
  for (const c of only) if (!(CASES as readonly string[]).includes(c)) throw new UsageError(`unknown case "${c}" (cases: ${CASES.join(', ')})`);
  const reps = integerOption(v.reps, 'reps');
  const frames = integerOption(v.frames, 'frames', 10);
  return {
    quick,
    sizes: sizes ?? (quick ? QUICK_SIZES : FULL_SIZES),
    reps: reps ?? (quick ? 3 : 7),
    only,
    // Quick runs are for checking, not for committing: they go to an ignored folder.
    out: v.out !== undefined ? path.resolve(v.out) : path.join(root, 'bench', 'results', ...(quick ? ['tmp'] : [])),
    frames: frames ?? (quick ? 300 : 3000),
    repsGiven: reps !== undefined,
  };
}

/**
 * Repetitions for one size: --reps everywhere when given, else four times as many up to 1 MiB
 * (a repetition of every method costs tens of milliseconds there, and the medians the targets
 * judge move by tens of percent between runs with 7) and fewer for the largest sizes.
 */
export function repsFor(o: Options, size: number): number {
  if (o.repsGiven) return o.reps;
  if (size >= GiB) return Math.min(o.reps, 3);
  if (size >= 256 * MiB) return Math.min(o.reps, 5);
  if (size <= MiB) return o.reps * 4;
  return o.reps;
}

export function wants(o: Options, name: CaseName): boolean {
  return o.only.length === 0 || o.only.includes(name);
}

// ---------------------------------------------------------------------------------------
// Statistics

export interface Stats {
  n: number;
  median: number;
  min: number;
  p90: number;
  max: number;
}

export function stats(xs: number[]): Stats {
  if (xs.length === 0) return { n: 0, median: NaN, min: NaN, p90: NaN, max: NaN };
  const s = [...xs].sort((a, b) => a - b);
  const q = (p: number): number => {
    const i = (s.length - 1) * p;
    const lo = Math.floor(i);
    const hi = Math.ceil(i);
    return s[lo]! + (s[hi]! - s[lo]!) * (i - lo);
  };
  return { n: s.length, median: q(0.5), min: s[0]!, p90: q(0.9), max: s[s.length - 1]! };
}

// ---------------------------------------------------------------------------------------
// Results

/** One measured series: a method at a size, one metric, all in nanoseconds. */
export interface Row {
  /** The case (handoff, pooled, fullread, memory, inprocess). */
  case: string;
  /** The method measured (dmabuf, c-floor, child_process.send, ...). */
  method: string;
  size: number;
  /** What the numbers are: receiver, one-way, round-trip, per-frame, pss-bytes, ... */
  metric: string;
  /** Nanoseconds (or bytes for the memory case: see `unit`). */
  stats: Stats;
  unit: 'ns' | 'bytes';
  /** Sub-steps (medians, ns), e.g. get/attach/map/read in the receiver. */
  steps?: Record<string, number>;
  /** CPU time per repetition (medians, ns, user + system) of each side, where measured. */
  cpu?: Record<string, number>;
  /** Garbage collections in the receiver per repetition (means), where measured. */
  gc?: { perHandoff: number; majorPerHandoff: number; msPerHandoff: number };
  /** Anything else worth keeping (the cold first sample, a note). */
  extra?: Record<string, unknown>;
  /** Per hand-off costs from separate passes (bench/costs.ts), on the one-way row. */
  costs?: Costs;
}

export interface Target {
  name: string;
  goal: string;
  /** The measured value, in words, with its ratio. */
  measured: string;
  met: boolean | null;
  why?: string;
}

export interface CaseResult {
  name: CaseName;
  title: string;
  /** What is timed, in words, for the report. */
  description: string;
  rows: Row[];
  notes: string[];
  targets: Target[];
  /** The method the tables' ratios are relative to (default: dmabuf). */
  reference?: string;
}

// ---------------------------------------------------------------------------------------
// The machine

export interface Machine {
  cpu: string;
  cores: number;
  memoryBytes: number;
  kernel: string;
  node: string;
  hugePageSize: number;
  root: boolean;
  description: string;
}

export function machine(): Machine {
  const cpus = os.cpus();
  let cpu = cpus[0]?.model?.trim() ?? 'unknown CPU';
  try {
    const lscpu = execFileSync('lscpu', { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const hv = /Hypervisor vendor:\s*(.+)/.exec(lscpu)?.[1]?.trim();
    if (hv) cpu += ` (virtualized, ${hv})`;
  } catch {
    // no lscpu
  }
  const meminfo = readFileSync('/proc/meminfo', 'utf8');
  const hp = Number(/Hugepagesize:\s+(\d+)/.exec(meminfo)?.[1] ?? 2048) * 1024;
  const m: Omit<Machine, 'description'> = {
    cpu,
    cores: cpus.length,
    memoryBytes: os.totalmem(),
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    hugePageSize: hp,
    root: process.getuid?.() === 0,
  };
  return { ...m, description: `${m.cpu}, ${m.cores} cores, ${(m.memoryBytes / GiB).toFixed(1)} GiB RAM, ${m.kernel}, Node ${m.node}` };
}

// ---------------------------------------------------------------------------------------
// Cleanup: children and system settings are always undone, also on SIGINT/SIGTERM.

const children = new Set<ChildProcess>();
const undo: (() => void)[] = [];

/** Registers a child process, killed at exit if still running. */
export function track<T extends ChildProcess>(child: T): T {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}

/** Kills every tracked child that is still running. */
export function killChildren(): void {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
  children.clear();
}

function runUndo(): void {
  while (undo.length) {
    try {
      undo.pop()!();
    } catch (err) {
      console.error('bench: cleanup failed:', err);
    }
  }
}

let handlersInstalled = false;
function installHandlers(): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  process.on('exit', () => { runUndo(); killChildren(); });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      console.error(`\nbench: ${sig}: restoring settings and stopping children`);
      runUndo();
      killChildren();
      process.exit(130);
    });
  }
}

const NR_HUGEPAGES = '/proc/sys/vm/nr_hugepages';

function hugeTotal(): number {
  return Number(/HugePages_Total:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
}

/**
 * Raises /proc/sys/vm/nr_hugepages to at least `pages` for the duration of `fn`, then puts
 * back the value it found (also on an exception, SIGINT or SIGTERM). Returns null (and does
 * not run `fn`) when that is impossible, with the reason.
 */
export async function withHugePages<T>(pages: number, fn: (available: number) => Promise<T>): Promise<{ value: T; pages: number } | { skipped: string }> {
  if (process.getuid?.() !== 0) return { skipped: 'skipped: needs root (to raise /proc/sys/vm/nr_hugepages)' };
  let before: string;
  try {
    before = readFileSync(NR_HUGEPAGES, 'utf8').trim();
  } catch (err) {
    return { skipped: `skipped: cannot read ${NR_HUGEPAGES} (${(err as Error).message})` };
  }
  installHandlers();
  const restore = (): void => {
    writeFileSync(NR_HUGEPAGES, before);
  };
  undo.push(restore);
  try {
    if (Number(before) < pages) writeFileSync(NR_HUGEPAGES, String(pages));
    const got = hugeTotal();
    if (got === 0) return { skipped: `skipped: the kernel gave no huge pages (asked for ${pages})` };
    return { value: await fn(got), pages: got };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EACCES' || (err as NodeJS.ErrnoException).code === 'EPERM') {
      return { skipped: `skipped: cannot write ${NR_HUGEPAGES} (${(err as Error).message})` };
    }
    throw err;
  } finally {
    const i = undo.indexOf(restore);
    if (i >= 0) undo.splice(i, 1);
    restore();
    const after = readFileSync(NR_HUGEPAGES, 'utf8').trim();
    if (after !== before) console.error(`bench: WARNING: ${NR_HUGEPAGES} is ${after}, was ${before} (huge pages still in use?)`);
  }
}

/** The environment every case gets. */
export interface Context {
  options: Options;
  machine: Machine;
  log(line: string): void;
}

export interface BenchCase {
  name: CaseName;
  run(ctx: Context): Promise<CaseResult>;
}

/** Runs the cases the options select, in order, and returns their results. */
export async function runCases(cases: BenchCase[], ctx: Context): Promise<CaseResult[]> {
  installHandlers();
  const out: CaseResult[] = [];
  for (const c of cases) {
    if (!wants(ctx.options, c.name)) continue;
    const t0 = now();
    ctx.log(`== ${c.name}`);
    try {
      out.push(await c.run(ctx));
    } finally {
      killChildren();
    }
    ctx.log(`== ${c.name}: ${(since(t0) / 1e9).toFixed(1)} s`);
  }
  return out;
}
