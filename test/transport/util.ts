/**
 * Helpers of the transport tests: open descriptors, child processes running the compiled
 * package, and rejections with a code.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { DmaBufError } from '../../src/index.js';

const here = path.dirname(fileURLToPath(import.meta.url));
/** dist/src/index.js as a file URL. */
export const INDEX_URL = pathToFileURL(path.resolve(here, '..', '..', 'src', 'index.js')).href;
/** dist/src/native/binding.js as a file URL. */
export const BINDING_URL = pathToFileURL(path.resolve(here, '..', '..', 'src', 'native', 'binding.js')).href;

/** The descriptors open in this process (less the one readdir itself used). */
export function openFds(): Set<number> {
  const fds = new Set<number>();
  for (const name of readdirSync('/proc/self/fd')) {
    try {
      readlinkSync(`/proc/self/fd/${name}`);
      fds.add(Number(name));
    } catch {
      // readdir's own descriptor, closed by now
    }
  }
  return fds;
}

/** Fails when the open descriptors differ from `before`, naming the extra and missing ones. */
export function assertSameFds(before: Set<number>, what = 'descriptors'): void {
  const after = openFds();
  const extra = [...after].filter((fd) => !before.has(fd)).map((fd) => `${fd}=${safeLink(fd)}`);
  const missing = [...before].filter((fd) => !after.has(fd));
  if (extra.length || missing.length) {
    throw new Error(`${what}: leaked [${extra.join(', ')}], missing [${missing.join(', ')}]`);
  }
}

/**
 * Waits (up to `ms`) for the open descriptors to return to `before`, then checks them. Some
 * clean-up happens on the event loop (a release after the last descriptor closes, the
 * thread's introspection listener closing with its last buffer).
 */
export async function settleFds(before: Set<number>, what = 'descriptors', ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  const same = (): boolean => {
    const now = openFds();
    return now.size === before.size && [...now].every((fd) => before.has(fd));
  };
  while (!same() && Date.now() < end) await sleep(5);
  assertSameFds(before, what);
}

function safeLink(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return '?';
  }
}

/** A predicate for assert.rejects/throws: a DmaBufError with `code` (and a message matching). */
export function isCode(code: string, pattern?: RegExp) {
  return (e: unknown): boolean => {
    if (!DmaBufError.is(e, code)) throw new Error(`expected ${code}, got ${String((e as Error)?.stack ?? e)}`);
    if (pattern && !pattern.test((e as Error).message)) throw new Error(`message ${JSON.stringify((e as Error).message)} does not match ${pattern}`);
    return true;
  };
}

/** What a child printed and how it ended. */
export interface ChildResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Every stdout line that parses as JSON. */
  json: Array<Record<string, unknown>>;
}

export interface ChildOptions {
  /** Descriptors that become the child's 3, 4, ... */
  fds?: number[];
  /** A shell prefix run before node (e.g. 'ulimit -n 64'). */
  shell?: string;
  /** Kill the child after this many ms (default 30 s). */
  timeoutMs?: number;
}

/**
 * Starts node on an ES module script. The script sees `m` (the package), `native` (the
 * addon's binding) and `out(value)` (prints one JSON line).
 */
export function startChild(body: string, options: ChildOptions = {}): ChildProcess {
  const script = `import * as m from ${JSON.stringify(INDEX_URL)};\n`
    + `import { native } from ${JSON.stringify(BINDING_URL)};\n`
    + `const out = (v) => console.log(JSON.stringify(v, (k, x) => typeof x === 'bigint' ? String(x) : x));\n`
    + body;
  const stdio: StdioOptions = ['pipe', 'pipe', 'pipe', ...(options.fds ?? [])];
  const args = ['--no-warnings', '--input-type=module', '-e', script];
  const child = options.shell
    ? spawn('/bin/sh', ['-c', `${options.shell} && exec "$0" "$@"`, process.execPath, ...args], { stdio })
    : spawn(process.execPath, args, { stdio });
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000);
  child.once('exit', () => clearTimeout(timer));
  return child;
}

/** Collects a child's output until it exits. */
export async function finish(child: ChildProcess): Promise<ChildResult> {
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const closed = once(child, 'close');
  await closed;
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
export async function runChild(body: string, options: ChildOptions = {}): Promise<ChildResult> {
  return finish(startChild(body, options));
}
