/**
 * What one importer process may hold at an exporter thread: channels, attachments, maps,
 * fences and waits.
 *
 * Every holder of a buffer's file can reach its exporter, and a hostile holder may ask for
 * anything: without bounds, one process could open channels until the exporter runs out of
 * descriptors, or attach and map until its heap is exhausted. Each request is therefore
 * counted against the importer process that made it (the process whose credentials the
 * channel carries); past a limit the request fails with `ENOSPC` while other processes go on
 * being served. The limits are per exporter thread and can be changed with
 * {@link setServiceLimits}.
 *
 * @module
 */
import { DmaBufError } from '../core/errors.js';

/** The limits of one importer process at one exporter thread. */
export interface ServiceLimits {
  /** Channels it may have open (one per importer thread, one per hand-off route). Default 64. */
  readonly maxChannelsPerProcess: number;
  /** Attachments it may hold at once, over all its channels. Default 16384. */
  readonly maxAttachmentsPerProcess: number;
  /** Maps it may hold at once (not yet unmapped), over all its channels. Default 16384. */
  readonly maxMapsPerProcess: number;
  /**
   * Unsignalled fences it may have added to the reservation objects of this thread's buffers
   * (`resv.add`, `importSyncFile`). Default 4096.
   */
  readonly maxFencesPerProcess: number;
  /**
   * Unsignalled fences that importers (of every process together) may have added to the
   * reservation object of one buffer. Default 256.
   */
  readonly maxFencesPerBuffer: number;
  /**
   * Waits it may have pending at once: `resv.wait`, `beginCpuAccess` (whose fence wait runs
   * in the exporter), and calls of the exporter's CPU-access ops. Default 4096.
   */
  readonly maxWaitsPerProcess: number;
}

/** The defaults: enough for 10,000 buffers attached and mapped by one importer. */
export const DEFAULT_SERVICE_LIMITS: ServiceLimits = Object.freeze({
  maxChannelsPerProcess: 64,
  maxAttachmentsPerProcess: 16384,
  maxMapsPerProcess: 16384,
  maxFencesPerProcess: 4096,
  maxFencesPerBuffer: 256,
  maxWaitsPerProcess: 4096,
});

let limits: ServiceLimits = DEFAULT_SERVICE_LIMITS;

/** The limits in force in this thread. */
export function serviceLimits(): ServiceLimits {
  return limits;
}

/**
 * Changes the limits of this exporter thread (the others keep the defaults). Counts already
 * over a new limit are kept; new requests are refused until they go under it.
 *
 * @throws {DmaBufError} `EINVAL` for a value that is not a positive safe integer.
 * @example
 * ```ts
 * setServiceLimits({ maxMapsPerProcess: 1024 });
 * ```
 */
export function setServiceLimits(changes: Partial<ServiceLimits>): ServiceLimits {
  const op = 'setServiceLimits';
  if (typeof changes !== 'object' || changes === null) throw new DmaBufError('EINVAL', `${op}: expected an object of limits`, { op });
  const next: Record<string, number> = { ...limits };
  for (const [k, v] of Object.entries(changes)) {
    if (!(k in DEFAULT_SERVICE_LIMITS)) throw new DmaBufError('EINVAL', `${op}: unknown limit "${k}" (known: ${Object.keys(DEFAULT_SERVICE_LIMITS).join(', ')})`, { op });
    if (!Number.isSafeInteger(v) || (v as number) <= 0) throw new DmaBufError('EINVAL', `${op}: ${k} must be a positive safe integer, got ${String(v)}`, { op });
    next[k] = v as number;
  }
  limits = Object.freeze(next as unknown as ServiceLimits);
  return limits;
}

/** What one importer process holds now. */
interface Usage {
  channels: number;
  attachments: number;
  maps: number;
  fences: number;
  waits: number;
}

const NOTHING: Readonly<Usage> = Object.freeze({ channels: 0, attachments: 0, maps: 0, fences: 0, waits: 0 });

const usage = new Map<number, Usage>();

function usageOf(pid: number): Usage {
  let u = usage.get(pid);
  if (!u) {
    u = { ...NOTHING };
    usage.set(pid, u);
  }
  return u;
}

const NAMES = {
  channels: 'maxChannelsPerProcess',
  attachments: 'maxAttachmentsPerProcess',
  maps: 'maxMapsPerProcess',
  fences: 'maxFencesPerProcess',
  waits: 'maxWaitsPerProcess',
} as const;

/**
 * Counts one more `what` for process `pid`.
 *
 * @throws {DmaBufError} `ENOSPC` when the process is at its limit (nothing is counted then).
 */
export function charge(pid: number, what: keyof Usage, op: string): void {
  const u = usageOf(pid);
  const max = limits[NAMES[what]];
  if (u[what] >= max) {
    throw new DmaBufError('ENOSPC', `${op}: process ${pid} already holds ${u[what]} ${what} at this exporter, its limit (${NAMES[what]} = ${max}); release some first, or raise the limit with setServiceLimits() in the exporter`, { op });
  }
  u[what] += 1;
}

/** Gives back `n` of `what` of process `pid`. */
export function refund(pid: number, what: keyof Usage, n = 1): void {
  const u = usage.get(pid);
  if (!u) return;
  u[what] = Math.max(0, u[what] - n);
  if (Object.values(u).every((n) => n === 0)) usage.delete(pid);
}

/** What process `pid` holds (for introspection and tests). */
export function usageFor(pid: number): Readonly<Usage> {
  return { ...(usage.get(pid) ?? NOTHING) };
}
