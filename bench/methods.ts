/**
 * Ways to hand a buffer of `size` bytes to another process or thread, each with one
 * long-lived receiver: dmabuf, the C floor, child_process.send, a worker postMessage copy, a
 * byte stream over a Unix socket, and a SharedArrayBuffer (postMessage of it, or an
 * Atomics.notify on one already shared). The hand-off and the full-read cases run them side
 * by side.
 *
 * Every buffer is filled the same way before it is handed off: 0x2a everywhere, 0x11 first
 * and 0x22 last; every receiver answers the first and last byte it read, which is checked.
 * `t0` is taken by the sender just before it starts the hand-off (for dmabuf: before
 * buf.fd()); `tRead` by the receiver once it has read (CLOCK_MONOTONIC in both).
 */
import { spawn, fork, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { once } from 'node:events';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { Worker } from 'node:worker_threads';
import { BufferChannel, CpuDevice, postBuffer, systemHeap, type DmaBuf, type DmaBufOps } from '../src/index.js';
import { kOnRelease } from '../src/core/internal.js';
import { serviceChannels } from '../src/remote/service.js';
import { native } from '../src/native/binding.js';
import { now, receiver, root, track } from './harness.js';
import { perHandoffByName, processCpuNs, threadCpuNs, traceSyscalls, type Costs } from './costs.js';
import { Packets, type Msg } from './receivers/wire.js';

export type ReadMode = 'ends' | 'all';

/** One hand-off, in nanoseconds. */
export interface Sample {
  /** t0 (sender) to the receiver having read. */
  oneWayNs: number;
  /** t0 to the sender having the receiver's ack. */
  roundTripNs: number;
  /** From recvmsg's return (the receiver has the descriptor) to having read: dmabuf, C. */
  receiverNs?: number;
  /** Sub-steps in the receiver (dmabuf: get, attach, map, read; and cleanup after). */
  steps?: Record<string, number>;
  /** CPU time (user + system, ns) spent on the hand-off by each side, where measured. */
  cpu?: Record<string, number>;
  /** Garbage collections in the receiver since its previous answer (dmabuf). */
  gc?: { count: number; major: number; ms: number };
}

export interface Method {
  /** Short name, used in the results. */
  readonly name: string;
  /** Starts the receiver. */
  start(): Promise<void>;
  /** Makes a buffer of `size` bytes, filled, ready to hand off (frees the previous one). */
  prepare(size: number, payload: Payload): Promise<void>;
  /** One hand-off of the prepared buffer. */
  once(read: ReadMode): Promise<Sample>;
  /** Frees the prepared buffer. */
  free(): Promise<void>;
  /** Stops the receiver. */
  close(): Promise<void>;
  /**
   * Optional: the costs of one hand-off (CPU of each side, garbage collections in the
   * receiver), from `n` back-to-back hand-offs of this method alone (see bench/costs.ts).
   */
  costs?(n: number, read: ReadMode): Promise<Costs>;
  /** Optional: system calls of the receiver per hand-off, from `n` hand-offs under strace. */
  syscalls?(n: number, read: ReadMode): Promise<Partial<Costs>>;
}

/**
 * Starts `methods`, prepares each for `size`, then runs `rounds` untimed hand-offs of each
 * in turn: the warm-up of the A/B tools (`phase.ts`, `ratio.ts`).
 */
export async function startWarm(methods: readonly { start(): Promise<void>; prepare(size: number): Promise<void>; once(read: ReadMode): Promise<Sample> }[], size: number, rounds: number): Promise<void> {
  for (const m of methods) await m.start();
  for (const m of methods) await m.prepare(size);
  for (let i = 0; i < rounds; i++) for (const m of methods) await m.once('ends');
}

export const FIRST = 0x11;
export const LAST = 0x22;

function fillPattern(v: Uint8Array): void {
  v.fill(0x2a);
  v[0] = FIRST;
  v[v.length - 1] = LAST;
}

function check(name: string, first: unknown, last: unknown): void {
  if (first !== FIRST || last !== LAST) throw new Error(`${name}: the receiver read ${String(first)}/${String(last)}, expected ${FIRST}/${LAST}`);
}

/**
 * A new system-heap buffer of `size` bytes, written by this process through a CpuDevice
 * (0x2a, first byte 0x11, last 0x22) and unmapped: its storage exists, as a producer's frame
 * does once written.
 */
export async function filledBuffer(size: number, pageSize: number, name: string): Promise<DmaBuf> {
  const buf = systemHeap.allocate(size, { name });
  try {
    const filler = await buf.attach(new CpuDevice(pageSize > 4096 ? { name: 'bench-exporter', pageSize } : { name: 'bench-exporter' }));
    const sgt = await filler.map('bidirectional');
    for (const s of sgt.segments) s.view!.fill(0x2a);
    const segs = sgt.segments;
    segs[0]!.view![0] = FIRST;
    const last = segs[segs.length - 1]!.view!;
    last[last.length - 1] = LAST;
    await filler.unmap(sgt);
    await filler.detach();
  } catch (err) {
    buf.put();
    throw err;
  }
  return buf;
}

/** Resolves when `buf` is released (every holder everywhere put it), or rejects after `ms`. */
function releaseOf(buf: DmaBuf, what: string, ms = 30_000): { promise: Promise<void>; cancel(): void } {
  let timer: NodeJS.Timeout | undefined;
  const promise = new Promise<void>((resolve, reject) => {
    (buf as unknown as { [kOnRelease](fn: () => void): void })[kOnRelease](() => {
      if (timer) clearTimeout(timer);
      resolve();
    });
    timer = setTimeout(() => reject(new Error(`${what}: the buffer was not released ${ms} ms after the hand-off (a holder leaked?)`)), ms);
    timer.unref();
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

/**
 * Resolves when `buf` has no attachment and no map left in this (the exporting) thread: the
 * receiver's unmap and detach have run here. Driven by the event, not by polling (a timer
 * would add a sleep and a wake-up of the harness to the exporter's CPU time): the buffer's
 * `ops.detach` is wrapped, for this buffer alone, to look once the detach has completed.
 * Rejects after `ms`.
 */
function idleOf(buf: DmaBuf, what: string, ms = 30_000): Promise<void> {
  const ops = buf.ops;
  const isIdle = (): boolean => buf.mapCount === 0 && buf.attachments.length === 0;
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: the receiver's unmap and detach did not reach the exporter in ${ms} ms`)), ms);
    timer.unref();
    // The core finishes a detach (the attachment leaves the list) when the op has returned,
    // or when the promise it returned settles: look a job later.
    const look = (): void => queueMicrotask(() => {
      if (!isIdle()) return;
      clearTimeout(timer);
      resolve();
    });
    const detach: DmaBufOps['detach'] = (b, attachment) => {
      const r = ops.detach?.call(ops, b, attachment);
      void Promise.resolve(r).then(look, look);
      return r;
    };
    (buf as { ops: DmaBufOps }).ops = Object.create(ops, { detach: { value: detach } }) as DmaBufOps;
  });
}

/** The bytes the copying baselines send, made once per size and shared by them. */
export class Payload {
  #size = 0;
  #bytes: Uint8Array | null = null;
  #sab: SharedArrayBuffer | null = null;

  reset(size: number): void {
    this.#size = size;
    this.#bytes = null;
    this.#sab = null;
  }

  get bytes(): Uint8Array {
    if (!this.#bytes) {
      this.#bytes = new Uint8Array(this.#size);
      fillPattern(this.#bytes);
    }
    return this.#bytes;
  }

  get sab(): SharedArrayBuffer {
    if (!this.#sab) {
      this.#sab = new SharedArrayBuffer(this.#size);
      fillPattern(new Uint8Array(this.#sab));
    }
    return this.#sab;
  }
}

/** Options of every Node.js receiver; BENCH_NODE_ARGS adds some (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"). */
const nodeArgs = ['--no-warnings', ...(process.env['BENCH_NODE_ARGS'] ?? '').split(' ').filter(Boolean)];

// ---------------------------------------------------------------------------------------

/** dmabuf: the exporter is this process; the receiver imports from the descriptor. */
export class DmabufMethod implements Method {
  readonly name: string;
  readonly pageSize: number;
  #child: ChildProcess | null = null;
  #link: Packets | null = null;
  #buf: DmaBuf | null = null;
  #gc = { count: 0, major: 0, ms: 0 };

  /** Whether the receiver uses DmaBuf.getMapped (one round trip) instead of get, attach, map. */
  readonly oneTrip: boolean;

  constructor(options: { pageSize?: number; oneTrip?: boolean } = {}) {
    this.pageSize = options.pageSize ?? 4096;
    this.oneTrip = options.oneTrip ?? false;
    this.name = (this.pageSize > 4096 ? 'dmabuf (2 MiB pages)' : 'dmabuf') + (this.oneTrip ? ' getMapped' : '');
  }

  async start(): Promise<void> {
    const c = native.constants;
    const [mine, theirs] = native.socketpair(c.SOCK_SEQPACKET, false);
    this.#child = track(spawn(process.execPath, [...nodeArgs, receiver('dmabuf')], { stdio: ['ignore', 'inherit', 'inherit', theirs] }));
    native.close(theirs);
    this.#link = new Packets(mine);
    this.#link.listen();
    const hello = await this.#reply();
    if (!hello.ready) throw new Error('dmabuf receiver did not start');
  }

  /** The receiver's process id (for the memory case). */
  get pid(): number {
    return this.#child!.pid!;
  }

  async #reply(): Promise<Msg> {
    const r = await unlessExits(this.#child!, this.name, this.#link!.next());
    if (r.msg.op === 'eof') throw new Error('dmabuf receiver exited');
    if (!r.msg.ok) throw new Error(`dmabuf receiver: ${String(r.msg.error)}`);
    return r.msg;
  }

  async prepare(size: number): Promise<void> {
    await this.free();
    const buf = await filledBuffer(size, this.pageSize, `bench-${size}`);
    const info = systemHeap.storage(buf);
    if (info.pageSize !== this.pageSize) throw new Error(`dmabuf: storage has ${info.pageSize}-byte pages, wanted ${this.pageSize}`);
    this.#buf = buf;
  }

  async once(read: ReadMode): Promise<Sample> {
    const cpu0 = process.cpuUsage();
    const t0 = now();
    const fd = this.#buf!.fd();
    this.#link!.send({ op: 'handoff', read, pageSize: this.pageSize, oneTrip: this.oneTrip }, [fd]);
    native.close(fd);
    const r = await this.#reply();
    const tAck = now();
    const cpu = process.cpuUsage(cpu0);
    check(this.name, r.first, r.last);
    const t = (k: string): bigint => BigInt(r[k] as string);
    const tRecv = t('tRecv');
    const g = r.gc as { count: number; major: number; ms: number };
    const gc = { count: g.count - this.#gc.count, major: g.major - this.#gc.major, ms: g.ms - this.#gc.ms };
    this.#gc = g;
    return {
      oneWayNs: Number(t('tRead') - t0),
      roundTripNs: Number(tAck - t0),
      receiverNs: Number(t('tRead') - tRecv),
      steps: {
        send: Number(tRecv - t0),
        get: Number(t('tGet') - tRecv),
        attach: Number(t('tAttach') - t('tGet')),
        map: Number(t('tMap') - t('tAttach')),
        read: Number(t('tRead') - t('tMap')),
        cleanup: Number(t('tDone') - t('tRead')),
        ack: Number(tAck - t('tDone')),
      },
      cpu: { 'receiver user': Number(r.cpuUser) * 1e3, 'receiver sys': Number(r.cpuSys) * 1e3, 'exporter user': cpu.user * 1e3, 'exporter sys': cpu.system * 1e3 },
      gc,
    };
  }

  /** Asks the receiver to import, map and touch every page, and keep the mapping. */
  async hold(buf: DmaBuf): Promise<void> {
    const fd = buf.fd();
    this.#link!.send({ op: 'hold' }, [fd]);
    native.close(fd);
    await this.#reply();
  }

  async drop(): Promise<void> {
    this.#link!.send({ op: 'drop' });
    await this.#reply();
  }

  async free(): Promise<void> {
    this.#buf?.put();
    this.#buf = null;
  }

  async close(): Promise<void> {
    await this.free();
    this.#link?.close();
    this.#link = null;
    if (this.#child && this.#child.exitCode === null) await once(this.#child, 'exit');
  }
}

// ---------------------------------------------------------------------------------------
// The one-message hand-off over a BufferChannel, and the bare BufferChannel hop, between the
// same two processes (bench/receivers/channel.ts).

/**
 * The receiver process of the BufferChannel methods: two channels and a control socket.
 * `receivers/channel.ts` by default; `receivers/minimal.ts` (`new ChannelHost('minimal')`)
 * receives the same hand-offs with no framework (see bench/phase.ts).
 */
export class ChannelHost {
  handoffs: BufferChannel | null = null;
  bare: BufferChannel | null = null;
  #control: Packets | null = null;
  #child: ChildProcess | null = null;
  #starting: Promise<void> | null = null;
  #users = 0;

  constructor(readonly receiverName: 'channel' | 'minimal' = 'channel') {}

  /** Starts the child once, for every method that uses it. */
  start(): Promise<void> {
    this.#users++;
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    const [h, hTheirs] = BufferChannel.pair();
    const [b, bTheirs] = BufferChannel.pair();
    const [ctl, ctlTheirs] = native.socketpair(native.constants.SOCK_SEQPACKET, false);
    this.handoffs = h;
    this.bare = b;
    this.#child = track(spawn(process.execPath, [...nodeArgs, receiver(this.receiverName)], { stdio: ['ignore', 'inherit', 'inherit', hTheirs, bTheirs, ctlTheirs] }));
    for (const fd of [hTheirs, bTheirs, ctlTheirs]) native.close(fd);
    this.#control = new Packets(ctl);
    this.#control.listen();
    const hello = await this.reply('BufferChannel receiver');
    if (!hello.ready) throw new Error('BufferChannel receiver did not start');
  }

  get pid(): number {
    return this.#child!.pid!;
  }

  /** The receiver's next answer (an ack, or stats). */
  async reply(what: string): Promise<Msg> {
    const r = await unlessExits(this.#child!, what, this.#control!.next());
    if (r.msg.op === 'eof') throw new Error(`${what}: the receiver exited`);
    if (!r.msg.ok) throw new Error(`${what}: ${String(r.msg.error)}`);
    return r.msg;
  }

  /**
   * Starts (`'alloc-start'`) or stops (`'alloc-stop'`, with its summary) the receiver's
   * sampling of what its JavaScript allocates (`bench/alloc.ts`).
   */
  async control(op: 'alloc-start' | 'alloc-stop'): Promise<Msg> {
    const answer = this.reply('BufferChannel receiver');
    this.#control!.send({ op });
    return answer;
  }

  /** The receiver's CPU time so far (ns, its whole process) and garbage collections. */
  async stats(): Promise<{ cpuNs: number; gc: { count: number; major: number; ms: number } }> {
    const answer = this.reply('BufferChannel receiver');
    this.#control!.send({ op: 'stats' });
    return (await answer) as unknown as { cpuNs: number; gc: { count: number; major: number; ms: number } };
  }

  async close(): Promise<void> {
    if (--this.#users > 0 || !this.#child) return;
    this.handoffs?.close();
    this.bare?.close();
    this.#control?.close();
    if (this.#child.exitCode === null && this.#child.signalCode === null) await once(this.#child, 'exit');
    this.#child = null;
  }
}

/**
 * Requests and notifications the exporter (this thread) ran, on every channel: a costs pass
 * runs one method alone, so they are that method's.
 */
function exporterTraffic(): { requests: number; notifications: number } {
  let requests = 0;
  let notifications = 0;
  for (const c of serviceChannels()) {
    requests += c.requests;
    notifications += c.notifications;
  }
  return { requests, notifications };
}

/**
 * A costs pass (CPU, GC) of `n` back-to-back hand-offs, with the receiver's stats around it;
 * for a dmabuf method (`exporter`), also the requests and notifications the exporter ran.
 */
async function costsPass(n: number, once: () => Promise<Sample>, stats: () => Promise<{ cpuNs: number; gc: { count: number; major: number } }>, exporter = false): Promise<Costs> {
  const x0 = exporter ? exporterTraffic() : undefined;
  const s0 = await stats();
  let sender = 0;
  for (let i = 0; i < n; i++) sender += (await once()).cpu!['sender']!;
  const s1 = await stats();
  const x1 = exporter ? exporterTraffic() : undefined;
  return {
    n,
    cpuSender: sender / n,
    cpuReceiver: (s1.cpuNs - s0.cpuNs) / n,
    gc: (s1.gc.count - s0.gc.count) / n,
    gcMajor: (s1.gc.major - s0.gc.major) / n,
    ...(x0 && x1 ? { exporterRequests: (x1.requests - x0.requests) / n, exporterNotifications: (x1.notifications - x0.notifications) / n } : {}),
  };
}

/** A strace pass of `n` hand-offs: calls of process `pid` (all threads, and thread `tid`) per hand-off. */
async function syscallPass(n: number, pid: number, tid: number, once: () => Promise<Sample>, allThreads: boolean): Promise<Partial<Costs>> {
  const count = await traceSyscalls(pid, async () => {
    for (let i = 0; i < n; i++) await once();
  });
  const main = count.byThread.get(tid);
  return {
    syscallsN: n,
    syscalls: (allThreads ? count.total : main?.total ?? 0) / n,
    syscallsMain: (main?.total ?? 0) / n,
    syscallsByName: perHandoffByName(main?.byName, n),
  };
}

/**
 * A one-message hand-off: for each hand-off the exporter (this thread) allocates a new buffer
 * and writes it (before t0), sends it and puts its reference; the receiver maps it with the
 * message (`{ map }`), reads the first and last byte, unmaps, detaches, puts and acks with
 * `{ first, last, stale, tMapped, tRead, tDone }` (`stale`: the view's byteLength after unmap,
 * which must be 0). The sender's CPU is counted from t0 until it has
 * the ack and has run the receiver's unmap and detach; it puts its reference after that, and
 * waits for the release (which frees the storage) before the next hand-off.
 */
abstract class OneMessageMethod implements Method {
  abstract readonly name: string;
  #size = 0;

  abstract start(): Promise<void>;
  abstract close(): Promise<void>;
  abstract costs(n: number, read: ReadMode): Promise<Costs>;
  abstract syscalls(n: number, read: ReadMode): Promise<Partial<Costs>>;
  /** Waits for the receiver's next answer (called before t0). */
  protected abstract ack(): Promise<Record<string, unknown>>;
  /** Sends the buffer (resolves once it left). */
  protected abstract send(buf: DmaBuf, read: ReadMode): Promise<void>;
  /** This side's CPU time so far (ns). */
  protected abstract cpuNow(): number;

  async prepare(size: number): Promise<void> {
    this.#size = size;
  }

  async once(read: ReadMode): Promise<Sample> {
    const buf = await filledBuffer(this.#size, 4096, `bench-${this.name}-${this.#size}`);
    const released = releaseOf(buf, this.name);
    const idle = idleOf(buf, this.name);
    idle.catch(() => {}); // awaited below; a hand-off that failed before leaves it unawaited
    const acked = this.ack();
    const cpu0 = this.cpuNow();
    const t0 = now();
    let r: Record<string, unknown>;
    let tSent: bigint;
    let tAck: bigint;
    let cpu: number;
    try {
      await this.send(buf, read);
      tSent = now();
      r = await acked;
      tAck = now();
      // The exporter's part ends when it has run the receiver's unmap and detach (sent on the
      // route's channel at the end of the receiver's turn, after the ack).
      await idle;
      cpu = this.cpuNow() - cpu0;
    } finally {
      // The producer's reference, put after the measured span: the release that follows
      // frees the storage (milliseconds for large buffers), which is not the hand-off's cost.
      buf.put();
    }
    await released.promise;
    check(this.name, r.first, r.last);
    if (r.stale !== 0) throw new Error(`${this.name}: after unmap the receiver's view still has ${String(r.stale)} bytes (unmap must detach every view)`);
    const t = (k: string): bigint => BigInt(r[k] as string | bigint);
    return {
      oneWayNs: Number(t('tRead') - t0),
      roundTripNs: Number(tAck - t0),
      steps: {
        send: Number(tSent - t0),
        'sent..mapped': Number(t('tMapped') - tSent),
        read: Number(t('tRead') - t('tMapped')),
        cleanup: Number(t('tDone') - t('tRead')),
        ack: Number(tAck - t('tDone')),
      },
      cpu: { sender: cpu },
    };
  }

  async free(): Promise<void> {}
}

/**
 * dmabuf over a BufferChannel: `channel.send(buf)`; the receiver's
 * `channel.receive({ map: { device: cpu, direction: 'to-device' } })`.
 */
export class DmabufChannelMethod extends OneMessageMethod {
  readonly name: string = 'dmabuf-channel';

  constructor(readonly host: ChannelHost) {
    super();
  }

  start(): Promise<void> {
    return this.host.start();
  }

  protected ack(): Promise<Record<string, unknown>> {
    return this.host.reply(this.name);
  }

  protected send(buf: DmaBuf, read: ReadMode): Promise<void> {
    return this.host.handoffs!.send(buf, { read });
  }

  protected cpuNow(): number {
    return processCpuNs();
  }

  costs(n: number, read: ReadMode): Promise<Costs> {
    return costsPass(n, () => this.once(read), () => this.host.stats(), true);
  }

  syscalls(n: number, read: ReadMode): Promise<Partial<Costs>> {
    return syscallPass(n, this.host.pid, this.host.pid, () => this.once(read), true);
  }

  close(): Promise<void> {
    return this.host.close();
  }
}

/**
 * The same hand-offs, from the same kind of exporter, to `receivers/minimal.ts`: the least a
 * safe JavaScript receiver does, with no framework (the checks, `mmap`, one view, the
 * notifications). Not a way to use the package: the baseline of any JavaScript design of the
 * receiving side, to weigh what `channel.receive({ map })` costs over it.
 */
export class MinimalReceiverMethod extends DmabufChannelMethod {
  override readonly name = 'minimal JS receiver';

  constructor() {
    super(new ChannelHost('minimal'));
  }
}

/**
 * The bare BufferChannel hop between the same two processes: `channel.sendFd()` of a small
 * descriptor (/dev/null) with the same metadata; the receiver's `receiveFd()`, a close, and
 * the same ack.
 */
export class ChannelBareMethod implements Method {
  readonly name: string;
  /** The bare hop after the exporter wrote a new buffer of the size (see {@link afterFreshWrite}). */
  readonly afterWrite: boolean;
  costs?: (n: number, read: ReadMode) => Promise<Costs>;
  syscalls?: (n: number, read: ReadMode) => Promise<Partial<Costs>>;
  #fd = -1;
  #size = 0;

  constructor(readonly host: ChannelHost, options: { afterWrite?: boolean } = {}) {
    this.afterWrite = options.afterWrite ?? false;
    this.name = this.afterWrite ? 'BufferChannel bare hop, after a fresh write' : 'BufferChannel bare hop';
    if (!this.afterWrite) {
      this.costs = (n, read) => costsPass(n, () => this.once(read), () => this.host.stats());
      this.syscalls = (n, read) => syscallPass(n, this.host.pid, this.host.pid, () => this.once(read), true);
    }
  }

  async start(): Promise<void> {
    await this.host.start();
    this.#fd = openSync('/dev/null', 'r');
  }

  async prepare(size: number): Promise<void> {
    this.#size = size;
  }

  once(read: ReadMode): Promise<Sample> {
    return afterFreshWrite(this.afterWrite ? this.#size : 0, this.name, async () => {
      const acked = this.host.reply(this.name);
      const cpu0 = processCpuNs();
      const t0 = now();
      await this.host.bare!.sendFd(this.#fd, { read });
      const r = await acked;
      const tAck = now();
      const cpu = processCpuNs() - cpu0;
      return { oneWayNs: Number(BigInt(r.tRead as string) - t0), roundTripNs: Number(tAck - t0), cpu: { sender: cpu } };
    });
  }

  async free(): Promise<void> {}

  async close(): Promise<void> {
    if (this.#fd >= 0) closeSync(this.#fd);
    this.#fd = -1;
    await this.host.close();
  }
}

/**
 * Runs a bare hop `hop` the way a one-message hand-off runs: when `size` is not 0, right after
 * this thread allocated and wrote a new buffer of `size` bytes (which is not sent, and is put
 * and released after the hop). On this machine (a PVM guest: shadow page tables) everything
 * both processes do right after one of them wrote tens of MiB of new pages is several times
 * slower; this baseline has the same precondition as dmabuf-channel and dmabuf-worker.
 */
async function afterFreshWrite(size: number, what: string, hop: () => Promise<Sample>): Promise<Sample> {
  if (size === 0) return hop();
  const buf = await filledBuffer(size, 4096, `bench-write-${size}`);
  const released = releaseOf(buf, what);
  try {
    return await hop();
  } finally {
    buf.put();
    await released.promise;
  }
}

// ---------------------------------------------------------------------------------------
// The one-message hand-off to a worker thread, and its baselines, in one worker
// (bench/receivers/dmabuf-worker.ts).

/** The worker thread of the dmabuf worker methods. */
export class WorkerHost {
  worker: Worker | null = null;
  /** The worker's script in `receivers/` (`dmabuf-worker`, or `minimal-worker`). */
  readonly receiverName: string;
  /** The worker's kernel thread id (for strace). */
  tid = 0;
  #starting: Promise<void> | null = null;
  #users = 0;

  constructor(receiverName = 'dmabuf-worker') {
    this.receiverName = receiverName;
  }

  start(): Promise<void> {
    this.#users++;
    this.#starting ??= (async () => {
      this.worker = new Worker(receiver(this.receiverName));
      await once(this.worker, 'message');
      this.tid = (await this.stats()).tid;
    })();
    return this.#starting;
  }

  /** The worker's next answer. */
  async reply(what: string): Promise<Record<string, unknown>> {
    const [m] = (await once(this.worker!, 'message')) as [Record<string, unknown>];
    if (m.error) throw new Error(`${what}: ${String(m.error)}`);
    return m;
  }

  /** The worker thread's CPU time so far (ns) and garbage collections. */
  async stats(): Promise<{ cpuNs: number; gc: { count: number; major: number; ms: number }; tid: number }> {
    const answer = this.reply('worker');
    this.worker!.postMessage({ kind: 'stats' });
    return (await answer) as unknown as { cpuNs: number; gc: { count: number; major: number; ms: number }; tid: number };
  }

  async close(): Promise<void> {
    if (--this.#users > 0 || !this.worker) return;
    await this.worker.terminate();
    this.worker = null;
  }
}

/**
 * dmabuf to a worker thread: `postBuffer(worker, buf)`; in the worker
 * `receiveBuffer(m, { map })`, and a small postMessage back.
 */
export class WorkerDmabufMethod extends OneMessageMethod {
  readonly name: string = 'dmabuf-worker';

  constructor(readonly host: WorkerHost) {
    super();
  }

  start(): Promise<void> {
    return this.host.start();
  }

  protected ack(): Promise<Record<string, unknown>> {
    return this.host.reply(this.name);
  }

  protected send(buf: DmaBuf): Promise<void> {
    return postBuffer(this.host.worker!, buf);
  }

  protected cpuNow(): number {
    return threadCpuNs();
  }

  costs(n: number, read: ReadMode): Promise<Costs> {
    return costsPass(n, () => this.once(read), () => this.host.stats(), true);
  }

  syscalls(n: number, read: ReadMode): Promise<Partial<Costs>> {
    return syscallPass(n, process.pid, this.host.tid, () => this.once(read), false);
  }

  close(): Promise<void> {
    return this.host.close();
  }
}

/**
 * The same hand-offs, from the same exporter (`postBuffer`), to a worker running
 * `receivers/minimal-worker.ts`: the least a safe JavaScript receiving thread does, with no
 * framework (the descriptor's key, the memfd's seals and size, `mmap`, one view, the
 * notifications). Not a way to use the package: the baseline of any JavaScript design of the
 * receiving thread, to weigh what `receiveBuffer(m, { map })` costs over it.
 */
export class MinimalWorkerMethod extends WorkerDmabufMethod {
  override readonly name = 'minimal JS worker receiver';

  constructor() {
    super(new WorkerHost('minimal-worker'));
  }
}

/** The bare postMessage of a small object to the same worker, and its small answer. */
export class WorkerSmallMethod implements Method {
  readonly name: string;
  /** The postMessage after this thread wrote a new buffer of the size (see {@link afterFreshWrite}). */
  readonly afterWrite: boolean;
  costs?: (n: number, read: ReadMode) => Promise<Costs>;
  syscalls?: (n: number, read: ReadMode) => Promise<Partial<Costs>>;
  #size = 0;

  constructor(readonly host: WorkerHost, options: { afterWrite?: boolean } = {}) {
    this.afterWrite = options.afterWrite ?? false;
    this.name = this.afterWrite ? 'worker postMessage (small object), after a fresh write' : 'worker postMessage (small object)';
    if (!this.afterWrite) {
      this.costs = (n, read) => costsPass(n, () => this.once(read), () => this.host.stats());
      this.syscalls = (n, read) => syscallPass(n, process.pid, this.host.tid, () => this.once(read), false);
    }
  }

  start(): Promise<void> {
    return this.host.start();
  }

  async prepare(size: number): Promise<void> {
    this.#size = size;
  }

  once(read: ReadMode): Promise<Sample> {
    return afterFreshWrite(this.afterWrite ? this.#size : 0, this.name, async () => {
      const acked = this.host.reply(this.name);
      const cpu0 = threadCpuNs();
      const t0 = now();
      this.host.worker!.postMessage({ kind: 'small', read });
      const r = await acked;
      const tAck = now();
      const cpu = threadCpuNs() - cpu0;
      return { oneWayNs: Number((r.tRead as bigint) - t0), roundTripNs: Number(tAck - t0), cpu: { sender: cpu } };
    });
  }

  async free(): Promise<void> {}

  close(): Promise<void> {
    return this.host.close();
  }
}

// ---------------------------------------------------------------------------------------

let floorBinary: string | null | undefined;
let floorNote = '';

/** Compiles bench/floor.c into a temporary folder, once; null (with a note) without a compiler. */
export function compileFloor(): string | null {
  if (floorBinary !== undefined) return floorBinary;
  const src = path.join(root, 'bench', 'floor.c');
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dmabuf-bench-'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  const out = path.join(dir, 'floor');
  for (const cc of [process.env.CC, 'cc', 'gcc', 'clang'].filter((x): x is string => !!x)) {
    try {
      execFileSync(cc, ['-O2', '-Wall', '-o', out, src], { stdio: ['ignore', 'ignore', 'pipe'] });
      if (existsSync(out)) {
        floorNote = `C floor compiled with \`${cc} -O2\``;
        return (floorBinary = out);
      }
    } catch (err) {
      floorNote = `C floor skipped: ${cc} failed: ${String((err as { stderr?: Buffer }).stderr ?? err).split('\n')[0]}`;
    }
  }
  if (!floorNote) floorNote = 'C floor skipped: no C compiler (cc, gcc, clang) found';
  return (floorBinary = null);
}

export function floorCompileNote(): string {
  return floorNote;
}

/** The physical floor: bench/floor.c passes a memfd to its child, which maps and touches it. */
export class FloorMethod implements Method {
  readonly name: string;
  readonly huge: boolean;
  /** A new memfd written before each hand-off (see {@link FloorMethod.constructor}). */
  readonly fresh: boolean;
  costs?: (n: number, read: ReadMode) => Promise<Costs>;
  syscalls?: (n: number, read: ReadMode) => Promise<Partial<Costs>>;
  #child: ChildProcess | null = null;
  #lines: Interface | null = null;
  #pending: ((line: string) => void)[] = [];

  /**
   * `huge`: the memfd has 2 MiB pages. `fresh`: each hand-off sends a new memfd, created and
   * written (then unmapped) by the sender right before its t0 and closed after the ack, as
   * dmabuf-channel's exporter makes a new buffer per hand-off; otherwise one memfd per size,
   * written once and sent again and again. The fresh floor has no costs passes.
   */
  constructor(options: { huge?: boolean; fresh?: boolean } = {}) {
    this.huge = options.huge ?? false;
    this.fresh = options.fresh ?? false;
    this.name = this.fresh ? 'C floor, after a fresh write' : this.huge ? 'C floor (2 MiB pages)' : 'C floor';
    if (!this.fresh) {
      this.costs = (n, read) => this.#costs(n, read);
      this.syscalls = (n, read) => this.#syscalls(n, read);
    }
  }

  async start(): Promise<void> {
    const bin = compileFloor();
    if (!bin) throw new Error(floorNote);
    this.#child = track(spawn(bin, [], { stdio: ['pipe', 'pipe', 'inherit'] }));
    this.#lines = createInterface({ input: this.#child.stdout! });
    this.#lines.on('line', (l) => this.#pending.shift()?.(l));
  }

  #command(cmd: string): Promise<Record<string, number | string | boolean>> {
    return unlessExits(this.#child!, this.name, new Promise((resolve, reject) => {
      this.#pending.push((line) => {
        const r = JSON.parse(line) as Record<string, number | string | boolean>;
        if (r.error) reject(new Error(`C floor: ${String(r.error)}`));
        else resolve(r);
      });
      this.#child!.stdin!.write(`${cmd}\n`);
    }));
  }

  async prepare(size: number): Promise<void> {
    await this.#command(`alloc ${size} ${this.huge ? 1 : 0} ${this.fresh ? 1 : 0}`);
  }

  async once(read: ReadMode): Promise<Sample> {
    const r = await this.#command(`handoff ${read === 'all' ? 1 : 0}`);
    check(this.name, r.first, r.last);
    return { oneWayNs: r.oneWayNs as number, roundTripNs: r.roundTripNs as number, receiverNs: r.receiverNs as number, steps: { send: r.recvNs as number } };
  }

  /** The floor's receiving process (the child floor.c forks). */
  #receiverPid(): number {
    const pid = this.#child!.pid!;
    const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    if (kids.length !== 1) throw new Error(`C floor: expected one receiving child, found ${kids.length}`);
    return Number(kids[0]);
  }

  /** CPU: each side's /proc/PID/schedstat (both single-threaded), over `n` hand-offs. */
  async #costs(n: number, read: ReadMode): Promise<Costs> {
    const cpuOf = (pid: number): number => Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]);
    const rpid = this.#receiverPid();
    const spid = this.#child!.pid!;
    const r0 = cpuOf(rpid);
    const s0 = cpuOf(spid);
    for (let i = 0; i < n; i++) await this.once(read);
    return { n, cpuReceiver: (cpuOf(rpid) - r0) / n, cpuSender: (cpuOf(spid) - s0) / n };
  }

  async #syscalls(n: number, read: ReadMode): Promise<Partial<Costs>> {
    const rpid = this.#receiverPid();
    const count = await traceSyscalls(rpid, async () => {
      for (let i = 0; i < n; i++) await this.once(read);
    });
    const main = count.byThread.get(rpid);
    return { syscallsN: n, syscalls: count.total / n, syscallsMain: (main?.total ?? 0) / n, syscallsByName: perHandoffByName(main?.byName, n) };
  }

  async free(): Promise<void> {
    if (this.#child) await this.#command('free');
  }

  async close(): Promise<void> {
    if (!this.#child) return;
    this.#child.stdin!.end('quit\n');
    if (this.#child.exitCode === null) await once(this.#child, 'exit');
    this.#child = null;
  }
}

// ---------------------------------------------------------------------------------------

interface CopyReply { first: number; last: number; tRead: bigint | string; offset?: number }

/** `p`, or a rejection if `child` exits first (a crashed receiver must not hang the run). */
export function unlessExits<T>(child: ChildProcess, what: string, p: Promise<T>): Promise<T> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.reject(new Error(`${what}: the receiver has exited`));
  let onExit: (() => void) | null = null;
  const exited = new Promise<never>((_, reject) => {
    onExit = () => reject(new Error(`${what}: the receiver exited (code ${child.exitCode}, signal ${child.signalCode})`));
    child.once('exit', onExit);
  });
  return Promise.race([p, exited]).finally(() => child.off('exit', onExit!));
}

function copySample(name: string, t0: bigint, r: CopyReply): Sample {
  const tAck = now();
  check(name, r.first, r.last);
  return { oneWayNs: Number(BigInt(r.tRead) - t0), roundTripNs: Number(tAck - t0) };
}

/** child_process.send with serialization 'advanced' of a Uint8Array (a copy each way). */
export class SendMethod implements Method {
  readonly name = 'child_process.send';
  /** The byteOffset of the Uint8Array the receiver got (last hand-off). */
  offset = 0;
  #child: ChildProcess | null = null;
  #payload: Payload | null = null;

  async start(): Promise<void> {
    this.#child = track(fork(receiver('send'), [], { serialization: 'advanced', execArgv: nodeArgs, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
    await once(this.#child, 'message');
  }

  async prepare(_size: number, payload: Payload): Promise<void> {
    this.#payload = payload;
    void payload.bytes;
  }

  async once(read: ReadMode): Promise<Sample> {
    const reply = once(this.#child!, 'message') as Promise<[CopyReply]>;
    const t0 = now();
    this.#child!.send({ data: this.#payload!.bytes, read, t0 });
    const r = (await unlessExits(this.#child!, this.name, reply))[0];
    this.offset = r.offset ?? 0;
    return copySample(this.name, t0, r);
  }

  async free(): Promise<void> {
    this.#payload = null;
  }

  async close(): Promise<void> {
    if (!this.#child) return;
    this.#child.disconnect();
    if (this.#child.exitCode === null) await once(this.#child, 'exit');
  }
}

/** One worker thread; the copy and SharedArrayBuffer methods each start their own. */
abstract class WorkerMethod implements Method {
  abstract readonly name: string;
  protected worker: Worker | null = null;
  protected payload: Payload | null = null;

  async start(): Promise<void> {
    this.worker = new Worker(receiver('worker'));
    await once(this.worker, 'online');
  }

  async prepare(_size: number, payload: Payload): Promise<void> {
    this.payload = payload;
  }

  abstract once(read: ReadMode): Promise<Sample>;

  protected async post(msg: Record<string, unknown>): Promise<Sample> {
    const reply = once(this.worker!, 'message') as Promise<[CopyReply]>;
    const t0 = now();
    msg.t0 = t0;
    this.worker!.postMessage(msg);
    return copySample(this.name, t0, (await reply)[0]);
  }

  async free(): Promise<void> {
    this.payload = null;
  }

  async close(): Promise<void> {
    await this.free();
    await this.worker?.terminate();
    this.worker = null;
  }
}

/** A worker postMessage of a Uint8Array (structured clone: a copy). */
export class WorkerCopyMethod extends WorkerMethod {
  readonly name = 'worker postMessage (copy)';

  override async prepare(size: number, payload: Payload): Promise<void> {
    await super.prepare(size, payload);
    void payload.bytes;
  }

  async once(read: ReadMode): Promise<Sample> {
    return this.post({ kind: 'bytes', data: this.payload!.bytes, read });
  }
}

/** A worker postMessage of a SharedArrayBuffer (shared, not copied: the in-process floor). */
export class SabPostMethod extends WorkerMethod {
  readonly name = 'SAB postMessage (threads)';

  override async prepare(size: number, payload: Payload): Promise<void> {
    await super.prepare(size, payload);
    void payload.sab;
  }

  async once(read: ReadMode): Promise<Sample> {
    return this.post({ kind: 'sab', data: this.payload!.sab, read });
  }
}

/**
 * A SharedArrayBuffer already shared with a worker that waits in Atomics.wait: the hand-off
 * is one Atomics.notify, and the ack one more (the sender waits in Atomics.wait).
 */
export class SabAtomicsMethod extends WorkerMethod {
  readonly name = 'SAB Atomics.notify (threads)';
  /** [0] request sequence (-1: stop), [1] ack sequence, [2] read mode (1: all), [3..] result. */
  #ctl = new Int32Array(new SharedArrayBuffer(64));
  #times = new BigInt64Array(this.#ctl.buffer, 32, 2);
  #seq = 0;

  override async prepare(size: number, payload: Payload): Promise<void> {
    await this.#stop();
    await super.prepare(size, payload);
    const ready = once(this.worker!, 'message');
    this.worker!.postMessage({ kind: 'atomics', ctl: this.#ctl.buffer, data: payload.sab });
    await ready;
  }

  async once(read: ReadMode): Promise<Sample> {
    const ctl = this.#ctl;
    const seq = ++this.#seq;
    Atomics.store(ctl, 2, read === 'all' ? 1 : 0);
    const t0 = now();
    Atomics.store(ctl, 0, seq);
    Atomics.notify(ctl, 0);
    while (Atomics.load(ctl, 1) !== seq) Atomics.wait(ctl, 1, seq - 1, 10_000);
    const tAck = now();
    check(this.name, Atomics.load(ctl, 4), Atomics.load(ctl, 5));
    return { oneWayNs: Number(this.#times[0]! - t0), roundTripNs: Number(tAck - t0) };
  }

  async #stop(): Promise<void> {
    if (!this.payload) return;
    const done = once(this.worker!, 'message');
    Atomics.store(this.#ctl, 0, -1);
    Atomics.notify(this.#ctl, 0);
    await done;
    Atomics.store(this.#ctl, 0, 0);
    Atomics.store(this.#ctl, 1, 0);
    this.#seq = 0;
  }

  override async free(): Promise<void> {
    await this.#stop();
    await super.free();
  }
}

/** A byte stream over a Unix socket (net): the whole buffer written, read and assembled. */
export class StreamMethod implements Method {
  readonly name = 'Unix socket stream';
  #child: ChildProcess | null = null;
  #sock: net.Socket | null = null;
  #dir = '';
  #payload: Payload | null = null;
  #header = Buffer.alloc(24);
  #replies: Buffer[] = [];
  #wait: (() => void) | null = null;

  async start(): Promise<void> {
    this.#dir = mkdtempSync(path.join(os.tmpdir(), 'dmabuf-bench-sock-'));
    const sockPath = path.join(this.#dir, 's');
    this.#child = track(spawn(process.execPath, [...nodeArgs, receiver('stream'), sockPath], { stdio: ['ignore', 'pipe', 'inherit'] }));
    await once(this.#child.stdout!, 'data');
    this.#sock = net.connect(sockPath);
    await once(this.#sock, 'connect');
    let acc = Buffer.alloc(0);
    this.#sock.on('data', (d: Buffer) => {
      acc = Buffer.concat([acc, d]);
      while (acc.length >= 16) {
        this.#replies.push(acc.subarray(0, 16));
        acc = acc.subarray(16);
        this.#wait?.();
      }
    });
  }

  async prepare(_size: number, payload: Payload): Promise<void> {
    this.#payload = payload;
    void payload.bytes;
  }

  async once(read: ReadMode): Promise<Sample> {
    const data = this.#payload!.bytes;
    const got = new Promise<void>((resolve) => { this.#wait = resolve; });
    const t0 = now();
    this.#header.writeBigUInt64LE(BigInt(data.length), 0);
    this.#header.writeBigUInt64LE(t0, 8);
    this.#header.writeUInt32LE(read === 'all' ? 1 : 0, 16);
    this.#sock!.write(this.#header);
    this.#sock!.write(data);
    if (this.#replies.length === 0) await unlessExits(this.#child!, this.name, got);
    this.#wait = null;
    const r = this.#replies.shift()!;
    return copySample(this.name, t0, { tRead: r.readBigUInt64LE(0), first: r[8]!, last: r[9]! });
  }

  async free(): Promise<void> {
    this.#payload = null;
  }

  async close(): Promise<void> {
    this.#sock?.end();
    if (this.#child && this.#child.exitCode === null) await once(this.#child, 'exit');
    rmSync(this.#dir, { recursive: true, force: true });
  }
}
