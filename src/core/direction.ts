/**
 * DMA data directions, as `enum dma_data_direction`.
 *
 * @module
 */
import { DmaBufError } from './errors.js';

/**
 * Which way data moves during a map:
 * - `'to-device'`: the device reads the buffer (the CPU device gives a view that cannot change it);
 * - `'from-device'`: the device writes the buffer;
 * - `'bidirectional'`: both;
 * - `'none'`: no transfer; valid to name, refused by `map` with `EINVAL` (as the kernel's DMA_NONE).
 */
export type DmaDirection = 'bidirectional' | 'to-device' | 'from-device' | 'none';

/** Every direction. */
export const DIRECTIONS: readonly DmaDirection[] = ['bidirectional', 'to-device', 'from-device', 'none'];

/** Whether a map with this direction lets the device change the buffer. */
export function isWritableDirection(direction: DmaDirection): boolean {
  return direction === 'bidirectional' || direction === 'from-device';
}

/** Validates a direction for `map`: a known direction other than `'none'`, else `EINVAL`. */
export function checkMapDirection(op: string, direction: unknown): asserts direction is DmaDirection {
  if (direction === 'none') {
    throw new DmaBufError('EINVAL', `${op}: direction 'none' moves no data and cannot be mapped; use 'to-device', 'from-device' or 'bidirectional'`, { op });
  }
  if (typeof direction !== 'string' || !DIRECTIONS.includes(direction as DmaDirection)) {
    throw new DmaBufError('EINVAL', `${op}: unknown direction ${JSON.stringify(direction)}; expected 'bidirectional', 'to-device' or 'from-device'`, { op });
  }
}
