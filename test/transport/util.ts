/**
 * Helpers of the transport tests: open descriptors, child processes running the compiled
 * package, and rejections with a code.
 */
import { readdirSync, readlinkSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { finish, startChild as startHelperChild, type ChildOptions as HelperChildOptions, type ChildResult } from '../helpers.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { DmaBufError } from '../../src/index.js';

export { INDEX_URL, BINDING_URL } from '../helpers.js';

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

export { finish } from '../helpers.js';
export type { ChildResult } from '../helpers.js';

/** How a transport test runs a child: its descriptors, and the shared options. */
export interface ChildOptions extends HelperChildOptions {
  /** Descriptors that become the child's 3, 4, ... */
  fds?: number[];
}

/** Starts a child script (see test/helpers.ts), killed after 30 s unless told otherwise. */
export function startChild(body: string, options: ChildOptions = {}): ChildProcess {
  return startHelperChild(body, options.fds ?? [], { timeoutMs: 30_000, ...options });
}

/** Runs a child script to its end. */
export async function runChild(body: string, options: ChildOptions = {}): Promise<ChildResult> {
  return finish(startChild(body, options));
}
