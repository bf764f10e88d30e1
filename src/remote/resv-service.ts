/**
 * The exporter's side of a buffer's reservation object and CPU access, for importers in
 * other threads and processes: what RESV_ADD, RESV_FENCES, RESV_WAIT, RESV_EXPORT, CPU_ACCESS
 * and CANCEL do on one channel (see `docs/protocol.md`).
 *
 * The buffer's reservation object lives here, in the exporter's thread (`buf.resv`); an
 * importer's `buf.resv` is a proxy ({@link RemoteResv}) whose calls arrive here. Fences cross
 * as fence descriptors: a fence an importer adds is imported here (`DmaFence.fromFd`) and
 * watched until it signals; fences sent back are this thread's fence files.
 *
 * A holder of the buffer's file is not trusted:
 * - every fence it adds is counted against its process and against the buffer until the
 *   fence signals (`maxFencesPerProcess`, `maxFencesPerBuffer`), checked before anything is
 *   imported; past either, `ENOSPC`;
 * - every wait it has pending here is counted (`maxWaitsPerProcess`), and ends when the
 *   importer cancels it or its channel closes;
 * - a fence whose signaller dies signals with `EPIPE` (the fence file's hang-up): it leaves
 *   the reservation object, and nobody waits for it any longer;
 * - a process holding a read-only buffer may not add `'write'` or `'kernel'` fences
 *   (`EACCES`): it would hold up the buffer's readers.
 *
 * @module
 */
import type { DmaBuf } from '../core/dma-buf.js';
import { DmaBufError } from '../core/errors.js';
import type { CpuAccess } from '../core/ops.js';
import { DmaFence } from '../sync/fence.js';
import { addAndWait } from '../sync/reservation.js';
import { DMA_RESV_USAGES, type DmaResvUsage } from '../sync/usage.js';
import { charge, refund, serviceLimits } from './limits.js';
import { MAX_RESV_FENCES, MsgType, field, type Message } from './protocol.js';
import { closeAll } from './connection.js';
import type { Answer } from './service.js';

const ACCESSES: readonly CpuAccess[] = ['read', 'write', 'read-write'];

/** Fences importers added and that have not signalled: for each, the buffers charged, and who. */
const charged = new Map<DmaFence, Map<number, { pid: number; buf: DmaBuf }>>();
/** Per buffer: the unsignalled fences importers added to its reservation object. */
const perBuffer = new WeakMap<DmaBuf, number>();

function chargeFence(pid: number, buf: DmaBuf): void {
  charge(pid, 'fences', 'resv.add');
  const held = perBuffer.get(buf) ?? 0;
  const max = serviceLimits().maxFencesPerBuffer;
  if (held >= max) {
    refund(pid, 'fences');
    throw new DmaBufError('ENOSPC', `resv.add: the reservation object of buffer "${buf.name}" already holds ${held} unsignalled fences from importers, its limit (maxFencesPerBuffer = ${max}); wait for some to signal, or raise the limit with setServiceLimits() in the exporter`, { op: 'resv.add' });
  }
  perBuffer.set(buf, held + 1);
}

function refundFence(pid: number, buf: DmaBuf): void {
  refund(pid, 'fences');
  const held = perBuffer.get(buf) ?? 0;
  if (held > 1) perBuffer.set(buf, held - 1);
  else perBuffer.delete(buf);
}

/** Keeps the charge of `fence` on `buf` until it signals; false when it was charged already. */
function keepCharge(fence: DmaFence, pid: number, buf: DmaBuf): boolean {
  let bufs = charged.get(fence);
  if (bufs?.has(buf.id)) return false;
  if (!bufs) {
    const entries = new Map<number, { pid: number; buf: DmaBuf }>();
    const registered = fence.addCallback(() => {
      charged.delete(fence);
      for (const e of entries.values()) refundFence(e.pid, e.buf);
    });
    if (!registered) return false; // signalled meanwhile: nothing to keep
    bufs = entries;
    charged.set(fence, entries);
  }
  bufs.set(buf.id, { pid, buf });
  return true;
}

/** How many fences importers added to `buf` and that have not signalled (for tests). */
export function importedFenceCount(buf: DmaBuf): number {
  return perBuffer.get(buf) ?? 0;
}

/** Errors thrown by an exporter's op, as {@link DmaBufError}s (a foreign error becomes `EIO`). */
function opError(err: unknown, op: string): DmaBufError {
  if (err instanceof DmaBufError) return err;
  return new DmaBufError('EIO', `${op}: the exporter's op failed: ${err instanceof Error ? err.message : String(err)}`, { op, cause: err });
}

/** One channel's reservation and CPU-access requests. */
export class ResvService {
  readonly #pid: number;
  /** Waits in progress (RESV_WAIT, CPU_ACCESS), by request id. */
  readonly #waits = new Map<number, AbortController>();

  /** `pid`: the importer's process, charged for its fences and waits. */
  constructor(pid: number) {
    this.#pid = pid;
  }

  /**
   * Runs one request about `buf`. Takes over `fds` (RESV_ADD's fence descriptor; any other
   * descriptor is closed).
   *
   * @throws {DmaBufError} `EPROTO` for bad fields; `ENOSPC` past a limit; `EACCES`,
   *   `EINVAL` and the reservation object's or the ops' own errors.
   */
  async dispatch(msg: Message, fds: number[], buf: DmaBuf): Promise<Answer | undefined> {
    const { body } = msg;
    try {
      switch (msg.type) {
        case MsgType.RESV_ADD: {
          const usage = field.oneOf(body, 'usage', DMA_RESV_USAGES);
          if (fds.length !== 1) throw new DmaBufError('EPROTO', `protocol: a RESV_ADD must carry exactly one descriptor (the fence), got ${fds.length}`, { op: 'protocol' });
          return await this.#add(buf, usage, fds[0]!);
        }
        case MsgType.RESV_FENCES:
          return await this.#fences(buf, field.oneOf(body, 'usage', DMA_RESV_USAGES));
        case MsgType.RESV_WAIT: {
          const usage = field.oneOf(body, 'usage', DMA_RESV_USAGES);
          const timeout = body.timeout === undefined ? Infinity : field.uint(body, 'timeout');
          if (fds.length > 1) throw new DmaBufError('EPROTO', `protocol: a RESV_WAIT carries at most one descriptor (the waiter's own fence), got ${fds.length}`, { op: 'protocol' });
          if (fds.length === 1) return await this.#addAndWait(msg.id, buf, usage, fds[0]!, timeout);
          if (timeout === 0) return { body: { signaled: await buf.resv.test(usage) }, fds: [] };
          const signaled = await this.#waiting(msg.id, 'resv.wait', (signal) => buf.resv.wait(usage, { timeout, signal }));
          return { body: { signaled }, fds: [] };
        }
        case MsgType.RESV_EXPORT: {
          const fd = await buf.resv.exportFd(field.oneOf(body, 'usage', DMA_RESV_USAGES));
          return { body: {}, fds: [fd], closeFds: true };
        }
        case MsgType.CPU_ACCESS:
          return await this.#cpuAccess(msg, buf);
        default:
          throw new DmaBufError('EPROTO', `protocol: unexpected message type ${msg.type} from an importer`, { op: 'protocol' });
      }
    } finally {
      closeAll(fds);
    }
  }

  /** CANCEL: stops the wait of request `body.request`, if it is still pending. */
  cancel(body: Record<string, unknown>): void {
    this.#waits.get(field.uint(body, 'request', 0xffffffff))?.abort();
  }

  /** The channel closed: every wait ends (nobody is left to answer). */
  close(): void {
    for (const w of [...this.#waits.values()]) w.abort();
  }

  async #add(buf: DmaBuf, usage: DmaResvUsage, fd: number): Promise<Answer> {
    await this.#withFence('resv.add', buf, usage, fd, async (fence) => {
      if (!fence.signaled) await buf.resv.add(fence, usage);
    });
    return { body: {}, fds: [] };
  }

  /** RESV_WAIT with the waiter's own fence: added after what it must respect, which is waited for. */
  async #addAndWait(id: number, buf: DmaBuf, usage: DmaResvUsage, fd: number, timeout: number): Promise<Answer> {
    const op = 'resv.addAndWait';
    const signaled = await this.#withFence(op, buf, usage, fd, (fence) =>
      this.#waiting(id, op, (signal) => addAndWait(buf.resv, fence, usage, { timeout, signal })));
    return { body: { signaled }, fds: [] };
  }

  /**
   * Imports the fence of `fd` for `fn`, which adds it to `buf`'s reservation object with
   * `usage`: checked and counted first (past a limit, nothing is imported), and counted until
   * it signals once added.
   */
  async #withFence<T>(op: string, buf: DmaBuf, usage: DmaResvUsage, fd: number, fn: (fence: DmaFence) => Promise<T>): Promise<T> {
    if (buf.readOnly && (usage === 'write' || usage === 'kernel')) {
      throw new DmaBufError('EACCES', `${op}: buffer "${buf.name}" is ${buf.sealed ? 'sealed' : 'read-only'} for importers; they may add 'read' and 'bookkeep' fences only`, { op });
    }
    chargeFence(this.#pid, buf);
    let kept = false;
    try {
      const fence = await DmaFence.fromFd(fd, { name: `fence of pid ${this.#pid}` });
      // Kept from before the add (a wait may follow it) until the fence signals.
      kept = keepCharge(fence, this.#pid, buf);
      return await fn(fence);
    } finally {
      if (!kept) refundFence(this.#pid, buf);
    }
  }

  async #fences(buf: DmaBuf, usage: DmaResvUsage): Promise<Answer> {
    const list = await buf.resv.fences(usage);
    const fds: number[] = [];
    try {
      // At most MAX_RESV_FENCES descriptors: beyond, the rest cross as one merged fence.
      const direct = list.length <= MAX_RESV_FENCES ? list : list.slice(0, MAX_RESV_FENCES - 1);
      for (const f of direct) fds.push(f.toFd());
      if (direct.length < list.length) fds.push(DmaFence.merge(list.slice(direct.length), { name: `the other ${list.length - direct.length} fences of "${buf.name}" (${usage})` }).toFd());
    } catch (err) {
      closeAll(fds);
      throw err;
    }
    return { body: { fences: fds.length, merged: fds.length < list.length }, fds, closeFds: true };
  }

  async #cpuAccess(msg: Message, buf: DmaBuf): Promise<Answer> {
    const { body } = msg;
    const access = field.oneOf(body, 'access', ACCESSES);
    const phase = field.oneOf(body, 'phase', ['begin', 'end'] as const);
    const offset = field.uint(body, 'offset');
    const length = field.uint(body, 'length');
    if (length === 0 || offset + length > buf.size) {
      throw new DmaBufError('EINVAL', `cpuAccess: the range [${offset}, ${offset + length}) is empty or outside the buffer's ${buf.size} bytes`, { op: 'cpuAccess' });
    }
    const op = phase === 'begin' ? 'beginCpuAccess' : 'endCpuAccess';
    const fn = buf.ops[op];
    if (fn) {
      await this.#waiting(msg.id, op, async (signal) => {
        try {
          await fn.call(buf.ops, buf, access, { signal, offset, length });
        } catch (err) {
          throw opError(err, op);
        }
      });
    }
    return { body: {}, fds: [] };
  }

  /** Runs a wait of request `id`, counted against the importer and cancellable. */
  async #waiting<T>(id: number, op: string, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    if (this.#waits.has(id)) throw new DmaBufError('EINVAL', `${op}: request ${id} is already waiting on this channel`, { op });
    charge(this.#pid, 'waits', op);
    const controller = new AbortController();
    this.#waits.set(id, controller);
    try {
      return await fn(controller.signal);
    } finally {
      this.#waits.delete(id);
      refund(this.#pid, 'waits');
    }
  }
}
