/**
 * The synchronisation layer: fences, timelines, fence files and reservation objects. It knows
 * nothing of buffers. See docs/sync.md.
 *
 * @module
 */
export { DmaFence } from './fence.js';
export type { DmaFenceOptions, DmaFenceCallback } from './fence.js';
export { DmaFenceTimeline } from './timeline.js';
export { DmaResv } from './resv.js';
export { addAndWait } from './reservation.js';
export type { Reservation } from './reservation.js';
export { DMA_RESV_USAGES } from './usage.js';
export type { DmaResvUsage } from './usage.js';
export type { FenceWaitOptions } from './wait-options.js';
