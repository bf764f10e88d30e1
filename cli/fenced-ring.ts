/**
 * A fenced ring, as the demo and the benchmarks run it: N pooled buffers, exported by the
 * producer and mapped once by it and by every consumer; each frame then passes with fences
 * only (no new descriptor, no new mapping) and a small announcement.
 *
 * Per frame, in slot `frame % N`:
 * 1. The producer waits until every consumer has claimed the slot's previous frame (its read
 *    fence is in the slot's reservation object), then `beginCpuAccess('write', { fence })`
 *    adds the frame's write fence after those read fences and waits for them: nobody still
 *    reads the slot.
 * 2. It announces the frame, paints it and signals the write fence.
 * 3. A consumer, told of the frame, calls `beginCpuAccess('read', { fence })`: its read fence
 *    goes into the slot's reservation object after the write fence, which it waits for (one
 *    round trip to the exporter). It claims the frame (from then on the producer cannot
 *    repaint the slot before that read fence signals), reads, and signals its read fence.
 *
 * Transport-free: the caller carries announcements and claims (worker messages, a child's
 * IPC, a socket).
 */
import { DmaFence, DmaFenceTimeline, type DmaBuf } from '../src/index.js';

/** A slot of the ring, as one side sees it: the buffer and its view, mapped once. */
export interface RingSlot {
  readonly buf: DmaBuf;
  readonly view: Uint8Array;
}

/** The producer's side; see the module description. */
export class RingProducer {
  readonly #slots: readonly RingSlot[];
  /** Per slot, per consumer: the last frame claimed there. */
  readonly #claimed: number[][];
  readonly #paints = new DmaFenceTimeline('ring: frames painted');
  #next = 0;
  #wake: (() => void) | null = null;

  /** A ring over `slots`, read by `consumers` consumers. */
  constructor(slots: readonly RingSlot[], consumers: number) {
    this.#slots = slots;
    this.#claimed = slots.map(() => Array.from({ length: consumers }, () => -1));
  }

  /** The number of the next frame. */
  get next(): number {
    return this.#next;
  }

  /** Consumer `consumer` claimed `frame`: its read fence is in the slot's reservation object. */
  claim(consumer: number, frame: number): void {
    const slot = this.#claimed[frame % this.#slots.length]!;
    slot[consumer] = Math.max(slot[consumer]!, frame);
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /**
   * Produces the next frame: waits for the slot (claims, then `beginCpuAccess('write')` with
   * the frame's write fence), calls `announce`, then `paint`, and signals the fence. One at a
   * time.
   *
   * @returns The frame's number.
   */
  async produce(announce: (frame: number, slot: number) => void, paint: (view: Uint8Array, frame: number) => void): Promise<number> {
    const frame = this.#next++;
    const slot = frame % this.#slots.length;
    const { buf, view } = this.#slots[slot]!;
    const previous = frame - this.#slots.length;
    while (this.#claimed[slot]!.some((c) => c < previous)) await new Promise<void>((resolve) => { this.#wake = resolve; });
    const painted = this.#paints.create(frame + 1, { name: `frame ${frame} painted` });
    await buf.beginCpuAccess('write', { fence: painted });
    announce(frame, slot);
    try {
      paint(view, frame);
      await buf.endCpuAccess('write');
    } finally {
      painted.signal();
    }
    return frame;
  }

  /** Waits until every consumer has read every frame (every slot writable again). */
  async drain(): Promise<void> {
    const last = this.#next - 1;
    for (let f = Math.max(0, last - this.#slots.length + 1); f <= last; f++) {
      const slot = f % this.#slots.length;
      while (this.#claimed[slot]!.some((c) => c < f)) await new Promise<void>((resolve) => { this.#wake = resolve; });
    }
    for (const { buf } of this.#slots) await buf.beginCpuAccess('write');
  }
}

/**
 * A consumer's side of one frame: `beginCpuAccess('read')` with a read fence (added to the
 * slot's reservation object, after the producer's write fence, which it waits for),
 * `claim()`s the frame, runs `read`, and signals the read fence (also when `read` throws).
 */
export async function consumeFrame<T>(buf: DmaBuf, claim: () => void, read: () => T | Promise<T>): Promise<T> {
  const reading = new DmaFence({ name: 'ring: frame read' });
  try {
    await buf.beginCpuAccess('read', { fence: reading });
    claim();
    try {
      return await read();
    } finally {
      await buf.endCpuAccess('read');
    }
  } finally {
    reading.signal();
  }
}
