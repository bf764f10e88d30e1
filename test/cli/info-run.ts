/**
 * Running `dmabuf info` as a subprocess, for the tests of the command: its text, its JSON
 * listing, and how much memory it took.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { BufferReport, Report } from '../../cli/info.js';

/** The package root (dist/test/cli -> ../../..). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** The command line's entry point (compiled). */
export const CLI = path.join(ROOT, 'dist', 'cli', 'dmabuf.js');

/** How {@link runInfo} runs the command. */
export interface RunOptions {
  /** Run as this user (and group): needs root. */
  uid?: number;
  /**
   * Measure the command's largest resident set with GNU time (`/usr/bin/time`); see
   * {@link RunResult.maxRssKiB}.
   */
  measure?: boolean;
}

/** What {@link runInfo} returns. */
export interface RunResult {
  stdout: string;
  /** The command's largest resident set, in KiB: with `measure`, when `/usr/bin/time` exists. */
  maxRssKiB: number | null;
}

/** Whether {@link RunOptions.measure} can measure here. */
export const CAN_MEASURE = existsSync('/usr/bin/time');

/** Runs `dmabuf info` with arguments (its exit status must be 0). */
export function runInfo(args: string[], opts: RunOptions = {}): RunResult {
  const dir = opts.measure && CAN_MEASURE ? mkdtempSync(path.join(tmpdir(), 'dmabuf-info-time-')) : null;
  const node = [process.execPath, '--no-warnings', CLI, 'info', ...args];
  const argv = dir ? ['/usr/bin/time', '-f', '%M', '-o', path.join(dir, 'rss'), ...node] : node;
  try {
    const r = spawnSync(argv[0]!, argv.slice(1), {
      encoding: 'utf8',
      timeout: 60_000,
      // The listing covers the whole machine: other programs' buffers (thousands, in another
      // project's scale test) can make it larger than spawnSync's default 1 MiB.
      maxBuffer: 256 << 20,
      ...(opts.uid !== undefined ? { uid: opts.uid, gid: opts.uid } : {}),
    });
    assert.equal(r.status, 0, `dmabuf info ${args.join(' ')} failed (${r.status ?? r.signal ?? r.error?.message}): ${r.stderr}`);
    const maxRssKiB = dir ? Number(readFileSync(path.join(dir, 'rss'), 'utf8').trim().split('\n').pop()) : null;
    return { stdout: r.stdout, maxRssKiB };
  } finally {
    if (dir) rmSync(dir, { recursive: true, force: true });
  }
}

/** `dmabuf info --json` with arguments, parsed. */
export function infoJson(args: string[] = [], opts: RunOptions = {}): Report {
  return JSON.parse(runInfo(['--json', ...args], opts).stdout) as Report;
}

/** The one buffer of the listing with that name. */
export function byName(r: Report, name: string): BufferReport {
  const found = r.buffers.filter((b) => b.name === name);
  assert.equal(found.length, 1, `expected one buffer named ${name}, got ${found.length}: ${JSON.stringify(r.buffers.map((b) => b.name))}`);
  return found[0]!;
}
