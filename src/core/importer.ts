/**
 * Importing a buffer exported by another thread or process.
 *
 * `DmaBuf.get(fd)` of a descriptor whose buffer this thread did not export performs the
 * handshake: it creates a private channel and sends one end, in a HELLO, into the buffer's
 * file; only the exporter reads what is written there. The exporter answers on the channel
 * with the buffer's description. The returned buffer's ops send requests on the channel; the
 * exporter runs its real ops and, for a map, sends the backing memfd, which the importer
 * verifies (sealed against shrinking and growing, and against writes for read-only buffers)
 * before it maps it into its own device. One channel serves every buffer this thread gets from
 * the same exporter thread.
 *
 * If the exporter dies, mappings already made stay valid and keep their contents; every new
 * operation fails with `EPIPE`.
 *
 * @module
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { DmaBuf, O_RDONLY, O_RDWR, O_CLOEXEC, kCreateImported, kReacquire, type GetOptions } from './dma-buf.js';
import type { DmaBufAttachment } from './attachment.js';
import type { DmaBufOps, OpContext } from './ops.js';
import type { Device, DeviceMapping } from './device.js';
import type { MemoryObject } from './memory.js';
import type { DmaDirection } from './direction.js';
import { DmaBufError } from './errors.js';
import { SgTable } from './sg-table.js';
import { native, own, closeOwned } from '../native/binding.js';
import { Connection, closeAll, lostReply, type Reply } from '../transport/connection.js';
import { ImportedFile } from '../transport/imported-file.js';
import { shutDownByHolder, holderShutDown } from '../transport/file-liveness.js';
import { MsgType, encode, field, fromRuns, type Message } from '../transport/protocol.js';

/** Default time the exporter has to answer a HELLO, in milliseconds. */
export const DEFAULT_HANDSHAKE_TIMEOUT = 2000;

/** This thread's channel to one exporter thread. */
interface ImportChannel {
  token: string;
  /** The exporter's process id. */
  pid: number;
  conn: Connection;
}

/** The importer's private data of a buffer. */
export interface ImportedPriv {
  channel: ImportChannel;
  /** The exporter's id of the buffer on the channel. */
  handle: number;
  /** The exporter's process id. */
  pid: number;
  maps: Map<SgTable, { mapping: DeviceMapping; memory: RemoteMemory; map: number }>;
  /**
   * An attach and a map the exporter made along with the HELLO (see {@link getMapped}),
   * waiting for the attach and map calls that consume them.
   */
  prefetched?: { device: Device; direction: DmaDirection; attachment: number; reply: Reply | null } | undefined;
}

/** The exporter's memory as received in this process: a verified memfd. */
class RemoteMemory implements MemoryObject {
  static #nextId = 1;
  readonly id = RemoteMemory.#nextId++;
  #fd: number;
  readonly size: number;
  readonly pageSize: number;
  readonly writeSealed: boolean;
  #drops = new Set<() => void>();

  constructor(fd: number, size: number, pageSize: number, writeSealed: boolean) {
    this.#fd = own(fd);
    this.size = size;
    this.pageSize = pageSize;
    this.writeSealed = writeSealed;
  }

  get fd(): number {
    return this.#fd;
  }

  onInvalidate(drop: () => void): () => void {
    this.#drops.add(drop);
    return () => this.#drops.delete(drop);
  }

  /** Closes the memfd; mappings made from it stay valid. */
  closeFd(): void {
    if (this.#fd >= 0) {
      closeOwned(this.#fd);
      this.#fd = -1;
    }
  }

  /** Drops cached mappings and the memfd. */
  invalidate(): void {
    for (const drop of [...this.#drops]) drop();
    this.#drops.clear();
    this.closeFd();
  }
}

const channels = new Map<string, ImportChannel>();
const inFlight = new Map<string, Promise<DmaBuf>>();
/**
 * The first handshake with a process that this thread has no channel to yet, by pid: later
 * handshakes wait for it, so that they reuse its channel instead of each opening one.
 */
const firstContact = new Map<number, Promise<unknown>>();

function exporterGone(op: string, channel: ImportChannel): DmaBufError {
  return new DmaBufError('EPIPE', `${op}: the exporter (pid ${channel.pid}) is gone or closed the channel; mappings already made stay valid, new operations are impossible`, { op });
}

function live(op: string, channel: ImportChannel): void {
  if (channel.conn.closed) throw exporterGone(op, channel);
}

/** Sends a request; the exporter's failure comes back with its own code. */
async function request(op: string, channel: ImportChannel, type: (typeof MsgType)[keyof typeof MsgType], body: Record<string, unknown>, options: { signal?: AbortSignal | undefined; onLateReply?: (r: Reply) => void } = {}): Promise<Reply> {
  live(op, channel);
  try {
    return await channel.conn.request(type, body, options);
  } catch (err) {
    if (DmaBufError.is(err, 'EPIPE') && channel.conn.closed) throw exporterGone(op, channel);
    throw err;
  }
}

/**
 * Checks a memfd received from an exporter before mapping it: a peer must never be able to
 * truncate memory under our mapping (SIGBUS), nor change a buffer it said was read-only.
 */
function verifyMemory(fd: number, size: number, pageSize: number, mustBeWriteSealed: boolean, end: number): void {
  const c = native.constants;
  const refuse = (why: string): never => {
    throw new DmaBufError('EPROTO', `map: refusing the exporter's storage: ${why}`, { op: 'map' });
  };
  const st = native.fstat(fd);
  if ((st.mode & c.S_IFMT) !== c.S_IFREG) refuse('it is not a memory file');
  const fsType = native.fstatfsType(fd);
  if (fsType !== c.TMPFS_MAGIC && fsType !== c.HUGETLBFS_MAGIC) refuse('it is not a memfd');
  const seals = native.getSeals(fd);
  if ((seals & (c.F_SEAL_SHRINK | c.F_SEAL_GROW)) !== (c.F_SEAL_SHRINK | c.F_SEAL_GROW)) {
    refuse('it is not sealed against shrinking and growing, so a peer could truncate it under our mapping');
  }
  if (mustBeWriteSealed && (seals & c.F_SEAL_WRITE) === 0) refuse('the buffer is read-only but its storage is not sealed against writes');
  if (st.size < size || size < end) refuse(`its size ${st.size} does not cover the ${Math.max(size, end)} bytes announced`);
  if (pageSize !== 4096 && pageSize !== 2 * 1024 * 1024) refuse(`page size ${pageSize} is not supported`);
}

function deviceDescription(device: Device): Record<string, unknown> {
  const c = device.constraints;
  return { name: device.name, kind: device.kind, maxSegmentSize: c.maxSegmentSize, maxSegments: c.maxSegments, segmentAlignment: c.segmentAlignment, pageSize: c.pageSize };
}

/** Drops prefetched answers nobody consumed, undoing them at the exporter. */
function dropPrefetched(priv: ImportedPriv): void {
  const p = priv.prefetched;
  if (!p) return;
  priv.prefetched = undefined;
  if (p.reply) {
    closeAll(p.reply.fds);
    const map = p.reply.msg.body.map;
    if (typeof map === 'number') priv.channel.conn.sendAndForget(MsgType.UNMAP, { map });
  }
  priv.channel.conn.sendAndForget(MsgType.DETACH, { attachment: p.attachment });
}

const importOps: DmaBufOps<ImportedPriv> = {
  async attach(buf, device, attachment) {
    const { channel, handle } = buf.priv;
    const pre = buf.priv.prefetched;
    if (pre && pre.device === device) {
      // Attached along with the HELLO: nothing to ask.
      attachment.priv = pre.attachment;
      return;
    }
    const c = device.constraints;
    const reply = await request('attach', channel, MsgType.ATTACH, {
      buffer: handle,
      device: { name: device.name, kind: device.kind, maxSegmentSize: c.maxSegmentSize, maxSegments: c.maxSegments, segmentAlignment: c.segmentAlignment, pageSize: c.pageSize },
    });
    closeAll(reply.fds);
    attachment.priv = field.uint(reply.msg.body, 'attachment', 0xffffffff);
  },

  async detach(buf, attachment) {
    const { channel } = buf.priv;
    if (channel.conn.closed) return; // the exporter is gone: nothing to undo there
    try {
      const reply = await request('detach', channel, MsgType.DETACH, { attachment: attachment.priv });
      closeAll(reply.fds);
    } catch (err) {
      if (!DmaBufError.is(err, 'EPIPE')) throw err;
    }
  },

  async mapDmaBuf(attachment: DmaBufAttachment<ImportedPriv>, direction: DmaDirection, ctx: OpContext): Promise<SgTable> {
    const buf = attachment.dmabuf;
    const { channel } = buf.priv;
    const undo = (r: Reply): void => {
      closeAll(r.fds);
      const map = r.msg.body.map;
      if (typeof map === 'number') channel.conn.sendAndForget(MsgType.UNMAP, { map });
    };
    let reply: Reply;
    const pre = buf.priv.prefetched;
    if (pre && pre.reply && pre.attachment === attachment.priv && pre.direction === direction) {
      // Mapped along with the HELLO: the answer is here already.
      reply = pre.reply;
      buf.priv.prefetched = undefined;
    } else try {
      reply = await request('map', channel, MsgType.MAP, { attachment: attachment.priv, direction }, { signal: ctx.signal, onLateReply: undo });
    } catch (err) {
      // The exporter mapped, but its answer lost the memfd (this process is out of
      // descriptors): undo the map there, so that it does not stall migrations and seals.
      const lost = lostReply(err);
      if (lost && lost.type === MsgType.REPLY) undo({ msg: lost, fds: [] });
      throw err;
    }
    let memory: RemoteMemory | undefined;
    let mapping: DeviceMapping | undefined;
    try {
      const body = reply.msg.body;
      if (reply.fds.length !== 1) throw new DmaBufError('EPROTO', `protocol: a map reply must carry exactly one descriptor, got ${reply.fds.length}`, { op: 'map' });
      const mapId = field.uint(body, 'map', 0xffffffff);
      const mem = body.memory;
      if (typeof mem !== 'object' || mem === null) throw new DmaBufError('EPROTO', 'protocol: field "memory" must be an object', { op: 'map' });
      const m = mem as Record<string, unknown>;
      const size = field.uint(m, 'size');
      const pageSize = field.uint(m, 'pageSize');
      const writeSealed = field.bool(m, 'writeSealed');
      const access = field.oneOf(body, 'access', ['read', 'write'] as const);
      const segments = fromRuns(body.segments, buf.size, attachment.device.constraints.maxSegments);
      const end = segments.length ? segments[segments.length - 1]!.offset + segments[segments.length - 1]!.length : 0;
      verifyMemory(reply.fds[0]!, size, pageSize, buf.readOnly || writeSealed, end);
      memory = new RemoteMemory(reply.fds[0]!, size, pageSize, writeSealed);
      reply.fds.length = 0;
      mapping = await attachment.device.mapMemory({ memory, access: access === 'write' && !writeSealed ? 'write' : 'read', signal: ctx.signal });
      memory.closeFd();
      const sgt = new SgTable(segments.map(({ offset, length }) => ({
        offset,
        length,
        ...(mapping!.address !== undefined ? { address: mapping!.address + BigInt(offset) } : {}),
        ...(mapping!.view ? { view: mapping!.view(offset, length) } : {}),
      })));
      buf.priv.maps.set(sgt, { mapping, memory, map: mapId });
      return sgt;
    } catch (err) {
      mapping?.release();
      memory?.invalidate();
      undo(reply);
      throw err;
    }
  },

  async unmapDmaBuf(attachment: DmaBufAttachment<ImportedPriv>, sgt: SgTable) {
    const priv = attachment.dmabuf.priv;
    const entry = priv.maps.get(sgt);
    if (!entry) return;
    priv.maps.delete(sgt);
    // Detach the views and unmap here first, then tell the exporter (a migration or a seal
    // waiting for this unmap may then proceed, with no mapping of ours left behind).
    entry.mapping.release();
    entry.memory.invalidate();
    if (priv.channel.conn.closed) return;
    try {
      const reply = await request('unmap', priv.channel, MsgType.UNMAP, { map: entry.map });
      closeAll(reply.fds);
    } catch (err) {
      if (!DmaBufError.is(err, 'EPIPE')) throw err;
    }
  },

  release(buf) {
    dropPrefetched(buf.priv);
    const { channel, handle } = buf.priv;
    if (!channel.conn.closed) channel.conn.send(MsgType.PUT, 0, { buffer: handle }).catch(() => {});
  },
};

/** Tokens of this thread's channels to threads of process `pid`. */
function tokensFor(pid: number): string[] {
  return [...channels.values()].filter((ch) => ch.pid === pid && !ch.conn.closed).map((ch) => ch.token);
}

/** Sends the HELLO into the file, retrying while the exporter's queue is full. */
async function sendHello(fd: number, data: Buffer, channelEnd: number, deadline: number, signal: AbortSignal | undefined): Promise<void> {
  const c = native.constants;
  for (let delay = 1; ; delay = Math.min(delay * 2, 50)) {
    if (signal?.aborted) throw new DmaBufError('EINTR', 'get: interrupted by an aborted signal', { op: 'get', cause: signal.reason });
    try {
      native.sendmsg(fd, data, [channelEnd], c.MSG_DONTWAIT);
      return;
    } catch (err) {
      if (DmaBufError.is(err, 'EPIPE') || DmaBufError.is(err, 'ECONNRESET') || DmaBufError.is(err, 'ENOTCONN') || DmaBufError.is(err, 'ECONNREFUSED')) {
        if (DmaBufError.is(err, 'EPIPE') && shutDownByHolder(fd)) throw holderShutDown(fd, err);
        throw new DmaBufError('EPIPE', `get: descriptor ${fd}: nobody holds the other end of this socket; if it is a dma-buf, its exporter is gone`, { op: 'get', cause: err });
      }
      if (!DmaBufError.is(err, 'EAGAIN') && !DmaBufError.is(err, 'ENOBUFS')) throw err;
      if (Date.now() > deadline) throw new DmaBufError('EINVAL', `get: descriptor ${fd} is a socket whose peer does not read: not a dma-buf (or its exporter is stuck)`, { op: 'get' });
      await sleep(delay);
    }
  }
}

function checkWelcome(body: Record<string, unknown>): { handle: number; size: number; flags: number; name: string; exporter: string; sealed: boolean; pid: number; token: string; reused: boolean } {
  const flags = field.uint(body, 'flags', 0xffffffff);
  const acc = flags & 3;
  if ((acc !== O_RDONLY && acc !== O_RDWR) || (flags & ~(3 | O_CLOEXEC)) !== 0) {
    throw new DmaBufError('EPROTO', 'protocol: bad flags in the buffer description', { op: 'get' });
  }
  const size = field.uint(body, 'size');
  if (size === 0) throw new DmaBufError('EPROTO', 'protocol: a buffer of size 0', { op: 'get' });
  const token = field.str(body, 'token', 64);
  if (!/^[0-9a-f]{32}$/.test(token)) throw new DmaBufError('EPROTO', 'protocol: bad channel token', { op: 'get' });
  return {
    handle: field.uint(body, 'buffer', 0xffffffff),
    size,
    flags,
    name: field.str(body, 'name', 255),
    exporter: field.str(body, 'exporter', 255),
    sealed: field.bool(body, 'sealed'),
    pid: field.uint(body, 'pid', 0x7fffffff),
    token,
    reused: field.bool(body, 'reused'),
  };
}

/** The handshake; see the module description. */
async function handshake(fd: number, key: string, options: GetOptions, peerPid: number, prefetch?: Prefetch): Promise<DmaBuf> {
  const op = 'get';
  const timeout = options.timeout ?? DEFAULT_HANDSHAKE_TIMEOUT;
  if (!Number.isFinite(timeout) || timeout < 0) throw new DmaBufError('EINVAL', `${op}: timeout must be a non-negative number of milliseconds`, { op });
  const signal = options.signal;
  const deadline = Date.now() + timeout;
  const c = native.constants;
  const [mine, theirs] = native.socketpair(c.SOCK_SEQPACKET, false);
  let conn: Connection | null = null;
  let welcome: Message | null = null;
  let welcomeFds: number[] = [];
  const onMessage = (_m: Message, fds: number[]): void => closeAll(fds);
  let registeredToken: string | null = null;
  const onClose = (): void => {
    if (registeredToken !== null) channels.delete(registeredToken);
  };
  try {
    const helloId = 1;
    try {
      const hello: Record<string, unknown> = { versions: [1], pid: process.pid, tokens: tokensFor(peerPid) };
      if (prefetch) hello.prefetch = { device: deviceDescription(prefetch.device), direction: prefetch.direction };
      await sendHello(fd, encode(MsgType.HELLO, helloId, hello), theirs, deadline, signal);
    } finally {
      native.close(theirs);
    }
    conn = new Connection(mine, { onMessage, onClose });
    const answer = conn.awaitReply(MsgType.HELLO, helloId);
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DmaBufError('EINVAL', `${op}: descriptor ${fd} is a socket that did not answer the dma-buf handshake within ${timeout} ms: not a dma-buf (or its exporter's event loop is blocked)`, { op })), timeout);
    });
    const aborted = new Promise<never>((_, reject) => {
      if (!signal) return;
      const fail = (): void => reject(new DmaBufError('EINTR', `${op}: interrupted by an aborted signal`, { op, cause: signal.reason }));
      if (signal.aborted) fail(); else signal.addEventListener('abort', fail, { once: true });
    });
    try {
      const reply = await Promise.race([answer, timedOut, aborted]);
      welcome = reply.msg;
      welcomeFds = reply.fds;
    } catch (err) {
      answer.catch(() => {});
      if (DmaBufError.is(err, 'EPIPE')) {
        throw new DmaBufError('EINVAL', `${op}: descriptor ${fd} is a socket that closed the handshake: not a dma-buf (or its exporter is gone)`, { op, cause: err });
      }
      if (DmaBufError.is(err, 'EPROTO')) {
        throw new DmaBufError('EINVAL', `${op}: descriptor ${fd} is a socket that failed the dma-buf handshake: ${err.message}`, { op, cause: err });
      }
      throw err;
    } finally {
      clearTimeout(timer);
    }
    let w: ReturnType<typeof checkWelcome>;
    try {
      w = checkWelcome(welcome.body);
    } catch (err) {
      throw new DmaBufError('EINVAL', `${op}: descriptor ${fd} is a socket that failed the dma-buf handshake: ${(err as Error).message}`, { op, cause: err });
    }
    let channel: ImportChannel;
    if (w.reused) {
      const existing = channels.get(w.token);
      conn.close();
      conn = null;
      if (!existing || existing.conn.closed) throw new DmaBufError('EPIPE', `${op}: the exporter reused a channel that is closed`, { op });
      channel = existing;
    } else {
      const owned = conn;
      channel = { token: w.token, pid: w.pid, conn: owned };
      const ch = channel;
      channels.set(w.token, ch);
      registeredToken = w.token;
      conn = null;
    }
    const prefetched = takePrefetched(welcome.body, welcomeFds, prefetch);
    welcomeFds = [];
    const file = new ImportedFile(fd, key);
    try {
      return DmaBuf[kCreateImported]<ImportedPriv>({
        ops: importOps,
        size: w.size,
        priv: { channel, handle: w.handle, pid: w.pid, maps: new Map(), prefetched },
        flags: w.flags,
        name: w.name,
        exporter: w.exporter,
      }, file, w.sealed) as unknown as DmaBuf;
    } catch (err) {
      file.close();
      throw err;
    }
  } finally {
    closeAll(welcomeFds);
    conn?.close();
  }
}

/** An attach and a map to make along with the handshake. */
interface Prefetch {
  device: Device;
  direction: DmaDirection;
}

/** The exporter's prefetched attach and map from a welcome, when it made them. */
function takePrefetched(body: Record<string, unknown>, fds: number[], prefetch: Prefetch | undefined): ImportedPriv['prefetched'] {
  const p = body.prefetch;
  if (!prefetch || typeof p !== 'object' || p === null) {
    closeAll(fds);
    return undefined;
  }
  const b = p as Record<string, unknown>;
  const attachment = field.uint(b, 'attachment', 0xffffffff);
  return { device: prefetch.device, direction: prefetch.direction, attachment, reply: { msg: { type: MsgType.REPLY, id: 0, body: b }, fds: [...fds] } };
}

/**
 * Imports the buffer of `fd` from its exporter in another thread or process. Concurrent gets
 * of the same file in this thread share one handshake and return the same object.
 *
 * @throws {DmaBufError} `EINVAL` for a socket that does not answer the handshake as a
 *   dma-buf; `EPIPE` when the exporter is gone; `EINTR` when `signal` aborts.
 */
export async function importBuffer(fd: number, key: string, options: GetOptions, lookup: () => DmaBuf | undefined, prefetch?: Prefetch): Promise<DmaBuf> {
  for (;;) {
    const pending = inFlight.get(key);
    if (!pending) break;
    try {
      await pending;
    } catch {
      // the other get failed; try our own
    }
    const found = lookup();
    if (found) {
      found[kReacquire](fd);
      return found;
    }
  }
  let peerPid = 0;
  try {
    peerPid = native.peerCred(fd).pid;
  } catch {
    // no credentials: no channel to share
  }
  const first = firstContact.get(peerPid);
  if (first && tokensFor(peerPid).length === 0) {
    await first.catch(() => {});
  }
  const p = handshake(fd, key, options ?? {}, peerPid, prefetch);
  if (peerPid > 0 && tokensFor(peerPid).length === 0 && !firstContact.has(peerPid)) {
    firstContact.set(peerPid, p);
    p.then(() => firstContact.delete(peerPid), () => firstContact.delete(peerPid));
  }
  inFlight.set(key, p);
  try {
    return await p;
  } finally {
    inFlight.delete(key);
  }
}

/** This thread's channels to exporters (for introspection and tests). */
export function importChannels(): { token: string; pid: number; closed: boolean }[] {
  return [...channels.values()].map((ch) => ({ token: ch.token, pid: ch.pid, closed: ch.conn.closed }));
}
