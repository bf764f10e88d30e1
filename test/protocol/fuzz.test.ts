/**
 * Fuzz of the import protocol (issue 3): random and mutated messages, with random
 * descriptors, driven (a) into an exporter's buffer file, (b) into an exporter's channel after
 * a real handshake, and (c) into an importer, by a fake exporter that answers its HELLO and
 * requests with mutated replies.
 *
 * Each victim runs in a child process (this file, with `DMABUF_FUZZ_CHILD` set), so that a
 * crash shows as a signal or an exit code. The child checks, case by case, that every failure
 * is a DmaBufError with a code, that a well-formed request after the garbage still works, and,
 * at the end, that its descriptor count is back to where it started.
 *
 * Deterministic: a seeded PRNG. Reproduce a failure with `DMABUF_FUZZ_SEED=<seed>` (printed
 * with every failure); `DMABUF_FUZZ_SCALE=10` runs ten times as many cases.
 */
import { test as nodeTest } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { constants as fsc, openSync, rmSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { DmaBuf, DmaBufError, CpuDevice, systemHeap, type DmaDirection } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { serviceChannels } from '../../src/remote/service.js';
import { importChannels } from '../../src/remote/importer.js';
import { HEADER_SIZE, MAX_MESSAGE, MsgType, decode, encode, type Message } from '../../src/remote/protocol.js';
import { MAX_FDS_PER_MESSAGE } from '../../src/remote/connection.js';
import {
  FakeExporter, Rng, SHRINK_GROW, c, closeFds, describeOutcome, deviceBody, fdCount, fdDiff, fdTargets, mapsMatching, memfd, rawCycle,
  rawHandshake, recvRaw, report, runChild, sendRaw, seqpacketPair, turns, until, welcomeBody, type RawChannel,
} from './raw.js';

const SELF = fileURLToPath(import.meta.url);
const CHILD = process.env.DMABUF_FUZZ_CHILD;
const test = (CHILD ? () => {} : nodeTest) as typeof nodeTest;
const SEED = Number(process.env.DMABUF_FUZZ_SEED ?? 20240601) >>> 0;
const SCALE = Number(process.env.DMABUF_FUZZ_SCALE ?? 1);
const PATTERN = Uint8Array.from({ length: 64 }, (_, i) => (i * 13 + 5) & 0xff);
const ERRNO_NAME = /^E[A-Z0-9]{1,15}$/;

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

const TYPES = [MsgType.HELLO, MsgType.ATTACH, MsgType.DETACH, MsgType.MAP, MsgType.UNMAP, MsgType.PUT, MsgType.REPLY, MsgType.ERROR];
const DIRECTIONS: DmaDirection[] = ['bidirectional', 'to-device', 'from-device', 'none'];

/** A random JSON value, biased towards the edge cases of the field readers. */
function jsonValue(rng: Rng, depth = 0): unknown {
  switch (rng.int(depth > 2 ? 9 : 12)) {
    case 0: return rng.int(10);
    case 1: return rng.pick([-1, -0.5, 0.5, 1.5, 2 ** 32, 2 ** 53, -(2 ** 53), 1e308, Number.MAX_SAFE_INTEGER, 0xffffffff, 0x100000000]);
    case 2: return rng.u32();
    case 3: return rng.pick(['', 'x', '0', '1', 'true', 'null', 'bidirectional', 'to-device', 'cpu', '__proto__', 'E'.repeat(300), '\u0000', '\ud800', '🙂'.repeat(40)]);
    case 4: return rng.bytes(rng.int(20)).toString('latin1');
    case 5: return rng.chance(0.5);
    case 6: return null;
    case 7: return 'y'.repeat(rng.pick([63, 64, 65, 255, 256, 4097]));
    case 8: return rng.pick([[], {}, [1, 2, 3], ['a'], [[0, 4096, 1]]]);
    case 9: return Array.from({ length: rng.int(4) }, () => jsonValue(rng, depth + 1));
    case 10: {
      const o: Record<string, unknown> = {};
      for (let i = rng.int(4); i > 0; i--) o[rng.pick(['name', 'kind', 'size', 'buffer', 'map', 'attachment', '__proto__', 'constructor', 'x'])] = jsonValue(rng, depth + 1);
      return o;
    }
    default: return Array.from({ length: 1 + rng.int(3) }, () => [rng.int(9000), rng.int(5000), rng.int(4)]);
  }
}

/** Changes, removes or adds fields of a body (deeply, sometimes). */
function mutateBody(rng: Rng, body: Record<string, unknown>): Record<string, unknown> {
  const out = JSON.parse(JSON.stringify(body)) as Record<string, unknown>;
  for (let n = 1 + rng.int(3); n > 0; n--) {
    const keys = Object.keys(out);
    const op = rng.int(5);
    if (op === 0 && keys.length) delete out[rng.pick(keys)];
    else if (op === 1 || !keys.length) out[rng.pick(['extra', 'buffer', 'map', 'attachment', 'device', 'direction', 'tokens', 'versions', 'size', 'segments', 'memory'])] = jsonValue(rng);
    else if (op === 2 && keys.includes('device') && typeof out.device === 'object' && out.device) {
      const dev = out.device as Record<string, unknown>;
      dev[rng.pick(['name', 'kind', 'maxSegmentSize', 'maxSegments', 'segmentAlignment', 'pageSize'])] = jsonValue(rng);
    } else if (op === 3 && keys.includes('memory') && typeof out.memory === 'object' && out.memory) {
      const mem = out.memory as Record<string, unknown>;
      mem[rng.pick(['size', 'pageSize', 'writeSealed'])] = jsonValue(rng);
    } else {
      out[rng.pick(keys)] = jsonValue(rng);
    }
  }
  return out;
}

/** Byte-level damage: flips, truncation, appended bytes, header fields, broken JSON, oversize. */
function mutateBytes(rng: Rng, msg: Buffer): Buffer {
  let b = Buffer.from(msg);
  for (let n = 1 + rng.int(2); n > 0; n--) {
    switch (rng.int(11)) {
      case 0: // flip bytes anywhere
        for (let k = 1 + rng.int(3); k > 0 && b.length; k--) b[rng.int(b.length)] ^= 1 << rng.int(8);
        break;
      case 1: // flip a header byte
        if (b.length >= HEADER_SIZE) b[rng.int(HEADER_SIZE)] ^= 1 + rng.int(255);
        break;
      case 2: // truncate
        b = b.subarray(0, rng.int(b.length + 1));
        break;
      case 3: // append
        b = Buffer.concat([b, rng.bytes(1 + rng.int(40))]);
        break;
      case 4: // version
        if (b.length >= 6) b.writeUInt16LE(rng.pick([0, 2, 3, 0xffff, rng.int(0x10000)]), 4);
        break;
      case 5: // type
        if (b.length >= 8) b.writeUInt16LE(rng.pick([0, 2, 10, 0xffff, rng.int(12), rng.int(0x10000)]), 6);
        break;
      case 6: // flags or reserved
        if (b.length >= HEADER_SIZE) b.writeUInt32LE(rng.u32() || 1, rng.chance(0.5) ? 16 : 20);
        break;
      case 7: // body length
        if (b.length >= 16) b.writeUInt32LE(rng.pick([0, b.length, Math.max(0, b.length - HEADER_SIZE + 1), rng.u32()]) >>> 0, 12);
        break;
      case 8: { // a body that is not JSON, or not an object
        const body = rng.pick(['{', '[1]', 'null', '"s"', '{"a":1}}', '{"a":', rng.bytes(rng.int(30)).toString('latin1')]);
        const head = Buffer.from(b.subarray(0, Math.min(HEADER_SIZE, b.length)));
        b = Buffer.concat([head, Buffer.from(body, 'latin1')]);
        if (head.length >= HEADER_SIZE) b.writeUInt32LE(b.length - HEADER_SIZE, 12);
        break;
      }
      case 9: // deep nesting
        if (b.length >= HEADER_SIZE) {
          const d = 1 + rng.int(20000);
          const body = Buffer.from(`{"a":${'['.repeat(d)}${']'.repeat(d)}}`);
          b = Buffer.concat([b.subarray(0, HEADER_SIZE), body]);
          b.writeUInt32LE(body.length, 12);
        }
        break;
      default: // oversized (rare)
        if (rng.chance(0.2)) {
          const pad = Buffer.alloc(MAX_MESSAGE + rng.int(3000) - 100, 0x20);
          b = Buffer.concat([b, pad]);
          if (rng.chance(0.5)) b.writeUInt32LE(b.length - HEADER_SIZE, 12);
        }
    }
  }
  return b;
}

/** Descriptor kinds sent where none (or one) is expected. */
type FdKind = 'seqpacket' | 'stream' | 'dgram' | 'memfd' | 'sealed-memfd' | 'eventfd' | 'fifo' | 'unconnected' | 'listening' | 'devnull';
const FD_KINDS: FdKind[] = ['seqpacket', 'stream', 'dgram', 'memfd', 'sealed-memfd', 'eventfd', 'fifo', 'unconnected', 'listening', 'devnull'];

/** Makes descriptors to send; `kept` receives the other ends this process keeps (closed later). */
class FdFactory {
  #fifo: string;
  #dir: string;
  #n = 0;

  constructor() {
    this.#dir = mkdtempSync(path.join(tmpdir(), 'dmabuf-fuzz-'));
    this.#fifo = path.join(this.#dir, 'fifo');
    execFileSync('mkfifo', [this.#fifo]);
  }

  make(kind: FdKind, kept: number[]): number {
    switch (kind) {
      case 'seqpacket': case 'stream': case 'dgram': {
        const [a, b] = native.socketpair(kind === 'seqpacket' ? c.SOCK_SEQPACKET : kind === 'stream' ? c.SOCK_STREAM : c.SOCK_DGRAM, false);
        kept.push(b);
        return a;
      }
      case 'memfd': return memfd('fuzz-junk', 4096, 0);
      case 'sealed-memfd': return memfd('fuzz-junk-sealed', 8192, SHRINK_GROW());
      case 'eventfd': return native.eventfd(0, 0);
      case 'fifo': return openSync(this.#fifo, fsc.O_RDWR | fsc.O_NONBLOCK);
      case 'unconnected': return native.socket(c.SOCK_SEQPACKET, false);
      case 'listening': {
        const s = native.socket(c.SOCK_SEQPACKET, false);
        native.bind(s, `\0dmabuf-fuzz-${process.pid}-${this.#n++}`);
        native.listen(s, 1);
        return s;
      }
      default: return openSync('/dev/null', 'r');
    }
  }

  /** 0..max random descriptors (sometimes many, for MSG_CTRUNC). */
  some(rng: Rng, max: number, kept: number[]): number[] {
    const n = rng.chance(0.03) ? 5 + rng.int(8) : rng.int(max + 1);
    return Array.from({ length: n }, () => this.make(rng.pick(FD_KINDS), kept));
  }

  close(): void {
    rmSync(this.#dir, { recursive: true, force: true });
  }
}

/** With DMABUF_FUZZ_TRACE set, says what the child is doing (on stderr). */
function trace(what: string): void {
  recent.push(what);
  if (recent.length > 40) recent.shift();
  if (process.env.DMABUF_FUZZ_TRACE) process.stderr.write(`${what}\n`);
}
const recent: string[] = [];

/** Fails the child with the case that broke it (the parent prints it with the seed). */
function fail(where: string, detail: unknown): never {
  throw new Error(`fuzz ${CHILD} seed ${SEED}, ${where}: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}\n--- last steps ---\n${recent.join('\n')}`);
}

/** Asserts a failure is a DmaBufError with a code. */
function checkError(where: string, err: unknown): string {
  if (!(err instanceof DmaBufError)) fail(where, `not a DmaBufError: ${String((err as Error)?.stack ?? err)}`);
  if (typeof err.code !== 'string' || !ERRNO_NAME.test(err.code)) fail(where, `a DmaBufError without an errno-like code: ${String(err.code)}`);
  return err.code;
}

function tally(counts: Record<string, number>, key: string): void {
  counts[key] = (counts[key] ?? 0) + 1;
}

// ---------------------------------------------------------------------------------------
// (a) The buffer's file
// ---------------------------------------------------------------------------------------

async function fuzzFile(): Promise<void> {
  const rng = new Rng(SEED ^ 0xa11ce);
  const cases = Math.round(4000 * SCALE);
  const factory = new FdFactory();
  const buf = systemHeap.allocate(8192, { name: 'fuzz-file', contents: PATTERN });
  const fd = buf.fd();
  // Warm up (lazy module state, first channel), then take the baseline.
  const warm = await rawHandshake(fd);
  await rawCycle(warm, 1, 4); // the storage exists from here on (late allocation)
  native.close(warm.sock);
  await until(() => serviceChannels().length === 0, 3000, 'the warm-up channel to go');
  const start = fdCount();
  // A resident channel: fuzzed HELLOs that name its token reuse it.
  const resident = await rawHandshake(fd);
  const token = resident.welcome.body.token as string;
  const startFds = fdTargets();
  const counts: Record<string, number> = {};
  let i = 0;
  while (i < cases) {
    // A batch of messages, then a sentinel HELLO: its answer comes after all of theirs.
    const peers: { fd: number; index: number; valid: boolean }[] = [];
    const kept: number[] = [];
    for (let b = 0; b < 10 && i < cases; b++, i++) {
      const id = rng.chance(0.1) ? 0 : rng.u32();
      const helloBody: Record<string, unknown> = { versions: [1], pid: rng.int(100000), tokens: rng.chance(0.1) ? [token] : rng.chance(0.2) ? [rng.bytes(16).toString('hex')] : [] };
      let data: Buffer;
      const shape = rng.int(10);
      let valid = false;
      if (shape < 3) {
        data = encode(MsgType.HELLO, id, helloBody);
        valid = true;
      } else if (shape < 6) {
        data = mutateBytes(rng, encode(MsgType.HELLO, id, helloBody));
      } else if (shape < 8) {
        data = encode(rng.pick(TYPES), id, rng.chance(0.5) ? mutateBody(rng, helloBody) : (jsonValue(rng) as Record<string, unknown>) ?? {});
        valid = false;
      } else {
        data = rng.bytes(rng.int(rng.chance(0.1) ? 70000 : 120));
      }
      // Descriptors: usually one channel-like end, plus noise.
      const fds: number[] = [];
      let peer = -1;
      if (rng.chance(0.7)) {
        const [a, p] = seqpacketPair();
        fds.push(a);
        peer = p;
      }
      fds.push(...factory.some(rng, 2, kept));
      if (fds.length > 1) {
        // Shuffle, so that the channel is not always first.
        for (let k = fds.length - 1; k > 0; k--) {
          const j = rng.int(k + 1);
          [fds[k], fds[j]] = [fds[j]!, fds[k]!];
        }
      }
      if (data.length === 0 && fds.length === 0) data = Buffer.from([0]);
      try {
        await sendRaw(fd, data.length > 212_000 ? data.subarray(0, 212_000) : data, fds.slice(0, 253));
      } catch (err) {
        if (!DmaBufError.is(err, 'EMSGSIZE')) fail(`case ${i}: send`, String(err));
        tally(counts, 'too-large-to-send');
      }
      closeFds(fds);
      if (peer >= 0) peers.push({ fd: peer, index: i, valid: valid && fds.length === 1 });
      tally(counts, `shape-${shape}`);
    }
    // The sentinel: a well-formed HELLO must be answered with the buffer's description.
    const sentinel = await rawHandshake(fd).catch((err: unknown) => fail(`after case ${i}: the exporter no longer answers a well-formed HELLO`, String(err)));
    if (sentinel.welcome.body.size !== 8192 || sentinel.welcome.body.name !== 'fuzz-file') fail(`after case ${i}`, sentinel.welcome.body);
    native.close(sentinel.sock);
    for (const p of peers) {
      const r = await recvRaw(p.fd, 0);
      if (r === null) {
        if (p.valid) fail(`case ${p.index}`, 'a well-formed HELLO was not answered');
        tally(counts, 'silent');
      } else if (r === 'eof') {
        tally(counts, 'closed');
      } else {
        if (r.fds.length) fail(`case ${p.index}`, `an answer with ${r.fds.length} descriptors`);
        const m = decode(r.data);
        if (m.type === MsgType.REPLY) {
          if (m.body.size !== 8192 || m.body.name !== 'fuzz-file' || m.body.exporter !== 'system') fail(`case ${p.index}`, m.body);
          tally(counts, m.body.reused ? 'reply-reused' : 'reply');
        } else if (m.type === MsgType.ERROR) {
          if (typeof m.body.code !== 'string' || !ERRNO_NAME.test(m.body.code)) fail(`case ${p.index}`, m.body);
          tally(counts, `error-${m.body.code}`);
        } else {
          fail(`case ${p.index}`, `the exporter answered a ${m.type}`);
        }
      }
      native.close(p.fd);
    }
    closeFds(kept);
    // Every few batches, a full cycle on a fresh channel.
    if (i % 200 === 0 || i >= cases) {
      const ch = await rawHandshake(fd);
      const bytes = await rawCycle(ch, 1, PATTERN.length).catch((err: unknown) => fail(`after case ${i}: a well-formed cycle`, String(err)));
      if (Buffer.compare(Buffer.from(bytes), Buffer.from(PATTERN)) !== 0) fail(`after case ${i}`, 'the contents changed');
      native.close(ch.sock);
    }
  }
  if (serviceChannels().find((x) => x.token === token)?.buffers !== 1) fail('end', { resident: serviceChannels() });
  native.close(resident.sock);
  await until(() => serviceChannels().length === 0, 5000, 'every fuzzed channel to be dropped').catch(() => fail('end', { channels: serviceChannels() }));
  await until(() => fdCount() === start, 5000, 'the descriptor count').catch(() => fail('end', { start, now: fdCount(), leaked: fdDiff(startFds) }));
  if (buf.attachments.length !== 0 || buf.mapCount !== 0) fail('end', { attachments: buf.attachments.length, maps: buf.mapCount });
  native.close(fd);
  buf.put();
  await until(() => buf.released, 5000, 'the release').catch(() => fail('end', 'the buffer was not released'));
  factory.close();
  report({ done: true, cases, counts });
}

// ---------------------------------------------------------------------------------------
// (b) A channel after a real handshake
// ---------------------------------------------------------------------------------------

async function fuzzChannel(): Promise<void> {
  const rng = new Rng(SEED ^ 0xc4a77e1);
  const cases = Math.round(6000 * SCALE);
  const factory = new FdFactory();
  const bufs = [
    systemHeap.allocate(8192, { name: 'fuzz-a', contents: PATTERN }),
    systemHeap.allocate(3 * 4096 + 100, { name: 'fuzz-b', contents: PATTERN }),
  ];
  const files = bufs.map((b) => b.fd());
  const warm = await rawHandshake(files[0]!);
  await rawCycle(warm, 1, 4); // the storage exists from here on (late allocation)
  native.close(warm.sock);
  const warmB = await rawHandshake(files[1]!);
  await rawCycle(warmB, 1, 4);
  native.close(warmB.sock);
  await until(() => serviceChannels().length === 0, 3000, 'the warm-up channel to go');
  const start = fdCount();
  const startFds = fdTargets();
  let ch: RawChannel = await rawHandshake(files[0]!);
  let token = ch.welcome.body.token as string;
  const bufferIds: number[] = [ch.welcome.body.buffer as number];
  // The second buffer joins the same channel (reuse by token).
  const adopt = async (fileFd: number): Promise<void> => {
    const r = await rawHandshake(fileFd, { versions: [1], pid: process.pid, tokens: [token] });
    native.close(r.sock);
    if (r.welcome.body.reused !== true || r.welcome.body.token !== token) fail('adopt', r.welcome.body);
    if (!bufferIds.includes(r.welcome.body.buffer as number)) bufferIds.push(r.welcome.body.buffer as number);
  };
  await adopt(files[1]!);
  const attachments = new Set<number>();
  const maps = new Set<number>();
  /**
   * A well-formed REPLY or ERROR from an importer makes the exporter close the channel (and
   * undo what it held): read up to the end, check the undo, and start a new channel.
   */
  const expectClosedAndReconnect = async (where: string): Promise<void> => {
    for (;;) {
      const r = await recvRaw(ch.sock, 5000);
      if (r === null) fail(where, 'the exporter kept a channel that sent it a reply');
      if (r === 'eof') break;
      closeFds(r.fds);
    }
    native.close(ch.sock);
    await until(() => bufs.every((b) => b.attachments.length === 0 && b.mapCount === 0) && serviceChannels().length === 0, 5000, 'the undo')
      .catch(() => fail(where, { channels: serviceChannels(), held: bufs.map((b) => [b.attachments.length, b.mapCount]) }));
    ch = await rawHandshake(files[0]!);
    token = ch.welcome.body.token as string;
    await adopt(files[1]!);
    attachments.clear();
    maps.clear();
    tally(counts, 'closed-for-a-reply');
  };
  const sent = new Map<number, number>(); // id -> type of what we asked
  const counts: Record<string, number> = {};
  let probe = 0xf0000000;

  const handle = (m: Message, fds: number[], where: string): void => {
    if (m.type !== MsgType.REPLY && m.type !== MsgType.ERROR) fail(where, `the exporter sent a ${m.type}`);
    const asked = sent.get(m.id);
    if (m.type === MsgType.ERROR) {
      if (fds.length) fail(where, 'an ERROR with descriptors');
      if (typeof m.body.code !== 'string' || !ERRNO_NAME.test(m.body.code)) fail(where, m.body);
      tally(counts, `error-${m.body.code}`);
      return;
    }
    if (typeof m.body.map === 'number') {
      // A map reply: exactly one memfd, sealed against shrinking and growing.
      if (fds.length !== 1) fail(where, `a map reply with ${fds.length} descriptors`);
      const seals = native.getSeals(fds[0]!);
      if ((seals & SHRINK_GROW()) !== SHRINK_GROW()) fail(where, `storage with seals ${seals}`);
      closeFds(fds);
      maps.add(m.body.map);
      tally(counts, 'reply-map');
      return;
    }
    if (fds.length) fail(where, `a ${asked ?? '?'} reply with ${fds.length} descriptors`);
    if (typeof m.body.attachment === 'number') attachments.add(m.body.attachment);
    tally(counts, `reply-${asked ?? 'unknown'}`);
  };

  /** Reads until the probe is answered (everything before it has been read). */
  const drain = async (where: string): Promise<void> => {
    probe += 1;
    await sendRaw(ch.sock, encode(MsgType.UNMAP, probe, { map: 0xfffffff0 }));
    for (;;) {
      const r = await recvRaw(ch.sock, 5000);
      if (r === null) fail(where, 'the exporter stopped answering');
      if (r === 'eof') fail(where, 'the exporter closed the channel');
      const m = decode(r.data);
      if (m.id === probe) {
        if (m.type !== MsgType.ERROR || m.body.code !== 'EINVAL') fail(where, m);
        return;
      }
      handle(m, r.fds, where);
    }
  };

  const bodyFor = (type: number): Record<string, unknown> => {
    const known = <T>(set: Iterable<T>, random: () => T): T => {
      const arr = [...set];
      return arr.length && rng.chance(0.75) ? rng.pick(arr) : random();
    };
    switch (type) {
      case MsgType.ATTACH: return { buffer: known(bufferIds, () => rng.u32()), device: deviceBody(rng.chance(0.3) ? { pageSize: rng.pick([4096, 8192, 2 ** 21]), maxSegmentSize: rng.pick([4096, 8192, 1 << 20]), segmentAlignment: rng.pick([1, 4096, 65536]) } : {}) };
      case MsgType.DETACH: return { attachment: known(attachments, () => rng.u32()) };
      case MsgType.MAP: return { attachment: known(attachments, () => rng.u32()), direction: rng.pick(DIRECTIONS) };
      case MsgType.UNMAP: return { map: known(maps, () => rng.u32()) };
      case MsgType.PUT: return { buffer: known(bufferIds, () => rng.u32()) };
      case MsgType.HELLO: return { versions: [1], tokens: [token] };
      default: return { attachment: rng.u32(), code: 'EIO', message: 'forged' };
    }
  };

  for (let i = 0; i < cases; i++) {
    const type = rng.chance(0.03) ? rng.pick([MsgType.REPLY, MsgType.ERROR]) : rng.chance(0.9) ? rng.pick([MsgType.ATTACH, MsgType.ATTACH, MsgType.MAP, MsgType.MAP, MsgType.UNMAP, MsgType.DETACH, MsgType.PUT, MsgType.HELLO]) : rng.int(12);
    const id = rng.chance(0.05) ? 0 : rng.int(0xefffffff) + 1;
    let body = bodyFor(type);
    if (rng.chance(0.3)) body = mutateBody(rng, body);
    let data = encode(type as (typeof TYPES)[number], id, body);
    if (rng.chance(0.25)) data = mutateBytes(rng, data);
    if (data.length === 0) data = Buffer.from([1]);
    if (type === MsgType.PUT && rng.chance(0.7)) continue; // keep the buffers reachable most of the time
    const kept: number[] = [];
    const fds = rng.chance(0.12) ? factory.some(rng, 3, kept) : [];
    sent.set(id, type);
    trace(`case ${i}: type ${type} id ${id} ${data.length} bytes, ${fds.length} fds: ${data.subarray(0, 200).toString('latin1')}`);
    await sendRaw(ch.sock, data, fds.slice(0, 253));
    closeFds(fds);
    let reply = false;
    try {
      const m = decode(data);
      reply = (m.type === MsgType.REPLY || m.type === MsgType.ERROR) && fds.length <= MAX_FDS_PER_MESSAGE;
    } catch {
      // malformed: answered with an ERROR when it has an id
    }
    if (reply) await expectClosedAndReconnect(`case ${i}`);
    else if (i % 4 === 3 || fds.length) await drain(`case ${i}`);
    closeFds(kept);
    if (i % 150 === 149) {
      // Buffers the fuzz PUT come back with a HELLO through their file; then a full cycle.
      for (const f of files) await adopt(f);
      await drain(`before the cycle after case ${i}`);
      const cycle = await rawCycle(ch, 0xe0000000 + i * 4, PATTERN.length).catch((err: unknown) => fail(`after case ${i}: a well-formed cycle`, String(err)));
      if (Buffer.compare(Buffer.from(cycle), Buffer.from(PATTERN)) !== 0) fail(`after case ${i}`, 'the contents changed');
      tally(counts, 'cycles');
    }
    if (sent.size > 10000) sent.clear();
  }
  await drain('end');
  await sleep(30);
  for (;;) {
    const r = await recvRaw(ch.sock, 20);
    if (r === null) break;
    if (r === 'eof') fail('end', 'the exporter closed the channel');
    handle(decode(r.data), r.fds, 'end');
  }
  // The importer goes away with whatever it holds: the exporter undoes all of it.
  const held = { attachments: bufs.reduce((n, b) => n + b.attachments.length, 0), maps: bufs.reduce((n, b) => n + b.mapCount, 0) };
  native.close(ch.sock);
  ch = undefined as unknown as RawChannel;
  await until(() => bufs.every((b) => b.attachments.length === 0 && b.mapCount === 0), 10_000, 'the exporter to undo what the importer left')
    .catch(() => fail('end', bufs.map((b) => ({ attachments: b.attachments.length, maps: b.mapCount }))));
  await until(() => serviceChannels().length === 0, 5000, 'the channel to be dropped').catch(() => fail('end', serviceChannels()));
  await until(() => fdCount() === start, 5000, 'the descriptor count').catch(() => fail('end', { start, now: fdCount(), leaked: fdDiff(startFds) }));
  closeFds(files);
  for (const b of bufs) b.put();
  await until(() => bufs.every((b) => b.released), 5000, 'the releases').catch(() => fail('end', 'a buffer was not released'));
  factory.close();
  report({ done: true, cases, held, counts });
}

// ---------------------------------------------------------------------------------------
// (c) An importer, against a fake exporter
// ---------------------------------------------------------------------------------------

/** What the fake exporter does with one request: answer well, answer badly, or close. */
type Plan = 'good' | 'mutated-body' | 'mutated-bytes' | 'error' | 'wrong-id' | 'extra-fds' | 'close' | 'garbage-first';
const PLANS: Plan[] = ['good', 'good', 'good', 'good', 'mutated-body', 'mutated-bytes', 'error', 'wrong-id', 'extra-fds', 'close', 'garbage-first'];

async function fuzzImporter(): Promise<void> {
  const rng = new Rng(SEED ^ 0x1e907e4);
  const cases = Math.round(1500 * SCALE);
  const factory = new FdFactory();
  // Warm up the importer side once.
  {
    const fe = new FakeExporter();
    const p = DmaBuf.get(fe.fileEnd, { timeout: 1000 });
    const h = await fe.hello();
    await fe.send(MsgType.REPLY, h.id, welcomeBody());
    (await p).put();
    fe.close();
    await until(() => importChannels().every((x) => x.closed) || importChannels().length === 0, 3000, 'the warm-up channel');
  }
  await turns(5);
  const start = fdCount();
  const startFds = fdTargets();
  const counts: Record<string, number> = {};
  const outcome = (step: string, r: PromiseSettledResult<unknown>, i: number): boolean => {
    trace(`  ${step}: ${r.status === 'fulfilled' ? 'ok' : `${(r.reason as DmaBufError).code} ${(r.reason as Error).message}`}`);
    if (r.status === 'fulfilled') {
      tally(counts, `${step}-ok`);
      return true;
    }
    tally(counts, `${step}-${checkError(`case ${i} ${step}`, r.reason)}`);
    return false;
  };

  for (let i = 0; i < cases; i++) {
    trace(`case ${i}`);
    const fe = new FakeExporter();
    const kept: number[] = [];
    const size = rng.pick([4096, 8192, 3 * 4096 + 17, 65536]);
    const readOnly = rng.chance(0.2);
    const storage: number[] = [];
    let closed = false;
    let mapId = 1000;
    /** Whether the storage of the last map reply holds PATTERN (a junk memfd may be valid too). */
    let patterned = false;

    /** Answers one message according to a plan. */
    const answer = async (m: Message, good: Record<string, unknown>, goodFds: number[] = []): Promise<void> => {
      if (closed) return;
      const plan = rng.pick(PLANS);
      tally(counts, `plan-${plan}`);
      trace(`  ${m.type} ${m.id} -> ${plan}`);
      switch (plan) {
        case 'good': return fe.send(MsgType.REPLY, m.id, good, goodFds);
        case 'mutated-body': return fe.send(MsgType.REPLY, m.id, mutateBody(rng, good), rng.chance(0.5) ? goodFds : []);
        case 'mutated-bytes':
          // The damage may hit the id, and then the importer cannot match it to its request
          // (it waits for an answer as long as the channel lives): the good reply follows,
          // which is dropped as a reply to nothing when the damaged one was matched.
          await fe.sendBytes(mutateBytes(rng, encode(MsgType.REPLY, m.id, good)), rng.chance(0.5) ? goodFds : []);
          return fe.send(MsgType.REPLY, m.id, good, goodFds);
        case 'error': return fe.send(MsgType.ERROR, m.id, rng.chance(0.7) ? { code: rng.pick(['EBUSY', 'EINVAL', 'EPIPE', 'EPROTO', 'ENOMEM', 'x', '']), message: 'fuzz' } : mutateBody(rng, { code: 'EIO' }));
        case 'wrong-id': {
          const extra = factory.some(rng, 2, kept);
          await fe.send(MsgType.REPLY, (m.id + 1 + rng.int(5)) >>> 0, good, extra.slice(0, 253));
          closeFds(extra);
          return fe.send(MsgType.REPLY, m.id, good, goodFds);
        }
        case 'extra-fds': {
          const extra = factory.some(rng, 3, kept);
          await fe.send(MsgType.REPLY, m.id, good, [...goodFds, ...extra].slice(0, 253));
          closeFds(extra);
          return;
        }
        case 'garbage-first': {
          const extra = factory.some(rng, 1, kept);
          await fe.sendBytes(rng.chance(0.5) ? rng.bytes(1 + rng.int(60)) : mutateBytes(rng, encode(rng.pick(TYPES), rng.u32(), {})), extra.slice(0, 253));
          closeFds(extra);
          return fe.send(MsgType.REPLY, m.id, good, goodFds);
        }
        default:
          closed = true;
          fe.closeChannel();
      }
    };

    /** The fake exporter: serves requests until the channel closes. */
    const serve = async (): Promise<void> => {
      for (;;) {
        if (closed || fe.channel < 0) return;
        const r = await recvRaw(fe.channel, 3000, 16, () => closed);
        if (r === null || r === 'eof') return;
        closeFds(r.fds);
        let m: Message;
        try {
          m = decode(r.data);
        } catch (err) {
          fail(`case ${i}`, `the importer sent a malformed message: ${String(err)}`);
        }
        switch (m.type) {
          case MsgType.ATTACH: await answer(m, { attachment: rng.int(100) }); break;
          case MsgType.MAP: {
            const kind = rng.int(10);
            const mSize = kind === 0 ? size - 1 : size;
            const seals = kind === 1 ? 0 : kind === 2 ? c.F_SEAL_SHRINK : SHRINK_GROW() | (readOnly || kind === 3 ? c.F_SEAL_WRITE : 0);
            const fd = kind === 4 ? factory.make(rng.pick(FD_KINDS), kept) : memfd(`fuzz-storage-${i}`, Math.ceil(mSize / 4096) * 4096, seals, PATTERN);
            storage.push(fd);
            patterned = kind !== 4;
            const good = {
              map: mapId++,
              segments: rng.chance(0.8) ? [[0, size, 1]] : [[0, 4096, Math.floor(size / 4096)], ...(size % 4096 ? [[Math.floor(size / 4096) * 4096, size % 4096, 1]] : [])],
              memory: { size: Math.ceil(mSize / 4096) * 4096, pageSize: 4096, writeSealed: readOnly || kind === 3 },
              access: readOnly || kind === 3 ? 'read' : rng.pick(['read', 'write']),
            };
            await answer(m, good, [fd]);
            // A hostile exporter pulls unsealed memory from under the importer.
            if (seals === 0 || seals === c.F_SEAL_SHRINK) {
              try {
                native.ftruncate(fd, 0);
              } catch {
                // sealed
              }
            }
            break;
          }
          case MsgType.UNMAP: case MsgType.DETACH: await answer(m, {}); break;
          case MsgType.PUT: break;
          default: fail(`case ${i}`, `the importer sent a ${m.type}`);
        }
      }
    };

    // The importer's side: get, attach, map, read, unmap, detach, put; every failure checked.
    const got = DmaBuf.get(fe.fileEnd, { timeout: 100 });
    const welcomePlan = rng.chance(0.02) ? 0 : 1 + rng.int(11);
    const helloRaw = await recvRaw(fe.serviceEnd, 3000);
    if (helloRaw === null || helloRaw === 'eof') fail(`case ${i}`, 'no HELLO');
    const hello = decode(helloRaw.data);
    if (hello.type !== MsgType.HELLO || helloRaw.fds.length !== 1) fail(`case ${i}`, 'a bad HELLO from the importer');
    fe.channel = helloRaw.fds[0]!;
    const welcome = welcomeBody({ size, flags: readOnly ? 0 : 2, name: `fuzz-${i}` });
    if (welcomePlan === 0) {
      // No answer at all: get must time out.
      tally(counts, 'welcome-silent');
    } else if (welcomePlan === 1) {
      fe.closeChannel();
      closed = true;
    } else if (welcomePlan <= 3) {
      await answer(hello, welcome);
    } else if (welcomePlan === 4) {
      const extra = factory.some(rng, 2, kept);
      await fe.send(MsgType.REPLY, hello.id, mutateBody(rng, welcome), extra.slice(0, 253));
      closeFds(extra);
    } else if (welcomePlan === 5) {
      await fe.sendBytes(mutateBytes(rng, encode(MsgType.REPLY, hello.id, welcome)));
    } else {
      await fe.send(MsgType.REPLY, hello.id, welcome);
    }
    const serving = serve();
    const g = (await Promise.allSettled([got]))[0]!;
    if (outcome('get', g, i)) {
      const buf = (g as PromiseFulfilledResult<DmaBuf>).value;
      if (buf.size !== size && welcomePlan > 5) fail(`case ${i}`, `size ${buf.size} != ${size}`);
      const dev = new CpuDevice(rng.chance(0.2) ? { maxSegmentSize: 4096 } : {});
      const a = (await Promise.allSettled([buf.attach(dev)]))[0]!;
      if (outcome('attach', a, i)) {
        const att = (a as PromiseFulfilledResult<Awaited<ReturnType<DmaBuf['attach']>>>).value;
        for (let k = 0; k < 1 + rng.int(2); k++) {
          const dir = readOnly ? 'to-device' : rng.pick(DIRECTIONS.filter((d) => d !== 'none'));
          const mres = (await Promise.allSettled([att.map(dir)]))[0]!;
          if (outcome('map', mres, i)) {
            const sgt = (mres as PromiseFulfilledResult<Awaited<ReturnType<typeof att.map>>>).value;
            // Touch every page of every segment: a mapping of storage a peer could truncate
            // would raise SIGBUS here and kill this child.
            let sum = 0;
            for (const s of sgt.segments) for (let j = 0; j < s.length; j += 4096) sum += s.view![j]!;
            const first = sgt.segments[0]!.view!;
            if (patterned && sgt.segments[0]!.offset === 0 && first.length >= 8 && Buffer.compare(Buffer.from(first.subarray(0, 8)), Buffer.from(PATTERN.subarray(0, 8))) !== 0) fail(`case ${i}`, 'the map shows other contents');
            tally(counts, `touched-${sum >= 0}`);
            outcome('unmap', (await Promise.allSettled([att.unmap(sgt)]))[0]!, i);
          }
        }
        outcome('detach', (await Promise.allSettled([att.detach()]))[0]!, i);
      }
      buf.put();
    }
    closed = true;
    await serving;
    fe.close();
    closeFds([...kept, ...storage]);
    if (i % 100 === 99) {
      await until(() => mapsMatching('memfd:fuzz-storage').length === 0, 3000, 'no mapping left').catch(() => fail(`after case ${i}`, mapsMatching('memfd:fuzz-storage')));
    }
  }
  await until(() => importChannels().length === 0, 5000, 'every channel to close').catch(() => fail('end', importChannels()));
  await until(() => fdCount() === start, 5000, 'the descriptor count').catch(() => fail('end', { start, now: fdCount(), leaked: fdDiff(startFds) }));
  if (mapsMatching('memfd:fuzz-').length) fail('end', mapsMatching('memfd:fuzz-'));
  factory.close();
  report({ done: true, cases, counts });
}

// ---------------------------------------------------------------------------------------
// The tests: each victim in a child
// ---------------------------------------------------------------------------------------

async function runFuzz(which: string): Promise<Record<string, unknown>> {
  const out = await runChild(SELF, { DMABUF_FUZZ_CHILD: which, DMABUF_FUZZ_SEED: String(SEED), DMABUF_FUZZ_SCALE: String(SCALE) }, { timeoutMs: 120_000 });
  const ctx = `seed ${SEED} (rerun with DMABUF_FUZZ_SEED=${SEED}): ${describeOutcome(out)}`;
  assert.equal(out.signal, null, `the victim died of a signal; ${ctx}`);
  assert.equal(out.code, 0, `the victim failed; ${ctx}`);
  const last = out.reports.at(-1);
  assert.equal(last?.done, true, ctx);
  return last!;
}

test('fuzz (a): random and mutated HELLOs with random descriptors into a buffer\'s file never crash the exporter, leak nothing, and well-formed HELLOs keep working', async (t) => {
  const r = await runFuzz('file');
  t.diagnostic(JSON.stringify(r.counts));
  const counts = r.counts as Record<string, number>;
  assert.ok((counts.reply ?? 0) > 0 && (counts['error-EPROTO'] ?? 0) > 0, 'the fuzz reached both answers');
});

test('fuzz (b): random and mutated requests, replies and descriptors on a channel never crash the exporter, leak nothing, and well-formed requests keep working', async (t) => {
  const r = await runFuzz('channel');
  t.diagnostic(JSON.stringify(r.counts));
  const counts = r.counts as Record<string, number>;
  assert.ok((counts['reply-map'] ?? 0) > 0 && (counts['error-EPROTO'] ?? 0) > 0 && (counts['error-EINVAL'] ?? 0) > 0, 'the fuzz reached maps and errors');
});

test('fuzz (c): a fake exporter answering with mutated replies, descriptors and storage never crashes an importer; every failure is a DmaBufError with a code; nothing leaks', async (t) => {
  const r = await runFuzz('importer');
  t.diagnostic(JSON.stringify(r.counts));
  const counts = r.counts as Record<string, number>;
  assert.ok((counts['map-ok'] ?? 0) > 0 && (counts['map-EPROTO'] ?? 0) > 0 && (counts['get-ok'] ?? 0) > 0, 'the fuzz reached maps, refusals and imports');
});

if (CHILD && SELF === process.argv[1]) {
  const run = { file: fuzzFile, channel: fuzzChannel, importer: fuzzImporter }[CHILD];
  if (!run) throw new Error(`unknown fuzz child ${CHILD}`);
  await run();
}
