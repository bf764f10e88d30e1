/**
 * `RemoteResv`: an importer's `buf.resv`, a proxy of the buffer's reservation object, which
 * lives in the exporter's thread. Every call is a request on the importer's channel (see
 * `resv-service.ts` for the exporter's side and `docs/protocol.md` for the messages):
 *
 * | call | request | crosses |
 * | --- | --- | --- |
 * | `add(fence, usage)` | RESV_ADD | the fence's fence file, to the exporter |
 * | `addFd(fd, usage)` | RESV_ADD | `fd` |
 * | `fences(usage)` | RESV_FENCES | up to 4 fence files, back |
 * | `test(usage)` | RESV_WAIT with timeout 0 | nothing |
 * | `wait(usage, options)` | RESV_WAIT, answered when done; CANCEL on abort | nothing |
 * | `addAndWait(fence, usage, options)` | RESV_WAIT with the fence | the fence's fence file |
 * | `exportFence(usage)`, `exportFd(usage)` | RESV_EXPORT | one fence file, back |
 *
 * A wait costs one round trip and no descriptor: the exporter answers when its fences have
 * signalled. Fences that come back are imported here (`DmaFence.fromFd`), so a fence this
 * thread added comes back as the very same fence.
 *
 * @module
 */
import { DmaBufError } from '../core/errors.js';
import { native } from '../native/binding.js';
import { DmaFence } from '../sync/fence.js';
import type { Reservation } from '../sync/reservation.js';
import { respectedLevel, usageLevel, type DmaResvUsage } from '../sync/usage.js';
import { parseWaitOptions, type FenceWaitOptions } from '../sync/wait-options.js';
import { closeAll, type Reply, type RequestOptions } from './connection.js';
import { MAX_RESV_FENCES, MsgType, field, type MsgTypeValue } from './protocol.js';

/** How a proxy reaches the exporter: the importer's channel. */
export interface ResvLink {
  /** Sends a request; the exporter's failure comes back with its code (`EPIPE` once gone). */
  request(op: string, type: MsgTypeValue, body: Record<string, unknown>, options?: RequestOptions): Promise<Reply>;
  /** Tells the exporter something it does not answer (id 0). */
  notify(type: MsgTypeValue, body: Record<string, unknown>): void;
  /** Throws `EPIPE` when the exporter is gone (before anything is made for a request). */
  live(op: string): void;
}

/** The longest timeout a RESV_WAIT carries (setTimeout's longest delay is chained beyond). */
const MAX_WAIT_MS = Number.MAX_SAFE_INTEGER;

function protocolError(what: string): DmaBufError {
  return new DmaBufError('EPROTO', `protocol: ${what}`, { op: 'protocol' });
}

/**
 * An importer's proxy of a buffer's reservation object; see the module description.
 *
 * @example
 * ```ts
 * const buf = await DmaBuf.get(fd);        // exported by another process
 * const done = new DmaFence({ name: 'read' });
 * await buf.resv.add(done, 'read');        // the exporter's writers now wait for it
 * ```
 */
export class RemoteResv implements Reservation {
  readonly #link: ResvLink;
  readonly #buffer: number;

  /** @internal made by the importer with the buffer object. */
  constructor(link: ResvLink, buffer: number) {
    this.#link = link;
    this.#buffer = buffer;
  }

  #request(op: string, type: MsgTypeValue, body: Record<string, unknown>, options?: RequestOptions): Promise<Reply> {
    return this.#link.request(op, type, { buffer: this.#buffer, ...body }, options);
  }

  /**
   * Adds `fence` to the exporter's reservation object: its fence file crosses to the
   * exporter, which watches it. A signalled fence is not sent (it would be pruned at once).
   *
   * @throws {DmaBufError} `EINVAL` for a bad fence or usage; `ENOSPC` past the exporter's
   *   limits; `EACCES` for a write or kernel fence on a read-only buffer; `EPIPE` when the
   *   exporter is gone.
   */
  async add(fence: DmaFence, usage: DmaResvUsage): Promise<void> {
    usageLevel(usage, 'add');
    if (!(fence instanceof DmaFence)) throw new DmaBufError('EINVAL', 'add: fence must be a DmaFence', { op: 'add' });
    if (fence.signaled) return;
    this.#link.live('resv.add'); // before toFd() makes the fence's file for nothing
    const fd = fence.toFd();
    try {
      await this.#request('resv.add', MsgType.RESV_ADD, { usage }, { fds: [fd] });
    } finally {
      native.close(fd);
    }
  }

  /**
   * Adds the fence of a fence descriptor (the caller keeps `fd`) and returns it, imported.
   *
   * @throws {DmaBufError} as `DmaFence.fromFd`, and as {@link RemoteResv.add}.
   */
  async addFd(fd: number, usage: DmaResvUsage): Promise<DmaFence> {
    usageLevel(usage, 'addFd');
    const fence = await DmaFence.fromFd(fd);
    if (!fence.signaled) await this.#request('resv.add', MsgType.RESV_ADD, { usage }, { fds: [fd] });
    return fence;
  }

  /**
   * The unsignalled fences a user of `usage` must respect, imported here, in the exporter's
   * order. Beyond 4 fences, the 4th stands for the rest, merged.
   *
   * @throws {DmaBufError} `EINVAL` for a bad usage; `EPIPE` when the exporter is gone.
   */
  async fences(usage: DmaResvUsage): Promise<DmaFence[]> {
    respectedLevel(usage, 'fences');
    const reply = await this.#request('resv.fences', MsgType.RESV_FENCES, { usage });
    try {
      const count = field.uint(reply.msg.body, 'fences', MAX_RESV_FENCES);
      if (reply.fds.length !== count) throw protocolError(`a RESV_FENCES reply announced ${count} fences and carried ${reply.fds.length} descriptors`);
      const out: DmaFence[] = [];
      for (const fd of reply.fds) {
        const fence = await DmaFence.fromFd(fd);
        if (!fence.signaled && !out.includes(fence)) out.push(fence);
      }
      return out;
    } finally {
      closeAll(reply.fds);
    }
  }

  /**
   * Whether every fence a user of `usage` must respect has signalled (one round trip).
   *
   * @throws {DmaBufError} `EINVAL` for a bad usage; `EPIPE` when the exporter is gone.
   */
  async test(usage: DmaResvUsage): Promise<boolean> {
    respectedLevel(usage, 'test');
    return this.#wait(usage, 0, undefined);
  }

  /**
   * Waits until {@link RemoteResv.test} is true: the exporter answers once its fences for
   * `usage` have signalled (fences added meanwhile too). Aborting `signal` tells the exporter
   * to stop waiting.
   *
   * @returns `true`, or `false` when `timeout` ran out.
   * @throws {DmaBufError} `EINTR` when `signal` aborts; `EINVAL` for bad arguments; `EPIPE`
   *   when the exporter is gone; `ENOSPC` when this process has as many waits pending there
   *   as its limit.
   */
  async wait(usage: DmaResvUsage, options?: FenceWaitOptions): Promise<boolean> {
    respectedLevel(usage, 'wait');
    const { timeout, signal } = parseWaitOptions(options, 'wait');
    if (signal?.aborted) throw new DmaBufError('EINTR', 'wait: interrupted by an aborted signal', { op: 'wait', cause: signal.reason });
    return this.#wait(usage, timeout, signal);
  }

  /**
   * Adds `fence` with `usage` after the fences a user of `usage` must respect, and waits for
   * those, in one round trip (a RESV_WAIT that carries the fence).
   *
   * @returns `true`, or `false` when `timeout` ran out (`fence` stays added).
   * @throws {DmaBufError} as {@link RemoteResv.add} and {@link RemoteResv.wait}.
   */
  async addAndWait(fence: DmaFence, usage: DmaResvUsage, options?: FenceWaitOptions): Promise<boolean> {
    respectedLevel(usage, 'addAndWait');
    if (!(fence instanceof DmaFence)) throw new DmaBufError('EINVAL', 'addAndWait: fence must be a DmaFence', { op: 'addAndWait' });
    const { timeout, signal } = parseWaitOptions(options, 'addAndWait');
    if (signal?.aborted) throw new DmaBufError('EINTR', 'addAndWait: interrupted by an aborted signal', { op: 'addAndWait', cause: signal.reason });
    this.#link.live('resv.addAndWait');
    const fd = fence.toFd();
    try {
      return await this.#wait(usage, timeout, signal, fd);
    } finally {
      native.close(fd);
    }
  }

  async #wait(usage: DmaResvUsage, timeout: number, signal: AbortSignal | undefined, fence?: number): Promise<boolean> {
    const body: Record<string, unknown> = { usage };
    if (timeout !== Infinity) body.timeout = Math.min(Math.ceil(timeout), MAX_WAIT_MS);
    const reply = await this.#request('resv.wait', MsgType.RESV_WAIT, body, {
      signal,
      onAbort: (id) => this.#link.notify(MsgType.CANCEL, { request: id }),
      fds: fence === undefined ? [] : [fence],
    });
    closeAll(reply.fds);
    return field.bool(reply.msg.body, 'signaled');
  }

  /**
   * One fence for what a user of `usage` must respect now (a snapshot), imported here.
   *
   * @throws {DmaBufError} `EINVAL` for a bad usage; `EPIPE` when the exporter is gone.
   */
  async exportFence(usage: DmaResvUsage): Promise<DmaFence> {
    const fd = await this.exportFd(usage);
    try {
      return await DmaFence.fromFd(fd, { name: `reservation snapshot (${usage})` });
    } finally {
      native.close(fd);
    }
  }

  /**
   * A descriptor of the fence of {@link RemoteResv.exportFence}, owned by the caller, as the
   * exporter sent it (not imported here).
   *
   * @throws {DmaBufError} `EINVAL` for a bad usage; `EPIPE` when the exporter is gone.
   */
  async exportFd(usage: DmaResvUsage): Promise<number> {
    respectedLevel(usage, 'exportFd');
    const reply = await this.#request('resv.export', MsgType.RESV_EXPORT, { usage });
    if (reply.fds.length !== 1) {
      closeAll(reply.fds);
      throw protocolError(`a RESV_EXPORT reply must carry exactly one descriptor, got ${reply.fds.length}`);
    }
    return reply.fds[0]!;
  }
}
