/**
 * Helpers shared by the tests: descriptor counts, waiting for a condition, exporters that
 * record their calls, and root-only huge-page setup that restores the system setting.
 */
import { readdirSync, readFileSync, readlinkSync, writeFileSync, existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { DmaBuf, SgTable, type DmaBufOps, type DmaBufAttachment } from '../src/index.js';

/** Number of open descriptors of this process. */
export function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
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
