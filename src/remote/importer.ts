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
import { DmaBuf, O_RDONLY, O_RDWR, O_CLOEXEC, attachMapped, kCreateImported, kReacquire, type GetOptions } from '../core/dma-buf.js';
import { kAdoptMapped } from '../core/internal.js';
import type { DmaBufAttachment } from '../core/attachment.js';
import type { CpuAccess, CpuAccessContext, DmaBufOps, OpContext } from '../core/ops.js';
import { Device, type DeviceMapping } from '../core/device.js';
import { isThenable } from '../core/now.js';
import type { MemoryObject } from '../core/memory.js';
import { DIRECTIONS, isWritableDirection, type DmaDirection } from '../core/direction.js';
import type { ForeignDescriptor, Prefetch } from '../core/hooks.js';
import { DmaBufError } from '../core/errors.js';
import { SgTable } from '../core/sg-table.js';
import { native, own, closeOwned } from '../native/binding.js';
import { Connection, closeAll, lostReply, type Reply, type RequestOptions } from './connection.js';
import { RemoteResv, type ResvLink } from './remote-resv.js';
import { ImportedFile } from '../transport/imported-file.js';
import { fileKey } from '../transport/buffer-file.js';
import { shutDownByHolder, holderShutDown } from '../transport/file-liveness.js';
import { lookup as registryLookup } from '../core/registry.js';
import { MsgType, encode, field, fromRuns, type Message } from './protocol.js';

/** Default time the exporter has to answer a HELLO, in milliseconds. */
export const DEFAULT_HANDSHAKE_TIMEOUT = 2000;

/** This thread's channel to one exporter thread. */
interface ImportChannel {
  token: string;
  /** The exporter's process id. */
  pid: number;
  conn: Connection;
  /** The reservation objects' link to the exporter, made once per channel. */
  link?: ResvLink;
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
   * An attach and a map the exporter made along with the HELLO (see `getMapped`) or along
   * with a hand-off, waiting for the attach and map calls that consume them. `device` is the
   * device they were made for, or null when the exporter made them for any CPU-like device
   * (a hand-off): then any device whose constraints the table meets may take them.
   */
  prefetched?: Prefetched | undefined;
  /** The exporter's grants this object consumed (HELLOs and hand-offs); its PUT returns them. */
  grants: number;
  /** Whether the exporter has CPU-access ops (`beginCpuAccess`, `endCpuAccess`) to run. */
  cpuAccess: boolean;
}

/** The importer's buffer object for a description the exporter gave (its file: a `dup` of `fd`). */
function createImported(fd: number, key: string, w: ReturnType<typeof checkWelcome>, channel: ImportChannel, prefetched: Prefetched | undefined, take = false): DmaBuf {
  const file = new ImportedFile(fd, key, take);
  try {
    return DmaBuf[kCreateImported]<ImportedPriv>({
      ops: importOps,
      size: w.size,
      priv: { channel, handle: w.handle, pid: w.pid, maps: new Map(), prefetched, grants: 1, cpuAccess: w.cpuAccess },
      flags: w.flags,
      name: w.name,
      exporter: w.exporter,
      resv: new RemoteResv(channel.link ??= resvLink(channel), w.handle),
    }, file, w.sealed) as unknown as DmaBuf;
  } catch (err) {
    file.close();
    throw err;
  }
}

/** An attach and a map made ahead; see {@link ImportedPriv.prefetched}. */
interface Prefetched {
  device: Device | null;
  direction: DmaDirection;
  attachment: number;
  reply: Reply | null;
}

/**
 * Tells the exporter something it does not answer (id 0): in order, never waiting. Pending
 * ones leave together before the next request or at the end of the event loop's turn (see
 * `Connection.notify`).
 */
function notify(channel: ImportChannel, type: (typeof MsgType)[keyof typeof MsgType], body: Record<string, unknown>): void {
  channel.conn.notify(type, body);
}

/** Whether a table made ahead meets `device`'s constraints (so the device may take it). */
function tableFits(device: Device, body: Record<string, unknown>): boolean {
  const c = device.constraints;
  const mem = body.memory as Record<string, unknown> | undefined;
  if (typeof mem !== 'object' || mem === null || typeof mem.pageSize !== 'number' || mem.pageSize < c.pageSize) return false;
  if (!Array.isArray(body.segments)) return false;
  let count = 0;
  for (const run of body.segments as unknown[]) {
    if (!Array.isArray(run) || run.length !== 3) return false;
    const [offset, length, n] = run as number[];
    if (typeof offset !== 'number' || typeof length !== 'number' || typeof n !== 'number') return false;
    // As the exporter plans them: every segment starts on the device's alignment and pages.
    const align = Math.max(c.segmentAlignment, c.pageSize);
    if (length > c.maxSegmentSize || offset % align !== 0) return false;
    if (n > 1 && length % align !== 0) return false;
    count += n;
  }
  return count <= c.maxSegments;
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
async function request(op: string, channel: ImportChannel, type: (typeof MsgType)[keyof typeof MsgType], body: Record<string, unknown>, options: RequestOptions = {}): Promise<Reply> {
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
  const [mode, fileSize, seals] = native.memoryInfo(fd);
  if ((mode & c.S_IFMT) !== c.S_IFREG) refuse('it is not a memory file');
  // Only memfds (shmem, hugetlbfs) have seals: F_GET_SEALS fails on any other file.
  if (seals < 0) refuse('it is not a memfd');
  if ((seals & (c.F_SEAL_SHRINK | c.F_SEAL_GROW)) !== (c.F_SEAL_SHRINK | c.F_SEAL_GROW)) {
    refuse('it is not sealed against shrinking and growing, so a peer could truncate it under our mapping');
  }
  if (mustBeWriteSealed && (seals & c.F_SEAL_WRITE) === 0) refuse('the buffer is read-only but its storage is not sealed against writes');
  if (fileSize < size || size < end) refuse(`its size ${fileSize} does not cover the ${Math.max(size, end)} bytes announced`);
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
  undoPrefetched(priv.channel, p);
}

function undoPrefetched(channel: ImportChannel, p: Prefetched): void {
  if (p.reply) undoMap(channel, p.reply);
  notify(channel, MsgType.DETACH, { attachment: p.attachment });
}

/** An exporter's map as this process holds it: the table, its mapping and memory, the map's id. */
interface ImportedMap {
  sgt: SgTable;
  mapping: DeviceMapping;
  memory: RemoteMemory;
  /** The exporter's id of the map on the channel. */
  map: number;
}

/** Whether an attach made ahead serves `device`: made for it, or for any device its table fits. */
function deviceFits(pre: Prefetched, device: Device): boolean {
  return pre.device === device || (pre.device === null && pre.reply !== null && tableFits(device, pre.reply.msg.body));
}

/** Whether a map made ahead serves a map in `direction` (its access allows it). */
function directionFits(pre: Prefetched, direction: DmaDirection): boolean {
  return pre.direction === direction || pre.reply?.msg.body.access === 'write' || !isWritableDirection(direction);
}

/** Gives the exporter's map of a reply back: its memfd closed, an UNMAP sent. */
function undoMap(channel: ImportChannel, r: Reply): void {
  closeAll(r.fds);
  const map = r.msg.body.map;
  if (typeof map === 'number') notify(channel, MsgType.UNMAP, { map });
}

/**
 * Turns the exporter's answer to a map (or a map made ahead) into a table of `device`: checks
 * the answer against the device's constraints, verifies the memfd (sealed, large enough)
 * before mapping it, maps it, closes it. Synchronous when the device maps synchronously (a
 * CPU). Takes the reply's descriptor over; on failure undoes what it made here (the caller
 * gives the exporter's map back).
 */
function mapReply(buf: DmaBuf<ImportedPriv>, device: Device, direction: DmaDirection, reply: Reply, signal: AbortSignal | undefined): ImportedMap | Promise<ImportedMap> {
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
  const c = device.constraints;
  if (!tableFits(device, body)) {
    throw new DmaBufError('EPROTO', `map: the exporter's table breaks the constraints of device "${device.name}" (segments must start on ${Math.max(c.segmentAlignment, c.pageSize)}-byte boundaries, be at most ${c.maxSegmentSize} bytes and at most ${c.maxSegments} of them, on pages of at least ${c.pageSize} bytes)`, { op: 'map' });
  }
  const segments = fromRuns(body.segments, buf.size, c.maxSegments);
  const last = segments[segments.length - 1];
  verifyMemory(reply.fds[0]!, size, pageSize, buf.readOnly || writeSealed, last ? last.offset + last.length : 0);
  const memory = new RemoteMemory(reply.fds[0]!, size, pageSize, writeSealed);
  reply.fds.length = 0;
  const writable = access === 'write' && !writeSealed && isWritableDirection(direction);
  const made = (mapping: DeviceMapping): ImportedMap => {
    try {
      memory.closeFd();
      const entries = new Array<{ offset: number; length: number; address?: bigint; view?: Uint8Array }>(segments.length);
      for (let i = 0; i < segments.length; i++) {
        const { offset, length } = segments[i]!;
        const entry: { offset: number; length: number; address?: bigint; view?: Uint8Array } = { offset, length };
        if (mapping.address !== undefined) entry.address = mapping.address + BigInt(offset);
        if (mapping.view) entry.view = mapping.view(offset, length);
        entries[i] = entry;
      }
      return { sgt: new SgTable(entries), mapping, memory, map: mapId };
    } catch (err) {
      mapping.release();
      memory.invalidate();
      throw err;
    }
  };
  let mapping: ReturnType<Device['mapMemory']>;
  try {
    mapping = device.mapMemory({ memory, access: writable ? 'write' : 'read', signal });
  } catch (err) {
    memory.invalidate();
    throw err;
  }
  if (!isThenable(mapping)) return made(mapping);
  return mapping.then(made, (err: unknown) => {
    memory.invalidate();
    throw err;
  });
}

const importOps: DmaBufOps<ImportedPriv> = {
  async attach(buf, device, attachment) {
    const { channel, handle } = buf.priv;
    const pre = buf.priv.prefetched;
    if (pre && deviceFits(pre, device)) {
      // Attached along with the HELLO or the hand-off: nothing to ask.
      pre.device = device;
      attachment.priv = pre.attachment;
      return;
    }
    // Made for another device: give it back now rather than hold the exporter's map.
    if (pre) dropPrefetched(buf.priv);
    const c = device.constraints;
    const reply = await request('attach', channel, MsgType.ATTACH, {
      buffer: handle,
      device: { name: device.name, kind: device.kind, maxSegmentSize: c.maxSegmentSize, maxSegments: c.maxSegments, segmentAlignment: c.segmentAlignment, pageSize: c.pageSize },
    });
    closeAll(reply.fds);
    attachment.priv = field.uint(reply.msg.body, 'attachment', 0xffffffff);
  },

  detach(buf, attachment) {
    // Nothing to wait for: the exporter detaches in order with everything else on the channel.
    const pre = buf.priv.prefetched;
    if (pre && pre.attachment === attachment.priv) dropPrefetched(buf.priv);
    else notify(buf.priv.channel, MsgType.DETACH, { attachment: attachment.priv });
  },

  async mapDmaBuf(attachment: DmaBufAttachment<ImportedPriv>, direction: DmaDirection, ctx: OpContext): Promise<SgTable> {
    const buf = attachment.dmabuf;
    const { channel } = buf.priv;
    let reply: Reply;
    const pre = buf.priv.prefetched;
    if (pre && pre.reply && pre.attachment === attachment.priv && directionFits(pre, direction)) {
      // Mapped along with the HELLO: the answer is here already.
      reply = pre.reply;
      buf.priv.prefetched = undefined;
    } else try {
      reply = await request('map', channel, MsgType.MAP, { attachment: attachment.priv, direction }, { signal: ctx.signal, onLateReply: (r) => undoMap(channel, r) });
    } catch (err) {
      // The exporter mapped, but its answer lost the memfd (this process is out of
      // descriptors): undo the map there, so that it does not stall migrations and seals.
      const lost = lostReply(err);
      if (lost && lost.type === MsgType.REPLY) undoMap(channel, { msg: lost, fds: [] });
      throw err;
    }
    let made: ImportedMap;
    try {
      made = await mapReply(buf, attachment.device, direction, reply, ctx.signal);
    } catch (err) {
      undoMap(channel, reply);
      throw err;
    }
    buf.priv.maps.set(made.sgt, made);
    return made.sgt;
  },

  unmapDmaBuf(attachment: DmaBufAttachment<ImportedPriv>, sgt: SgTable) {
    const priv = attachment.dmabuf.priv;
    const entry = priv.maps.get(sgt);
    if (!entry) return;
    priv.maps.delete(sgt);
    // Detach the views and unmap here first, then tell the exporter (a migration or a seal
    // waiting for this unmap may then proceed, with no mapping of ours left behind).
    entry.mapping.release();
    entry.memory.invalidate();
    notify(priv.channel, MsgType.UNMAP, { map: entry.map });
  },

  async beginCpuAccess(buf, access, ctx) {
    await cpuAccess(buf, access, 'begin', ctx);
  },

  async endCpuAccess(buf, access, ctx) {
    await cpuAccess(buf, access, 'end', ctx);
  },

  release(buf) {
    dropPrefetched(buf.priv);
    notify(buf.priv.channel, MsgType.PUT, { buffer: buf.priv.handle, grants: buf.priv.grants });
  },
};

/**
 * Runs the exporter's CPU-access op in its process (a CPU_ACCESS request), when it has one;
 * nothing to do otherwise (the system heap's memory is always coherent).
 */
async function cpuAccess(buf: DmaBuf<ImportedPriv>, access: CpuAccess, phase: 'begin' | 'end', ctx: CpuAccessContext): Promise<void> {
  const { channel, handle, cpuAccess: has } = buf.priv;
  if (!has) return;
  const reply = await request(`${phase}CpuAccess`, channel, MsgType.CPU_ACCESS, { buffer: handle, access, phase, offset: ctx.offset, length: ctx.length }, {
    signal: ctx.signal,
    onAbort: (id) => notify(channel, MsgType.CANCEL, { request: id }),
  });
  closeAll(reply.fds);
}

/** The link of an imported buffer's reservation object to its exporter. */
function resvLink(channel: ImportChannel): ResvLink {
  return {
    request: (op, type, body, options) => request(op, channel, type, body, options),
    notify: (type, body) => notify(channel, type, body),
    live: (op) => live(op, channel),
  };
}

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

/** The buffer's description of a HELLO's answer (with `offer`: of a hand-off's offer), checked. */
function checkWelcome(body: Record<string, unknown>, offer = false): { handle: number; size: number; flags: number; name: string; exporter: string; sealed: boolean; cpuAccess: boolean; pid: number; token: string; reused: boolean } {
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
    cpuAccess: body.cpuAccess === undefined ? false : field.bool(body, 'cpuAccess'),
    pid: field.uint(body, 'pid', 0x7fffffff),
    token,
    // A hand-off's offer has no "reused": its channel is either carried or already known.
    reused: offer ? false : field.bool(body, 'reused'),
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
    return createImported(fd, key, w, channel, prefetched);
  } finally {
    closeAll(welcomeFds);
    conn?.close();
  }
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
export function importForeign(desc: ForeignDescriptor, options: GetOptions, prefetch: Prefetch | undefined): Promise<DmaBuf> | undefined {
  const c = native.constants;
  if ((desc.stat.mode & c.S_IFMT) !== c.S_IFSOCK) return undefined;
  const info = native.socketInfo(desc.fd);
  if (info.domain !== c.AF_UNIX || info.type !== c.SOCK_SEQPACKET) return undefined;
  return importBuffer(desc.fd, desc.key, options, desc.lookup, prefetch);
}

async function importBuffer(fd: number, key: string, options: GetOptions, lookup: () => DmaBuf | undefined, prefetch: Prefetch | undefined): Promise<DmaBuf> {
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

// -----------------------------------------------------------------------------------------
// One-message hand-offs, the receiver's side (the exporter's side is handoff.ts).

/** What a hand-off message delivered. */
export interface HandoffDelivery {
  /**
   * The buffer's file: {@link adoptHandoff} takes it over (the buffer keeps it, or it is
   * closed); {@link declineHandoff} leaves it to the caller.
   */
  readonly file: number;
  /** The offer's description, as received (untrusted). */
  readonly body: unknown;
  /** The offer's other descriptors, in the offer's order; {@link adoptHandoff} takes them over. */
  readonly fds: readonly number[];
  /** The sender's process when the transport knows it (0 when it does not). */
  readonly senderPid: number;
  /** The file's `dev:ino` when the transport already read it (saves an `fstat`). */
  readonly key?: string;
}

/** The attach and map a receiver wants with the buffer. */
export interface HandoffMap {
  readonly device: Device;
  readonly direction: DmaDirection;
}

/** What {@link adoptHandoff} returns: the buffer, and its attachment and table when asked. */
export interface AdoptedHandoff {
  buffer: DmaBuf;
  attachment?: DmaBufAttachment;
  sgt?: SgTable;
}

/** `got` with the sender's `meta` added (the object is the receive's own, not shared). */
export function withMeta<T extends object>(got: T, meta: unknown): T & { meta: unknown } {
  const r = got as T & { meta: unknown };
  r.meta = meta;
  return r;
}

function lookupLive(key: string): DmaBuf | undefined {
  const found = registryLookup(key);
  return found instanceof DmaBuf && !found.released ? found : undefined;
}

/** Whether a buffer object of this thread is an import of a buffer exported elsewhere. */
export function isImported(buf: DmaBuf): boolean {
  return buf.ops === (importOps as DmaBufOps<unknown>);
}

/** The parts of an offer, checked; the channel is this thread's (adopted or known). */
interface CheckedOffer {
  w: ReturnType<typeof checkWelcome>;
  channel: ImportChannel;
  /** The attach and map made ahead, until something takes them over. */
  pre: Prefetched | undefined;
}

/**
 * Checks an offer and takes over its descriptors. Returns null (every descriptor closed)
 * when the offer cannot be used: the receiver then imports through the buffer's file.
 */
function checkOffer(d: HandoffDelivery): CheckedOffer | null {
  const fds = [...d.fds];
  try {
    if (typeof d.body !== 'object' || d.body === null) return null;
    const body = d.body as Record<string, unknown>;
    const w = checkWelcome(body, true);
    const map = body.map;
    const hasMap = typeof map === 'object' && map !== null;
    const hasChannel = body.channel === true;
    if (fds.length !== (hasMap ? 1 : 0) + (hasChannel ? 1 : 0)) return null;
    // The file must be one the process named by the offer created (its exporter), and the
    // message must come from that process when the transport can tell.
    // A thread of this process vouches for itself (it could reach anything here anyway); a
    // message from another process proves its file with the socket's credentials.
    if (d.senderPid !== 0 && d.senderPid !== w.pid) return null;
    if (d.senderPid !== process.pid && native.peerPid(d.file) !== w.pid) return null;
    let channel: ImportChannel | undefined;
    if (hasChannel) {
      const fd = fds[hasMap ? 1 : 0]!;
      const c = native.constants;
      const info = native.socketInfo(fd);
      if (info.domain !== c.AF_UNIX || info.type !== c.SOCK_SEQPACKET || native.peerPid(fd) !== w.pid) return null;
      if (channels.has(w.token)) return null;
      const token = w.token;
      channel = { token, pid: w.pid, conn: new Connection(fd, { onMessage: (_m, extra) => closeAll(extra), onClose: () => channels.delete(token) }) };
      fds.splice(hasMap ? 1 : 0, 1);
      channels.set(token, channel);
    } else {
      channel = channels.get(w.token);
      if (!channel || channel.conn.closed || channel.pid !== w.pid) return null;
    }
    let pre: Prefetched | undefined;
    if (hasMap) {
      const m = map as Record<string, unknown>;
      const attachment = field.uint(m, 'attachment', 0xffffffff);
      const access = field.oneOf(m, 'access', ['read', 'write'] as const);
      pre = { device: null, direction: access === 'write' ? 'bidirectional' : 'to-device', attachment, reply: { msg: { type: MsgType.REPLY, id: 0, body: m }, fds: [fds.shift()!] } };
    }
    return { w, channel, pre };
  } catch {
    return null;
  } finally {
    closeAll(fds);
  }
}

/**
 * Imports the buffer a hand-off carried, and attaches and maps it when `options.map` asks:
 * with the exporter's offer (its description, channel and map made ahead) and no request to
 * the exporter; the attach and map are made ahead only for a device whose constraints the
 * offered table meets and a direction its access allows, else they are given back and asked
 * for. An offer this thread cannot use (no channel, a sender that is not the exporter) falls
 * back to `DmaBuf.get` of the file, which reaches the exporter through the file itself.
 *
 * The result comes in this call when it can (the usual case: a buffer new to this thread
 * whose map made ahead a CPU device takes), else as a promise. Takes `d.file` and `d.fds`
 * over in every case, also when it throws.
 *
 * @throws {DmaBufError} what `DmaBuf.get`, `attach` and `map` throw (synchronously, or by
 *   rejecting the promise).
 */
export function adoptHandoff(d: HandoffDelivery, options: { map?: HandoffMap | undefined; signal?: AbortSignal | undefined } = {}): AdoptedHandoff | Promise<AdoptedHandoff> {
  const want = options.map;
  const offer = checkOffer(d);
  if (offer && want) {
    // The usual case: a buffer new to this thread, with a map made ahead that the device
    // may take. Adopted, attached and mapped in one go, with no promise in between.
    let took = false;
    try {
      const now = adoptMappedNow(d, offer, want, () => { took = true; });
      if (now) return now;
    } catch (err) {
      if (!took) closeAll([d.file]);
      throw err;
    }
  }
  return adoptSlowly(d, offer, options);
}

/** The rest of {@link adoptHandoff}: through the buffer's file, or an import already here. */
async function adoptSlowly(d: HandoffDelivery, offer: CheckedOffer | null, options: { map?: HandoffMap | undefined; signal?: AbortSignal | undefined }): Promise<AdoptedHandoff> {
  let file = d.file;
  try {
    const want = options.map;
    const buffer = await adoptFile(d, offer, options.signal, () => { file = -1; });
    if (!want) {
      // Nobody asked for the map made ahead: give it back now rather than stall the exporter.
      if (isImported(buffer)) dropPrefetched(buffer.priv as ImportedPriv);
      return { buffer };
    }
    return await attachMapped(buffer, want.device, want.direction, options.signal);
  } finally {
    if (file >= 0) closeAll([file]);
  }
}

/**
 * The buffer of a checked offer, attached and mapped with the map made ahead, in one step:
 * when the buffer is new to this thread (no import of it is live or in flight) and the offer
 * carries a map made ahead that `want` may take (its table fits the device, its access the
 * direction). Synchronous when the device maps synchronously (a CPU); else the result comes
 * when its map does. Returns null when any of that does not hold, having consumed nothing;
 * calls `took()` once the buffer took `d.file` over. On failure the buffer is put and the
 * exporter's attach and map are given back.
 */
function adoptMappedNow(d: HandoffDelivery, offer: CheckedOffer, want: HandoffMap, took: () => void): AdoptedHandoff | Promise<AdoptedHandoff> | null {
  const { w, channel, pre } = offer;
  const { device, direction } = want;
  if (!pre?.reply || !(device instanceof Device) || !DIRECTIONS.includes(direction) || direction === 'none') return null;
  if (!deviceFits(pre, device) || !directionFits(pre, direction)) return null;
  const readOnly = (w.flags & 3) === O_RDONLY || w.sealed;
  if (readOnly && isWritableDirection(direction)) return null;
  const key = d.key ?? fileKey(d.file);
  if (inFlight.has(key) || lookupLive(key)) return null;
  offer.pre = undefined;
  let buffer: DmaBuf<ImportedPriv>;
  try {
    buffer = createImported(d.file, key, w, channel, undefined, true) as DmaBuf<ImportedPriv>;
  } catch (err) {
    undoPrefetched(channel, pre);
    throw err;
  }
  took();
  const fail = (err: unknown): never => {
    undoPrefetched(channel, pre);
    buffer.put();
    throw err;
  };
  const adopt = (made: ImportedMap): AdoptedHandoff => {
    let attachment: DmaBufAttachment;
    try {
      attachment = buffer[kAdoptMapped](device, direction, pre.attachment, made.sgt);
    } catch (err) {
      made.mapping.release();
      made.memory.invalidate();
      return fail(err);
    }
    buffer.priv.maps.set(made.sgt, made);
    return { buffer, attachment, sgt: made.sgt };
  };
  let made: ImportedMap | Promise<ImportedMap>;
  try {
    made = mapReply(buffer, device, direction, pre.reply, undefined);
  } catch (err) {
    return fail(err);
  }
  return isThenable(made) ? made.then(adopt, fail) : adopt(made);
}

/** The buffer object of a hand-off; calls `took()` when the object took `d.file` over. */
async function adoptFile(d: HandoffDelivery, offer: CheckedOffer | null, signal: AbortSignal | undefined, took: () => void): Promise<DmaBuf> {
  const getOptions = signal ? { signal } : {};
  let buffer: DmaBuf;
  if (!offer) {
    buffer = await DmaBuf.get(d.file, getOptions);
  } else {
    const { w, channel, pre } = offer;
    const key = d.key ?? fileKey(d.file);
    for (let pending = inFlight.get(key); pending; pending = inFlight.get(key)) await pending.catch(() => {});
    const existing = lookupLive(key);
    if (existing) {
      existing[kReacquire](d.file);
      const priv = existing.priv as ImportedPriv;
      if (isImported(existing) && priv.channel === channel) {
        priv.grants += 1;
        if (pre && !priv.prefetched) priv.prefetched = pre;
        else if (pre) undoPrefetched(channel, pre);
      } else {
        if (pre) undoPrefetched(channel, pre);
        notify(channel, MsgType.PUT, { buffer: w.handle, grants: 1 });
      }
      buffer = existing;
    } else {
      try {
        buffer = createImported(d.file, key, w, channel, pre, true);
        took();
      } catch (err) {
        if (pre) undoPrefetched(channel, pre);
        throw err;
      }
    }
  }
  return buffer;
}

/**
 * Gives back what a hand-off's exporter made ahead when the receiver takes only the raw
 * descriptor: the map and attach are undone and the grant returned; a channel it carried is
 * kept for later hand-offs. Takes over `d.fds`; never throws.
 */
export function declineHandoff(d: HandoffDelivery): void {
  const offer = checkOffer(d);
  if (!offer) return;
  if (offer.pre) undoPrefetched(offer.channel, offer.pre);
  notify(offer.channel, MsgType.PUT, { buffer: offer.w.handle, grants: 1 });
}
