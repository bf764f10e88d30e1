/**
 * What one hand-off costs besides its time, measured in separate passes of N back-to-back
 * hand-offs of one method (so that nothing else runs in between and every cost, including
 * work that lingers after the ack, is counted once):
 *
 * - CPU time of each side: `process.cpuUsage()` for a process (every thread of it: the
 *   garbage collector's helpers count), `/proc/thread-self/schedstat` for a thread (its
 *   `sum_exec_runtime`, nanoseconds: Node 20 has no `process.threadCpuUsage`).
 * - System calls of the receiver: `strace -f -ttt -p PID`, every thread of the receiving
 *   process (or one thread, for a worker), counting the calls that started between the first
 *   hand-off's start and the last one's ack (a separate pass: strace slows every call).
 * - Garbage collections in the receiver: a PerformanceObserver on 'gc' there.
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, readlinkSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { track } from './harness.js';

/** Costs of one hand-off, means over a pass of `n`. */
export interface Costs {
  n: number;
  /** CPU time (ns) of the sending side per hand-off (process, or the sending thread). */
  cpuSender?: number;
  /** CPU time (ns) of the receiving side per hand-off (process, or the receiving thread). */
  cpuReceiver?: number;
  /** Garbage collections in the receiver per hand-off, and the major ones. */
  gc?: number;
  gcMajor?: number;
  /** System calls in the receiver per hand-off (every thread of the process, or the one thread). */
  syscalls?: number;
  /** Of them, the receiving thread's (the main thread of a process). */
  syscallsMain?: number;
  /** Hand-offs of the strace pass. */
  syscallsN?: number;
  /** The receiving thread's calls per hand-off, by name, most frequent first. */
  syscallsByName?: Record<string, number>;
  /** Requests the exporter answered for the receiver per hand-off (0: a one-message hand-off), and notifications it ran. */
  exporterRequests?: number;
  exporterNotifications?: number;
  /** Why a measurement is missing. */
  note?: string;
}

let statFd = -1;
const statBuf = Buffer.alloc(128);

/** This thread's CPU time so far, in nanoseconds (/proc/thread-self/schedstat: one pread). */
export function threadCpuNs(): number {
  if (statFd < 0) statFd = openSync('/proc/thread-self/schedstat', 'r');
  const n = readSync(statFd, statBuf, 0, statBuf.length, 0);
  const s = statBuf.toString('latin1', 0, n);
  return Number(s.slice(0, s.indexOf(' ')));
}

/** This thread's kernel id (a worker thread is a task of the process). */
export function threadId(): number {
  // "/proc/thread-self" links to "PID/task/TID".
  return Number(/task\/(\d+)/.exec(readlinkSync('/proc/thread-self'))?.[1] ?? process.pid);
}

/** The whole process's CPU time so far (user + system, ns). */
export function processCpuNs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) * 1e3;
}

/** Realtime now in seconds (the clock of strace -ttt), to the microsecond. */
function realtimeS(): number {
  return (performance.timeOrigin + performance.now()) / 1e3;
}

let straceChecked: string | null | undefined;

/** Null when strace can be used, else why not. */
export function straceUnavailable(): string | null {
  if (straceChecked !== undefined) return straceChecked;
  try {
    const r = spawnSyncVersion();
    straceChecked = r ? null : 'strace not found (apt-get install -y strace)';
  } catch (err) {
    straceChecked = `strace: ${(err as Error).message}`;
  }
  return straceChecked;
}

function spawnSyncVersion(): boolean {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    try {
      closeSync(openSync(path.join(dir, 'strace'), 'r'));
      return true;
    } catch {
      // not there
    }
  }
  return false;
}

/** System calls counted by {@link traceSyscalls}: per thread, per name. */
export interface SyscallCount {
  /** Calls of every traced thread that started within the window. */
  total: number;
  /** Per thread id: calls, and calls by name. */
  byThread: Map<number, { total: number; byName: Map<string, number> }>;
}

/**
 * Runs `fn` with `strace -f` attached to every thread of process `pid`, and counts the system
 * calls that started while `fn` ran (between its start and its end, by strace's timestamps),
 * per thread. strace is attached before `fn` starts and detached after it ends.
 */
export async function traceSyscalls(pid: number, fn: () => Promise<void>): Promise<SyscallCount> {
  const why = straceUnavailable();
  if (why) throw new Error(why);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dmabuf-bench-strace-'));
  const out = path.join(dir, 'trace');
  try {
    const st = track(spawn('strace', ['-f', '-ttt', '-o', out, '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] }));
    let err = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`strace did not attach to ${pid}: ${err.trim()}`)), 10_000);
      st.stderr!.setEncoding('utf8').on('data', (d: string) => {
        err += d;
        if (/attached/.test(err)) {
          clearTimeout(timer);
          resolve();
        }
      });
      st.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`strace exited (${code}) before attaching to ${pid}: ${err.trim()}`));
      });
    });
    // Let the attach settle (strace reports each thread's call in progress as it attaches).
    await new Promise((r) => setTimeout(r, 50));
    const t0 = realtimeS();
    await fn();
    const t1 = realtimeS();
    const exited = new Promise<void>((resolve) => st.once('exit', () => resolve()));
    st.kill('SIGINT');
    await exited;
    return countTrace(readFileSync(out, 'utf8'), t0, t1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Counts the calls in strace -f -ttt output that started in [t0, t1] (seconds, realtime). */
export function countTrace(text: string, t0: number, t1: number): SyscallCount {
  const byThread = new Map<number, { total: number; byName: Map<string, number> }>();
  let total = 0;
  for (const line of text.split('\n')) {
    // "TID SECONDS.USEC name(args) = result", or "... <unfinished ...>"; a "<... name resumed>"
    // line ends a call already counted; "+++" and "---" lines are exits and signals.
    const m = /^(\d+)\s+(\d+\.\d+)\s+([a-z_0-9]+)\(/.exec(line);
    if (!m) continue;
    const t = Number(m[2]);
    if (t < t0 || t > t1) continue;
    const tid = Number(m[1]);
    let th = byThread.get(tid);
    if (!th) byThread.set(tid, (th = { total: 0, byName: new Map() }));
    th.total++;
    th.byName.set(m[3]!, (th.byName.get(m[3]!) ?? 0) + 1);
    total++;
  }
  return { total, byThread };
}

/** Calls per hand-off by name, most frequent first. */
export function perHandoffByName(byName: Map<string, number> | undefined, n: number): Record<string, number> {
  if (!byName) return {};
  return Object.fromEntries([...byName.entries()].sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, v / n]));
}
