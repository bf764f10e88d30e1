/**
 * Raw access to the import protocol for the protocol tests: hand-made handshakes, a fake
 * exporter, messages received without the library's Connection, descriptor helpers, children
 * run as victims (a crash shows as a signal or an exit code), and a seeded PRNG.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';
import { native } from '../../src/native/binding.js';
import { DmaBufError } from '../../src/core/errors.js';
import { CpuDevice, DmaBuf, type DmaBufAttachment } from '../../src/index.js';
import { HEADER_SIZE, MAGIC, MAX_MESSAGE, MsgType, VERSION, decode, encode, type Message, type MsgTypeValue } from '../../src/remote/protocol.js';

export const c = native.constants;

/** `O_RDWR`/`O_RDONLY` as the welcome carries them. */
export const O_RDWR = 2;
export const O_RDONLY = 0;

/** One record read from a socket. */
export interface Raw {
  data: Buffer;
  fds: number[];
  flags: number;
}

/** Number of open descriptors of a process (default: this one). */
export function fdCount(pid: number | 'self' = 'self'): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/** The targets of this process's descriptors (`readlink /proc/self/fd/N`), by number. */
export function fdTargets(): Map<number, string> {
  const out = new Map<number, string>();
  for (const n of readdirSync('/proc/self/fd')) {
    try {
      out.set(Number(n), readlinkSync(`/proc/self/fd/${n}`));
    } catch {
      // closed while listing
    }
  }
  return out;
}

/** What is open now that was not in `before` (for leak messages). */
export function fdDiff(before: Map<number, string>): string[] {
  const out: string[] = [];
  for (const [n, t] of fdTargets()) if (before.get(n) !== t) out.push(`${n} -> ${t}`);
  return out;
}

/** Waits until `pred` holds (yielding to the event loop), or throws after `ms`. */
export async function until(pred: () => boolean, ms = 5000, what = 'a condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(1);
  }
}

/** Yields to the event loop `n` times (lets an exporter of this thread answer). */
export async function turns(n = 1): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise<void>((r) => setImmediate(r));
}

/**
 * Reads one record from a SEQPACKET socket without blocking the event loop (the exporter or
 * importer under test may be in this thread). `'eof'` when the peer is gone, `null` when
 * nothing came within `ms`.
 */
export async function recvRaw(fd: number, ms = 3000, maxFds = 16, stop?: () => boolean): Promise<Raw | 'eof' | null> {
  const end = Date.now() + ms;
  for (let spin = 0; ; spin++) {
    if (stop?.()) return null;
    try {
      const r = native.recvmsg(fd, MAX_MESSAGE + 1024, maxFds, c.MSG_DONTWAIT);
      if (r.data.length === 0 && r.fds.length === 0) {
        if (native.pollNow(fd, c.POLLIN | c.POLLRDHUP) & (c.POLLHUP | c.POLLRDHUP)) return 'eof';
      }
      return r;
    } catch (err) {
      if (!DmaBufError.is(err, 'EAGAIN')) {
        if (DmaBufError.is(err, 'ECONNRESET')) return 'eof';
        throw err;
      }
    }
    if (Date.now() > end) return null;
    if (spin % 8 === 7) await sleep(1);
    else await turns();
  }
}

/** Reads and decodes one message; fails the test on EOF, timeout or a malformed message. */
export async function recvMsg(fd: number, ms = 3000): Promise<{ msg: Message; fds: number[] }> {
  const r = await recvRaw(fd, ms);
  if (r === null) throw new Error(`no message within ${ms} ms`);
  if (r === 'eof') throw new Error('the peer closed the socket');
  return { msg: decode(r.data), fds: r.fds };
}

/** Sends bytes (and descriptors) on a socket, retrying on EAGAIN while yielding. */
export async function sendRaw(fd: number, data: Uint8Array, fds: number[] = []): Promise<void> {
  for (;;) {
    try {
      native.sendmsg(fd, data, fds, c.MSG_DONTWAIT);
      return;
    } catch (err) {
      if (!DmaBufError.is(err, 'EAGAIN')) throw err;
      await sleep(1);
    }
  }
}

/** Closes descriptors, ignoring those already closed. */
export function closeFds(fds: Iterable<number>): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // already closed
    }
  }
}

/** A new SEQPACKET socketpair. */
export function seqpacketPair(): [number, number] {
  return native.socketpair(c.SOCK_SEQPACKET, false);
}

/**
 * A closure probe: `[keep, send]`, a STREAM socketpair. Send `send` in a message and close
 * this process's copy: {@link peerClosed}(keep) turns true once the receiver closed its copy
 * too, which proves that an unexpected descriptor was closed, not leaked.
 */
export function closureProbe(): [keep: number, send: number] {
  return native.socketpair(c.SOCK_STREAM, false);
}

/** Whether every copy of the other end of `keep` (see {@link closureProbe}) is closed. */
export function peerClosed(keep: number): boolean {
  return (native.pollNow(keep, c.POLLIN | c.POLLRDHUP) & (c.POLLHUP | c.POLLRDHUP)) !== 0;
}

/** A memfd of `size` bytes with `seals`, its first bytes set to `fill`. */
export function memfd(name: string, size: number, seals: number, fill?: Uint8Array): number {
  const fd = native.memfdCreate(name, c.MFD_ALLOW_SEALING);
  native.ftruncate(fd, size);
  if (fill && fill.length) {
    const h = native.mmap(fd, size, 0, c.PROT_READ | c.PROT_WRITE, c.MAP_SHARED);
    const v = native.mappingView(h, 0, fill.length);
    new Uint8Array(v).set(fill);
    native.detachView(v);
    native.munmap(h);
  }
  if (seals) native.addSeals(fd, seals);
  return fd;
}

/** The seals every importer requires. */
export const SHRINK_GROW = (): number => c.F_SEAL_SHRINK | c.F_SEAL_GROW;

/** Encodes a message and then patches header fields (for malformed variants). */
export function patched(type: MsgTypeValue, id: number, body: Record<string, unknown>, patch: { magic?: number; version?: number; type?: number; length?: number; flags?: number; reserved?: number } = {}): Buffer {
  const b = encode(type, id, body);
  if (patch.magic !== undefined) b.writeUInt32LE(patch.magic >>> 0, 0);
  if (patch.version !== undefined) b.writeUInt16LE(patch.version, 4);
  if (patch.type !== undefined) b.writeUInt16LE(patch.type, 6);
  if (patch.length !== undefined) b.writeUInt32LE(patch.length >>> 0, 12);
  if (patch.flags !== undefined) b.writeUInt32LE(patch.flags >>> 0, 16);
  if (patch.reserved !== undefined) b.writeUInt32LE(patch.reserved >>> 0, 20);
  return b;
}

/** A header followed by arbitrary body bytes (length field set to match). */
export function withBody(type: number, id: number, body: Uint8Array): Buffer {
  const out = Buffer.alloc(HEADER_SIZE + body.length);
  out.writeUInt32LE(MAGIC, 0);
  out.writeUInt16LE(VERSION, 4);
  out.writeUInt16LE(type, 6);
  out.writeUInt32LE(id >>> 0, 8);
  out.writeUInt32LE(body.length, 12);
  Buffer.from(body).copy(out, HEADER_SIZE);
  return out;
}

/** A device description as an importer sends it in an ATTACH. */
export function deviceBody(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return { name: 'raw', kind: 'cpu', maxSegmentSize: Number.MAX_SAFE_INTEGER, maxSegments: Number.MAX_SAFE_INTEGER, segmentAlignment: 1, pageSize: 4096, ...overrides };
}

/** A channel made by hand: the HELLO through a descriptor of the buffer's file. */
export interface RawChannel {
  sock: number;
  welcome: Message;
}

/**
 * The importer's half of the handshake, by hand: a new socketpair, one end sent in a HELLO
 * through `fileFd`, the welcome read on the other.
 */
export async function rawHandshake(fileFd: number, body: Record<string, unknown> = { versions: [1], pid: process.pid, tokens: [] }, id = 1): Promise<RawChannel> {
  const [mine, theirs] = seqpacketPair();
  try {
    await sendRaw(fileFd, encode(MsgType.HELLO, id, body), [theirs]);
  } finally {
    native.close(theirs);
  }
  const { msg, fds } = await recvMsg(mine);
  closeFds(fds);
  if (msg.type !== MsgType.REPLY) {
    native.close(mine);
    throw new Error(`handshake answered with ${JSON.stringify(msg)}`);
  }
  return { sock: mine, welcome: msg };
}

/** Sends a request on a raw channel and reads the answer with the same id (others are collected). */
export async function rawRequest(ch: RawChannel, type: MsgTypeValue, id: number, body: Record<string, unknown>, fds: number[] = [], others: { msg: Message; fds: number[] }[] = []): Promise<{ msg: Message; fds: number[] }> {
  await sendRaw(ch.sock, encode(type, id, body), fds);
  for (;;) {
    const got = await recvMsg(ch.sock);
    if (got.msg.id === id) return got;
    others.push(got);
  }
}

/** A well-formed ATTACH, MAP, check, UNMAP, DETACH on a raw channel; returns the bytes read. */
export async function rawCycle(ch: RawChannel, idBase: number, readBytes = 16): Promise<Uint8Array> {
  const buffer = ch.welcome.body.buffer as number;
  const a = await rawRequest(ch, MsgType.ATTACH, idBase, { buffer, device: deviceBody() });
  closeFds(a.fds);
  if (a.msg.type !== MsgType.REPLY) throw new Error(`attach failed: ${JSON.stringify(a.msg.body)}`);
  const attachment = a.msg.body.attachment as number;
  const m = await rawRequest(ch, MsgType.MAP, idBase + 1, { attachment, direction: 'to-device' });
  if (m.msg.type !== MsgType.REPLY || m.fds.length !== 1) {
    closeFds(m.fds);
    throw new Error(`map failed: ${JSON.stringify(m.msg.body)}`);
  }
  const fd = m.fds[0]!;
  let bytes: Uint8Array;
  try {
    const seals = native.getSeals(fd);
    if ((seals & SHRINK_GROW()) !== SHRINK_GROW()) throw new Error(`the exporter sent storage with seals ${seals}`);
    const h = native.mmap(fd, readBytes, 0, c.PROT_READ, c.MAP_SHARED);
    const v = native.mappingView(h, 0, readBytes);
    bytes = new Uint8Array(v).slice();
    native.detachView(v);
    native.munmap(h);
  } finally {
    native.close(fd);
  }
  const u = await rawRequest(ch, MsgType.UNMAP, idBase + 2, { map: m.msg.body.map });
  closeFds(u.fds);
  if (u.msg.type !== MsgType.REPLY) throw new Error(`unmap failed: ${JSON.stringify(u.msg.body)}`);
  const d = await rawRequest(ch, MsgType.DETACH, idBase + 3, { attachment });
  closeFds(d.fds);
  if (d.msg.type !== MsgType.REPLY) throw new Error(`detach failed: ${JSON.stringify(d.msg.body)}`);
  return bytes;
}

/** A welcome as an exporter sends it, with overrides. */
export function welcomeBody(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    buffer: 1,
    size: 4096,
    flags: O_RDWR,
    name: 'fake',
    exporter: 'fake',
    sealed: false,
    pid: process.pid,
    token: randomBytes(16).toString('hex'),
    reused: false,
    ...overrides,
  };
}

/**
 * A fake exporter: a socketpair whose `fileEnd` is handed to `DmaBuf.get` (in this thread or
 * another process) and whose `serviceEnd` the test reads. It answers what the test says.
 */
export class FakeExporter {
  readonly fileEnd: number;
  readonly serviceEnd: number;
  channel = -1;

  constructor() {
    [this.fileEnd, this.serviceEnd] = seqpacketPair();
  }

  /** Reads the HELLO; keeps its one descriptor as the channel (others are closed). */
  async hello(ms = 3000): Promise<Message> {
    const r = await recvRaw(this.serviceEnd, ms);
    if (r === null || r === 'eof') throw new Error(`no HELLO (${String(r)})`);
    const msg = decode(r.data);
    if (r.fds.length !== 1) {
      closeFds(r.fds);
      throw new Error(`a HELLO with ${r.fds.length} descriptors`);
    }
    if (this.channel >= 0) native.close(this.channel);
    this.channel = r.fds[0]!;
    return msg;
  }

  /** Sends on the channel. */
  send(type: MsgTypeValue, id: number, body: Record<string, unknown> = {}, fds: number[] = []): Promise<void> {
    return sendRaw(this.channel, encode(type, id, body), fds);
  }

  /** Sends raw bytes on the channel. */
  sendBytes(data: Uint8Array, fds: number[] = []): Promise<void> {
    return sendRaw(this.channel, data, fds);
  }

  /** The next request on the channel. */
  next(ms = 3000): Promise<{ msg: Message; fds: number[] }> {
    return recvMsg(this.channel, ms);
  }

  /** Closes the channel (the importer then sees the exporter gone). */
  closeChannel(): void {
    if (this.channel >= 0) native.close(this.channel);
    this.channel = -1;
  }

  /** Closes everything but `fileEnd` when `keepFile`. */
  close(keepFile = false): void {
    this.closeChannel();
    closeFds(keepFile ? [this.serviceEnd] : [this.serviceEnd, this.fileEnd]);
  }
}

/** How a child ended and what it printed. */
export interface ChildOutcome {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Every stdout line starting with `@@` parsed as JSON. */
  reports: Record<string, unknown>[];
}

/** Prints a report line a parent collects (see {@link ChildOutcome.reports}). */
export function report(v: Record<string, unknown>): void {
  process.stdout.write(`@@${JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? String(x) : x))}\n`);
}

/**
 * Runs `file` (this compiled test file) in a child with `env` set, descriptors `fds` as the
 * child's 3, 4, ... and, with `nofile`, under `ulimit -n nofile`.
 */
export function runChild(file: string, env: Record<string, string>, options: { fds?: number[]; nofile?: number; timeoutMs?: number; onReport?: (r: Record<string, unknown>) => void } = {}): Promise<ChildOutcome> {
  const fds = options.fds ?? [];
  const nodeArgs = ['--no-warnings', file];
  const [cmd, args] = options.nofile
    ? ['sh', ['-c', `ulimit -n ${options.nofile} && exec "$0" "$@"`, process.execPath, ...nodeArgs]]
    : [process.execPath, nodeArgs];
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe', ...fds], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  const reports: Record<string, unknown>[] = [];
  let pending = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => {
    stdout += d;
    pending += d;
    let i;
    while ((i = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, i);
      pending = pending.slice(i + 1);
      if (line.startsWith('@@')) {
        const r = JSON.parse(line.slice(2)) as Record<string, unknown>;
        reports.push(r);
        options.onReport?.(r);
      }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
  return new Promise((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, reports });
    });
  });
}

/** Describes how a child ended, for assertion messages. */
export function describeOutcome(o: ChildOutcome): string {
  return `exit code ${o.code}, signal ${o.signal}\n--- stderr ---\n${o.stderr.slice(-4000)}\n--- stdout ---\n${o.stdout.slice(-2000)}`;
}

/** Lines of /proc/self/maps that name `needle`. */
export function mapsMatching(needle: string, pid: number | 'self' = 'self'): string[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((l) => l.includes(needle));
}

/** A small, fast, seeded PRNG (mulberry32) and helpers. */
export class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    let t = (this.#s = (this.#s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.next() < p;
  }

  /** One of the items. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** `n` random bytes. */
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }

  /** A random u32. */
  u32(): number {
    return this.int(0x100000000) >>> 0;
  }
}

/** Imports the fake exporter's buffer: get, the HELLO, a well-formed welcome. */
export async function importThrough(fe: FakeExporter): Promise<DmaBuf> {
  const got = DmaBuf.get(fe.fileEnd);
  const hello = await fe.hello();
  await fe.send(MsgType.REPLY, hello.id, welcomeBody());
  return got;
}

/** Attaches a CPU device to a buffer of the fake exporter, which answers with `attachment`. */
export async function attachThrough(fe: FakeExporter, buf: DmaBuf, attachment: number): Promise<DmaBufAttachment> {
  const pending = buf.attach(new CpuDevice());
  const req = await fe.next();
  await fe.send(MsgType.REPLY, req.msg.id, { attachment });
  return pending;
}

/** Detaches through the fake exporter, which answers the DETACH. */
export async function detachThrough(fe: FakeExporter, att: DmaBufAttachment): Promise<void> {
  const pending = att.detach();
  const req = await fe.next();
  await fe.send(MsgType.REPLY, req.msg.id, {});
  await pending;
}
