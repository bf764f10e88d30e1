/**
 * `DmaFenceTimeline`: fences that signal in order, the user-space equivalent of a fence
 * context with seqnos (and of the kernel's `sw_sync` timeline, for tests).
 *
 * A timeline has a value, the highest seqno it has reached (0 at first). Its fences signal in
 * seqno order: signalling fence n first signals, in seqno order, every unsignalled fence of
 * the timeline with a lower seqno (without an error: the timeline passed them), then n (with
 * its own outcome), then any other fence with the same seqno n; the value becomes n if it was
 * lower. Fences with equal seqnos signal in the order they were created.
 *
 * `timeline.signal(seqno)` moves the timeline to `seqno` (the kernel's `SW_SYNC_IOC_INC`, but
 * absolute): every fence up to it signals, in order, even where no fence has that exact seqno.
 * A fence created at or below the value is signalled at once, as on a `sw_sync` timeline.
 * Seqnos never go back: signalling at or below the value does nothing.
 *
 * @module
 */
import { DmaBufError } from '../core/errors.js';
import { fenceInternals, type DmaFence, type DmaFenceOptions } from './fence.js';

function checkSeqno(seqno: unknown, op: string): number {
  if (typeof seqno !== 'number' || !Number.isSafeInteger(seqno) || seqno < 0) {
    throw new DmaBufError('EINVAL', `${op}: seqno must be a non-negative safe integer, not ${String(seqno)}`, { op });
  }
  return seqno;
}

/**
 * An ordered sequence of fences.
 *
 * @example
 * ```ts
 * const gpu = new DmaFenceTimeline('gpu ring');
 * const a = gpu.create(1), b = gpu.create(2);
 * b.signal();                              // signals a, then b
 * a.signaled;                              // true
 * ```
 */
export class DmaFenceTimeline {
  readonly #name: string;
  #value = 0;
  /** Unsignalled fences by seqno, then creation order. */
  #pending: Array<{ seqno: number; fence: DmaFence }> = [];

  /**
   * A new timeline at value 0.
   *
   * @throws {DmaBufError} `EINVAL` when `name` is not a string of at most 255 characters.
   * @example
   * ```ts
   * const tl = new DmaFenceTimeline('decoder');
   * ```
   */
  constructor(name: string) {
    if (typeof name !== 'string' || name.length > 255) {
      throw new DmaBufError('EINVAL', 'DmaFenceTimeline: name must be a string of at most 255 characters', { op: 'DmaFenceTimeline' });
    }
    this.#name = name;
  }

  /**
   * The timeline's name.
   *
   * @example
   * ```ts
   * new DmaFenceTimeline('decoder').name;    // 'decoder'
   * ```
   */
  get name(): string {
    return this.#name;
  }

  /**
   * The highest seqno the timeline has reached: every fence up to it has signalled.
   *
   * @example
   * ```ts
   * const tl = new DmaFenceTimeline('t');
   * tl.create(3).signal();
   * tl.value;                                // 3
   * ```
   */
  get value(): number {
    return this.#value;
  }

  /**
   * A new fence at `seqno` on this timeline, signalled by its `signal()` or by the timeline
   * reaching `seqno`. At or below {@link DmaFenceTimeline.value} it is already signalled.
   *
   * @throws {DmaBufError} `EINVAL` when `seqno` is not a non-negative safe integer, or for bad
   *   options.
   * @example
   * ```ts
   * const f = tl.create(tl.value + 1, { name: 'frame' });
   * ```
   */
  create(seqno: number, options?: DmaFenceOptions): DmaFence {
    checkSeqno(seqno, 'create');
    const fence = fenceInternals.create(options, 'create', `${this.#name}#${seqno}`, { context: this, seqno }, (f, error) => this.#reach(seqno, f, error));
    if (seqno <= this.#value) {
      fenceInternals.settle(fence, undefined);
      return fence;
    }
    let i = this.#pending.length;
    while (i > 0 && this.#pending[i - 1]!.seqno > seqno) i--;
    this.#pending.splice(i, 0, { seqno, fence });
    return fence;
  }

  /**
   * Moves the timeline to `seqno`: signals, in seqno order, every unsignalled fence up to
   * it. Does nothing at or below the current value.
   *
   * @returns How many fences it signalled.
   * @throws {DmaBufError} `EINVAL` when `seqno` is not a non-negative safe integer.
   * @example
   * ```ts
   * tl.signal(tl.value + 1);                 // the next fence signals
   * ```
   */
  signal(seqno: number): number {
    checkSeqno(seqno, 'signal');
    return this.#reach(seqno, undefined, undefined);
  }

  /**
   * Signals the fences up to `seqno` in order; `fence` (at `seqno`) gets `error`, the others
   * none.
   */
  #reach(seqno: number, fence: DmaFence | undefined, error: DmaBufError | undefined): number {
    if (seqno > this.#value) this.#value = seqno;
    let count = 0;
    const settle = (f: DmaFence, e: DmaBufError | undefined): void => {
      if (fenceInternals.settle(f, e)) count++;
    };
    // Re-read the list after each signal: a callback may create or signal fences.
    for (let next = this.#pending[0]; next && next.seqno < seqno; next = this.#pending[0]) {
      this.#pending.shift();
      settle(next.fence, undefined);
    }
    if (fence) {
      const i = this.#pending.findIndex((p) => p.fence === fence);
      if (i >= 0) this.#pending.splice(i, 1);
      settle(fence, error);
    }
    for (let next = this.#pending[0]; next && next.seqno <= seqno; next = this.#pending[0]) {
      this.#pending.shift();
      settle(next.fence, undefined);
    }
    return count;
  }
}
