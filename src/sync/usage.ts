/**
 * How a fence is used on a reservation object, and who must respect it: the kernel's
 * `enum dma_resv_usage` and `dma_resv_usage_rw`.
 *
 * Usages are ordered from the most to the least respected: `kernel` (memory management:
 * moves, clears) < `write` < `read` < `bookkeep` (fences that nobody waits for implicitly).
 * A user who is about to do something respects every fence of its level and below:
 *
 * | `fences(usage)` | returns the fences added as |
 * | --- | --- |
 * | `'kernel'` | `kernel` |
 * | `'read'` (a reader) | `kernel`, `write` |
 * | `'write'` (a writer) | `kernel`, `write`, `read` |
 * | `'bookkeep'` | all |
 *
 * @module
 */
import { DmaBufError } from '../core/errors.js';

/**
 * How a fence uses a resource: `'kernel' | 'write' | 'read' | 'bookkeep'`.
 *
 * @example
 * ```ts
 * const usage: DmaResvUsage = writing ? 'write' : 'read';
 * resv.add(done, usage);
 * ```
 */
export type DmaResvUsage = 'kernel' | 'write' | 'read' | 'bookkeep';

/**
 * The usages, from the most to the least respected.
 *
 * @example
 * ```ts
 * for (const u of DMA_RESV_USAGES) console.log(u, resv.test(u));
 * ```
 */
export const DMA_RESV_USAGES: readonly DmaResvUsage[] = Object.freeze(['kernel', 'write', 'read', 'bookkeep']);

const LEVEL: Record<DmaResvUsage, number> = { kernel: 0, write: 1, read: 2, bookkeep: 3 };

/**
 * The level of a fence added with `usage` (0 for kernel ... 3 for bookkeep).
 *
 * @throws {DmaBufError} `EINVAL` when `usage` is not one of the four usages.
 */
export function usageLevel(usage: DmaResvUsage, op: string): number {
  const level = typeof usage === 'string' && Object.hasOwn(LEVEL, usage) ? LEVEL[usage] : undefined;
  if (level === undefined) {
    throw new DmaBufError('EINVAL', `${op}: usage must be 'kernel', 'write', 'read' or 'bookkeep', not ${String(usage)}`, { op });
  }
  return level;
}

/**
 * The highest level a user of `usage` respects: a reader respects writes, a writer respects
 * reads too (`dma_resv_usage_rw`); kernel and bookkeep are themselves.
 *
 * @throws {DmaBufError} `EINVAL` when `usage` is not one of the four usages.
 */
export function respectedLevel(usage: DmaResvUsage, op: string): number {
  const level = usageLevel(usage, op);
  if (usage === 'read') return LEVEL.write;
  if (usage === 'write') return LEVEL.read;
  return level;
}
