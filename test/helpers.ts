/**
 * Helpers shared by the tests: descriptor counts, waiting for a condition, exporters that
 * record their calls, and root-only huge-page setup that restores the system setting.
 */
import { readdirSync, readFileSync, readlinkSync, writeFileSync, existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { DmaBuf, SgTable, type DmaBufOps, type DmaBufAttachment } from '../src/index.js';
import { introspectionFd } from '../src/remote/introspect.js';

/**
 * Number of open descriptors of this process, leaving out the `dmabuf info` listener (it
 * lingers a moment after this thread's last buffer is gone, on purpose).
 */
export function openFdCount(): number {
  const listener = String(introspectionFd());
  return readdirSync('/proc/self/fd').filter((n) => n !== listener).length;
}

/** The targets of this process's open descriptors (readlink of /proc/self/fd/N). */
export function openFdTargets(): string[] {
  const out: string[] = [];
  for (const n of readdirSync('/proc/self/fd')) {
    try {
      out.push(readlinkFd(Number(n)));
    } catch {
      // closed while listing
    }
  }
  return out;
}

/** readlink of /proc/self/fd/N. */
export function readlinkFd(fd: number): string {
  return readlinkSync(`/proc/self/fd/${fd}`);
}

/** Polls `pred` every few milliseconds until it is true, or fails after `ms`. */
export async function waitFor(pred: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

/** A log of the calls an exporter received. */
export interface CallLog {
  calls: string[];
  released: number;
}

/**
 * A minimal exporter whose maps return one segment without memory, recording every call.
 * `overrides` replaces any op.
 */
export function recordingExport(size = 4096, overrides: Partial<DmaBufOps<CallLog>> = {}, name = 'test'): { buf: DmaBuf<CallLog>; log: CallLog } {
  const log: CallLog = { calls: [], released: 0 };
  const ops: DmaBufOps<CallLog> = {
    attach: (_b, dev) => { log.calls.push(`attach:${dev.name}`); },
    detach: (_b, a: DmaBufAttachment<CallLog>) => { log.calls.push(`detach:${a.device.name}`); },
    mapDmaBuf: (a, dir) => { log.calls.push(`map:${a.device.name}:${dir}`); return new SgTable([{ offset: 0, length: a.dmabuf.size }]); },
    unmapDmaBuf: (a) => { log.calls.push(`unmap:${a.device.name}`); },
    release: () => { log.calls.push('release'); log.released += 1; },
    ...overrides,
  };
  const buf = DmaBuf.export({ ops, size, priv: log, name, exporter: 'recording' });
  return { buf, log };
}

const NR_HUGEPAGES = '/proc/sys/vm/nr_hugepages';

/** Whether this process may change the huge page pool (root on Linux). */
export function canManageHugePages(): boolean {
  return process.getuid?.() === 0 && existsSync(NR_HUGEPAGES);
}

/**
 * Runs `fn` with at least `pages` 2 MiB huge pages in the pool, then restores the pool's
 * previous size. Returns null (and runs nothing) when the pool cannot be grown.
 */
export async function withHugePages<T>(pages: number, fn: () => Promise<T>): Promise<T | null> {
  if (!canManageHugePages()) return null;
  const before = readFileSync(NR_HUGEPAGES, 'utf8').trim();
  try {
    writeFileSync(NR_HUGEPAGES, String(Number(before) + pages));
  } catch {
    return null;
  }
  try {
    const got = Number(readFileSync(NR_HUGEPAGES, 'utf8').trim());
    if (got < Number(before) + pages) return null;
    return await fn();
  } finally {
    writeFileSync(NR_HUGEPAGES, before);
  }
}

import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';

/** The package's entry point (compiled), as a file URL for child scripts. */
export const INDEX_URL = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'index.js')).href;
/** The native binding module (compiled), as a file URL for child scripts. */
export const BINDING_URL = pathToFileURL(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'native', 'binding.js')).href;

/** What a child printed and how it ended. */
export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Every stdout line that parses as a JSON object. */
  json: Array<Record<string, unknown>>;
}

/** How {@link startChild} runs a child. */
export interface ChildOptions {
  /** Node options before the script (e.g. `--expose-gc`). */
  nodeArgs?: string[];
  /** A shell prefix run before node (e.g. `ulimit -n 64`). */
  shell?: string;
  /** Kill the child after this many milliseconds (default: never). */
  timeoutMs?: number;
}

const liveChildren = new Set<ChildProcess>();
const closed = new WeakMap<ChildProcess, Promise<unknown>>();

/**
 * Kills every child started by {@link startChild} that is still running (register it with
 * node:test's `after`), so that a failed test never leaves a child that keeps the test file's
 * process alive.
 */
export function reapChildren(): void {
  for (const child of liveChildren) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  liveChildren.clear();
}

/**
 * Starts `node` on an ES module script. The script sees `m` (the package), `native` (the
 * addon's binding) and `out(value)` (prints one JSON line). `fds` become the child's
 * descriptors 3, 4, ...
 */
export function startChild(body: string, fds: number[] = [], options: ChildOptions = {}): ChildProcess {
  const script = `import * as m from ${JSON.stringify(INDEX_URL)};\nimport { native } from ${JSON.stringify(BINDING_URL)};\nconst out = (v) => console.log(JSON.stringify(v, (k, x) => typeof x === 'bigint' ? String(x) : x));\n${body}`;
  const stdio: StdioOptions = ['pipe', 'pipe', 'pipe', ...fds];
  const args = [...(options.nodeArgs ?? []), '--no-warnings', '--input-type=module', '-e', script];
  const child = options.shell
    ? spawn('/bin/sh', ['-c', `${options.shell} && exec "$0" "$@"`, process.execPath, ...args], { stdio })
    : spawn(process.execPath, args, { stdio });
  liveChildren.add(child);
  closed.set(child, once(child, 'close'));
  if (options.timeoutMs !== undefined) {
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs);
    child.once('exit', () => clearTimeout(timer));
  }
  child.once('exit', () => liveChildren.delete(child));
  return child;
}

/** Collects a child's output until it has exited and its output streams are closed. */
export async function finish(child: ChildProcess): Promise<ChildResult> {
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  await (closed.get(child) ?? once(child, 'close'));
  const json: Array<Record<string, unknown>> = [];
  for (const line of stdout.split('\n')) {
    try {
      const v: unknown = JSON.parse(line);
      if (v && typeof v === 'object') json.push(v as Record<string, unknown>);
    } catch {
      // not JSON
    }
  }
  return { code: child.exitCode, signal: child.signalCode, stdout, stderr, json };
}

/** Runs a child script to its end. */
export async function runChild(body: string, fds: number[] = [], options: ChildOptions = {}): Promise<ChildResult> {
  return finish(startChild(body, fds, options));
}

/** Resolves with the first JSON line a child prints that satisfies `pred`. */
export function nextLine(child: ChildProcess, pred: (v: Record<string, unknown>) => boolean = () => true): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buf = '';
    const onData = (d: Buffer | string): void => {
      buf += d.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          const v = JSON.parse(line) as Record<string, unknown>;
          if (pred(v)) { child.stdout?.off('data', onData); child.off('exit', onExit); resolve(v); return; }
        } catch { /* not JSON */ }
      }
    };
    const onExit = (): void => reject(new Error(`child exited before printing the expected line; output so far: ${buf}`));
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
  });
}

/** Number of open descriptors of process `pid`. */
export function fdCountOf(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}
