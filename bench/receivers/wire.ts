/**
 * What the harness and its receivers share: JSON messages (with descriptors) on a
 * SOCK_SEQPACKET socket, read on the event loop, and the reading loops every receiver runs
 * (the same code in every case, so that the cases stay comparable).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { DmaBuf, type Device } from '../../src/index.js';
import { PerformanceObserver, constants as perfConstants } from 'node:perf_hooks';
import { native, type PollHandle } from '../../src/native/binding.js';
import { Session } from 'node:inspector';

/** Reads the first and last byte (what a "hand-off" ends with). */
export function readEnds(v: Uint8Array): [number, number] {
  return [v[0]!, v[v.length - 1]!];
}

/**
 * Reads every byte: sums the view as doubles, 8 bytes at a time, in order (floor.c runs the
 * same loop). The view's offset and length must be multiples of 8.
 */
export function sumAll(v: Uint8Array): number {
  // A view at an offset that is not a multiple of 8 (child_process.send delivers one) cannot
  // be read as doubles in place: the receiver has to copy it once, as any user would.
  const aligned = v.byteOffset % 8 === 0 ? v : new Uint8Array(v);
  const d = new Float64Array(aligned.buffer, aligned.byteOffset, aligned.byteLength >>> 3);
  let s = 0;
  for (let i = 0; i < d.length; i++) s += d[i]!;
  return s;
}

/**
 * Reads every byte, 4 at a time: the value of the first byte when every byte has it (a slot
 * filled with one byte), else 255. The view's offset and length must be multiples of 4.
 */
export function uniformByte(v: Uint8Array): number {
  const w = new Uint32Array(v.buffer, v.byteOffset, v.byteLength >>> 2);
  const want = Math.imul(v[0]!, 0x01010101) >>> 0;
  for (let i = 0; i < w.length; i++) if (w[i] !== want) return 255;
  return v[0]!;
}

/** Reads one byte per 4 KiB page (so that every page is mapped in this process). */
export function touchPages(v: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < v.length; i += 4096) s += v[i]!;
  return s + v[v.length - 1]!;
}

/** Serializes bigints (timestamps) as strings. */
function replacer(_k: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value;
}

export type Msg = Record<string, unknown>;

/** A SOCK_SEQPACKET end carrying one JSON object (and optional descriptors) per packet. */
export class Packets {
  readonly fd: number;
  #poll: PollHandle | null = null;
  #handler: ((msg: Msg, fds: number[], at: bigint) => void) | null = null;
  #waiters: ((m: { msg: Msg; fds: number[]; at: bigint }) => void)[] = [];
  #queue: { msg: Msg; fds: number[]; at: bigint }[] = [];

  constructor(fd: number) {
    this.fd = fd;
  }

  /** Sends one message (blocking socket semantics are not used: the kernel queue is ample). */
  send(msg: Msg, fds: number[] = []): void {
    native.sendmsg(this.fd, Buffer.from(JSON.stringify(msg, replacer)), fds, 0);
  }

  /**
   * Calls `handler` for every message, on the event loop; `at` is the time recvmsg returned.
   * Without a handler, messages queue for {@link next}.
   */
  listen(handler?: (msg: Msg, fds: number[], at: bigint) => void): void {
    this.#handler = handler ?? null;
    if (this.#poll) return;
    const c = native.constants;
    this.#poll = native.pollStart(this.fd, c.UV_READABLE | c.UV_DISCONNECT, () => this.#drain());
    native.pollRef(this.#poll, true);
  }

  #drain(): void {
    const c = native.constants;
    for (;;) {
      let r;
      try {
        r = native.recvmsg(this.fd, 1 << 16, 64, c.MSG_DONTWAIT);
      } catch (err) {
        if ((err as { code?: string }).code === 'EAGAIN') return;
        throw err;
      }
      const at = process.hrtime.bigint();
      if (r.data.length === 0 && r.fds.length === 0) {
        this.close();
        if (this.#handler) this.#handler({ op: 'eof' }, [], at);
        return;
      }
      const msg = JSON.parse(r.data.toString('utf8')) as Msg;
      if (this.#handler) this.#handler(msg, r.fds, at);
      else {
        const w = this.#waiters.shift();
        if (w) w({ msg, fds: r.fds, at });
        else this.#queue.push({ msg, fds: r.fds, at });
      }
    }
  }

  /** The next message (when listening without a handler). */
  next(): Promise<{ msg: Msg; fds: number[]; at: bigint }> {
    const q = this.#queue.shift();
    if (q) return Promise.resolve(q);
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Stops reading (the descriptor stays open). */
  stop(): void {
    if (this.#poll) native.pollClose(this.#poll);
    this.#poll = null;
  }

  close(): void {
    this.stop();
    try {
      native.close(this.fd);
    } catch {
      // already closed
    }
  }
}

type WaitAsyncResult = { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };

/** Atomics.waitAsync (Node 16+; not in the ES2022 typings the project compiles against). */
export function waitAsync(a: Int32Array, index: number, value: number, timeout?: number): WaitAsyncResult {
  return (Atomics as unknown as { waitAsync(a: Int32Array, i: number, v: number, t?: number): WaitAsyncResult }).waitAsync(a, index, value, timeout);
}

/** A receiver child with two sockets: control messages (its fd 3) and notifications (its fd 4). */
export interface RingLink {
  child: ChildProcess;
  /** The control socket: JSON messages with descriptors. */
  link: Packets;
  /** The next control answer; throws when the receiver reports a failure. */
  reply(): Promise<Msg>;
  /** This side of the notification socket (blocking until set otherwise). */
  notify: number;
}

/**
 * Starts the receiver `script` (a file) with a control socket and a notification socket, and
 * `track`s it with `track` (the harness's, so that a failed case kills it).
 */
export function startRingReceiver(script: string, track: <T extends ChildProcess>(c: T) => T): RingLink {
  const c = native.constants;
  const [ctlMine, ctlTheirs] = native.socketpair(c.SOCK_SEQPACKET, false);
  const [ntfMine, ntfTheirs] = native.socketpair(c.SOCK_SEQPACKET, false);
  const child = track(spawn(process.execPath, ['--no-warnings', script], { stdio: ['ignore', 'inherit', 'inherit', ctlTheirs, ntfTheirs] }));
  native.close(ctlTheirs);
  native.close(ntfTheirs);
  const link = new Packets(ctlMine);
  link.listen();
  const reply = async (): Promise<Msg> => {
    const r = await link.next();
    if (!r.msg.ok) throw new Error(`${script}: ${String(r.msg.error ?? r.msg.op)}`);
    return r.msg;
  };
  return { child, link, reply, notify: ntfMine };
}

/** A receiver's side of `{ op: 'ring' }`: gets, attaches and maps (`'to-device'`) each buffer once. */
export async function importRing(fds: number[], device: Device): Promise<{ buf: DmaBuf; view: Uint8Array }[]> {
  const out: { buf: DmaBuf; view: Uint8Array }[] = [];
  for (const fd of fds) {
    let buf: DmaBuf;
    try {
      buf = await DmaBuf.get(fd);
    } finally {
      native.close(fd);
    }
    const att = await buf.attach(device);
    out.push({ buf, view: (await att.map('to-device')).segments[0]!.view! });
  }
  return out;
}

/**
 * Reads the small packets (at most 16 bytes) of the SOCK_SEQPACKET socket `fd` on the event
 * loop: `onPacket` gets each one; when it returns false (or the peer closed), reading stops
 * and `onEnd` runs. The socket is made non-blocking. Returns a function that stops reading.
 */
export function watchPackets(fd: number, onPacket: (data: Buffer) => boolean | void, onEnd: () => void = () => {}): () => void {
  const c = native.constants;
  native.setNonblock(fd, true);
  let poll: PollHandle | null = null;
  const stop = (): void => {
    if (poll) native.pollClose(poll);
    poll = null;
  };
  poll = native.pollStart(fd, c.UV_READABLE, () => {
    while (poll) {
      let r;
      try {
        r = native.recvmsg(fd, 16, 0, c.MSG_DONTWAIT);
      } catch (err) {
        if ((err as { code?: string }).code === 'EAGAIN') return;
        throw err;
      }
      if (r.data.length === 0 || onPacket(r.data) === false) {
        stop();
        onEnd();
      }
    }
  });
  native.pollRef(poll, true);
  return stop;
}

/** Garbage collections of this thread so far (cumulative), counted by a PerformanceObserver. */
export interface GcCount {
  count: number;
  /** Major ones (mark-compact or incremental marking). */
  major: number;
  /** Pause time, ms. */
  ms: number;
}

/** Starts counting this thread's garbage collections into the returned object. */
export function observeGc(): GcCount {
  const gc: GcCount = { count: 0, major: 0, ms: 0 };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gc.count++;
      gc.ms += e.duration;
      if ((e as unknown as { detail?: { kind?: number } }).detail?.kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR) gc.major++;
    }
  }).observe({ entryTypes: ['gc'] });
  return gc;
}

/**
 * The control socket of a child receiver: answers `{ op: 'stats' }` with the process's CPU
 * time (ns, every thread) and `gc`, exits at end-of-file, and says it is ready.
 */
export function serveControl(control: Packets, gc: GcCount): void {
  const alloc = new AllocationSampler();
  control.listen((msg) => {
    if (msg.op === 'stats') {
      const u = process.cpuUsage();
      control.send({ ok: true, cpuNs: (u.user + u.system) * 1e3, gc });
    } else if (msg.op === 'alloc-start') {
      alloc.start(() => control.send({ ok: true }));
    } else if (msg.op === 'alloc-stop') {
      alloc.stop((summary) => control.send({ ok: true, ...summary }));
    } else if (msg.op === 'eof') {
      process.exit(0);
    }
  });
  control.send({ ok: true, ready: true, pid: process.pid });
}

/** What a receiver of a mapped hand-off measured and read, then released. */
export interface ReadAndReleased {
  first: number;
  last: number;
  /** The sum of every byte (`sum: true`, one-segment tables), else 0. */
  sum: number;
  /** A view's byteLength after the unmap: 0 when unmap detached it. */
  stale: number;
  nents: number;
  tRead: bigint;
  tDone: bigint;
}

/**
 * The end of a mapped hand-off in a receiver: reads the first and last byte (and every byte
 * with `sum`), then unmaps, detaches and puts, timing the read and the release.
 */
export async function readAndRelease(got: { buffer: DmaBuf; attachment?: { unmap(t: unknown): Promise<void>; detach(): Promise<void> } | undefined; sgt?: { segments: readonly { view?: Uint8Array }[] } | undefined }, sum = false): Promise<ReadAndReleased> {
  const segs = got.sgt!.segments;
  const first = segs[0]!.view![0]!;
  const lastView = segs[segs.length - 1]!.view!;
  const last = lastView[lastView.length - 1]!;
  const total = sum && segs.length === 1 ? sumAll(segs[0]!.view!) : 0;
  const tRead = process.hrtime.bigint();
  await got.attachment!.unmap(got.sgt!);
  // Unmap detaches every view: a stale one has byteLength 0 (the harness checks it).
  const stale = segs[0]!.view!.byteLength;
  await got.attachment!.detach();
  got.buffer.put();
  return { first, last, sum: total, stale, nents: segs.length, tRead, tDone: process.hrtime.bigint() };
}

/** What {@link AllocationSampler.stop} reports: bytes sampled, and the top allocating functions. */
export interface AllocationSummary {
  /** Bytes allocated on the JavaScript heap while sampling (an estimate, from samples). */
  bytes: number;
  /** The functions that allocated most (self), `[name, bytes]`, largest first. */
  top: [string, number][];
}

/**
 * V8's sampling heap profiler over the inspector, counting what the young and old collections
 * freed too: all that was allocated while it ran, not only what survived. One sample per 64
 * bytes on average. Used by `bench/alloc.ts`.
 */
class AllocationSampler {
  #session: Session | null = null;

  start(done: () => void): void {
    this.#session ??= new Session();
    this.#session.connect();
    this.#session.post('HeapProfiler.enable');
    this.#session.post('HeapProfiler.startSampling', { samplingInterval: 64, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true }, () => done());
  }

  stop(done: (summary: AllocationSummary) => void): void {
    const session = this.#session!;
    session.post('HeapProfiler.stopSampling', (err, result) => {
      const bySelf = new Map<string, number>();
      let bytes = 0;
      if (!err) {
        const names = new Map<number, string>();
        // A builtin (Map, push, an iterator's next: no script) is named with its caller.
        const walk = (node: HeapProfileNode, caller: string): void => {
          const f = node.callFrame;
          const own = `${f.functionName || '(anonymous)'} ${f.url.split('/').pop() ?? ''}:${f.lineNumber + 1}`;
          const name = f.url === '' && caller !== '' ? `${f.functionName || '(anonymous)'} in ${caller}` : own;
          names.set(node.id, name);
          for (const child of node.children) walk(child, f.url === '' ? caller : own);
        };
        const profile = result.profile as unknown as { head: HeapProfileNode; samples: { size: number; nodeId: number }[] };
        walk(profile.head, '');
        for (const sample of profile.samples) {
          bytes += sample.size;
          const name = names.get(sample.nodeId) ?? '?';
          bySelf.set(name, (bySelf.get(name) ?? 0) + sample.size);
        }
      }
      session.disconnect();
      const top = [...bySelf].sort((a, b) => b[1] - a[1]).slice(0, 25);
      done({ bytes, top });
    });
  }
}

interface HeapProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children: HeapProfileNode[];
}
