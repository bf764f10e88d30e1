/**
 * Rate-limited warnings: a hostile peer must not be able to flood the exporter's stderr.
 * Each kind of warning is emitted at most once per interval; the next one says how many
 * were suppressed meanwhile.
 *
 * @module
 */

/** At most one warning of a kind per this many milliseconds. */
export const WARNING_INTERVAL_MS = 10_000;

const last = new Map<string, { at: number; suppressed: number }>();

/** Emits a `DmaBufWarning` of kind `kind` unless one was emitted in the last interval. */
export function warnLimited(kind: string, message: string): void {
  const now = Date.now();
  const entry = last.get(kind);
  if (entry && now - entry.at < WARNING_INTERVAL_MS) {
    entry.suppressed += 1;
    return;
  }
  const suppressed = entry?.suppressed ?? 0;
  last.set(kind, { at: now, suppressed: 0 });
  const note = suppressed > 0 ? ` (${suppressed} more like it in the last ${WARNING_INTERVAL_MS / 1000} s were not shown)` : '';
  process.emitWarning(`dmabuf: ${message}${note}`, 'DmaBufWarning');
}
