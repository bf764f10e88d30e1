/**
 * The exporter's service: answers importers in other threads and processes.
 *
 * An importer reaches a buffer's exporter only through the buffer's file: it sends a HELLO,
 * with a new channel, into its descriptor of the file; the message arrives at the service
 * end that only the exporter reads. The exporter answers on the channel. Every request on the
 * channel then runs the exporter's real ops in this thread: a remote attachment is an
 * attachment like any other, with a {@link RemoteDevice} carrying the importer's constraints.
 * One channel serves every buffer an importer thread gets from this exporter thread; it knows
 * only the buffers the importer proved it holds (a HELLO through their file).
 *
 * When a channel closes (the importer exited or crashed), the service unmaps and detaches
 * whatever the importer left, as if the importer had.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import type { DmaBuf } from '../core/dma-buf.js';
import type { DmaBufAttachment } from '../core/attachment.js';
import { DmaBufError } from '../core/errors.js';
import { AsyncLock } from '../core/lock.js';
import { andThen, type Now } from '../core/now.js';
import { RemoteDevice, type RemoteMapping } from './remote-device.js';
import { kAttachRemote, kMapNow, kOnRelease } from '../core/internal.js';
import { lookup } from '../core/registry.js';
import { DIRECTIONS, type DmaDirection } from '../core/direction.js';
import type { SgTable } from '../core/sg-table.js';
import { native } from '../native/binding.js';
import { Connection, closeAll } from './connection.js';
import { fileKey } from '../transport/buffer-file.js';
import { MsgType, VERSION, decode, encode, field, toRuns, unbatch, type Message } from './protocol.js';
import { charge, refund } from './limits.js';
import { warnLimited } from './warn.js';
import { ResvService } from './resv-service.js';


/** What a request produced: the REPLY's body and descriptors, and how to undo it. */
export interface Answer {
  body: Record<string, unknown>;
  fds: number[];
  /** The descriptors are the answer's own: closed once sent (or not sent). */
  closeFds?: boolean;
  undo?: () => Promise<void>;
}

interface RemoteAttachment {
  att: DmaBufAttachment;
  device: RemoteDevice;
  /** Serializes maps of this attachment, so that each map's memory is the one recorded. */
  mapLock: AsyncLock;
  maps: Set<number>;
}

/** One importer thread's channel to this exporter thread. */
export class ServiceChannel {
  readonly token: string;
  readonly conn: Connection;
  readonly pid: number;
  readonly buffers = new Map<number, DmaBuf>();
  /** Grants of each buffer not yet consumed by a PUT (see {@link adopt}). */
  readonly grants = new Map<number, number>();
  /** Requests answered on this channel, and notifications (id 0) run: for introspection and tests. */
  requests = 0;
  notifications = 0;
  /** Records read from the channel (a BATCH of notifications is one): for introspection and tests. */
  records = 0;
  readonly attachments = new Map<number, RemoteAttachment>();
  readonly maps = new Map<number, { attachment: number; sgt: SgTable }>();
  #nextId = 1;
  /** Reservation objects and CPU access, made at the first such request. */
  #resv: ResvService | undefined;

  /**
   * Takes ownership of `fd`, the exporter's end of the channel. `pid` is the importer's
   * process when known (a channel this thread created for a hand-off: its own socketpair's
   * credentials would name this process); else it is read from `SO_PEERCRED`.
   */
  constructor(fd: number, pid?: number) {
    if (pid === undefined) {
      try {
        pid = native.peerCred(fd).pid;
      } catch {
        pid = 0; // a peer that is already gone: cleanup follows at the first poll
      }
    }
    // Counted before anything is kept: past the limit the caller closes `fd`.
    charge(pid, 'channels', 'hello');
    this.token = randomBytes(16).toString('hex');
    const charged = pid;
    try {
      this.conn = this.#connect(fd);
    } catch (err) {
      refund(charged, 'channels');
      throw err;
    }
    this.pid = pid;
    channels.set(this.token, this);
  }

  #connect(fd: number): Connection {
    return new Connection(fd, {
      onMessage: (msg, fds) => {
        this.records += 1;
        if (msg.id === 0) {
          // Notifications: nobody waits for them. They run at the end of this turn of the
          // event loop, so that what else this turn read (the consumer's acknowledgement, on
          // another socket) is handled first; a request on this channel runs them first.
          this.#deferred.push([msg, fds]);
          this.#deferTimer ??= setImmediate(() => this.#runDeferred());
          return;
        }
        this.#runDeferred();
        void this.#handle(msg, fds);
      },
      onBadMessage: (err, id, kind) => {
        // An exporter sends no requests, so a reply reaching it means the channel is not an
        // importer's (two crossed ends of one pair, say): close it rather than hold it forever.
        if (kind === 'unexpected-reply') this.conn.close(err);
        else if (id) this.#answerError(id, err);
      },
      onClose: () => {
        this.#runDeferred();
        this.#cleanup();
      },
    });
  }

  /** Notification records read and not run yet (see `#connect`), in order. */
  #deferred: [Message, number[]][] = [];
  #deferTimer: NodeJS.Immediate | null = null;

  /** Runs the deferred notifications, in the order they came. */
  #runDeferred(): void {
    if (this.#deferTimer) {
      clearImmediate(this.#deferTimer);
      this.#deferTimer = null;
    }
    if (this.#deferred.length === 0) return;
    const list = this.#deferred;
    this.#deferred = [];
    for (const [msg, fds] of list) void this.#handle(msg, fds);
  }

  /** Attach and map for a HELLO that asked for them; answers merged into one body. */
  async prefetch(buf: DmaBuf, wanted: unknown): Promise<Answer> {
    if (typeof wanted !== 'object' || wanted === null) throw new DmaBufError('EPROTO', 'protocol: field "prefetch" must be an object', { op: 'protocol' });
    const p = wanted as Record<string, unknown>;
    const device = this.#remoteDevice(p.device);
    const direction = field.oneOf(p, 'direction', DIRECTIONS) as DmaDirection;
    const ahead = await this.mapAhead(buf, device, direction);
    return { ...ahead, body: { prefetch: ahead.body } };
  }

  /**
   * An attach of `device` and a map in `direction` made ahead, for a HELLO that asked for
   * them or for a hand-off: the body of the answer holds the attachment's id and what a MAP
   * answers; undo gives both back. The answer comes in this call when the buffer's lock is
   * free and the exporter attaches and maps synchronously (a system-heap buffer whose storage
   * exists), else as a promise.
   *
   * @throws {DmaBufError} `EPIPE` when the importer went away meanwhile (nothing is left);
   *   what attach and map throw.
   */
  mapAhead(buf: DmaBuf, device: RemoteDevice, direction: DmaDirection): Now<Answer> {
    const gone = (op: string): DmaBufError => new DmaBufError('EPIPE', 'the importer is gone', { op });
    return andThen(this.#attach(buf, device), (attached) => {
      if (!attached) throw gone('attach');
      const attId = attached.body.attachment as number;
      const undoAttach = (err: unknown): Promise<never> => {
        const fail = (): never => {
          throw err;
        };
        return Promise.resolve(attached.undo?.()).then(fail, fail);
      };
      let mapped: Now<Answer | undefined>;
      try {
        mapped = this.#map(attId, this.attachments.get(attId), direction);
      } catch (err) {
        return undoAttach(err);
      }
      return andThen(mapped, (m): Answer | Promise<never> => {
        if (!m) return undoAttach(gone('map'));
        return {
          body: { attachment: attId, ...m.body },
          fds: m.fds,
          undo: async () => { await m.undo?.(); await attached.undo?.(); },
        };
      }, undoAttach);
    });
  }

  nextId(): number {
    const id = this.#nextId;
    this.#nextId = id >= 0x7fffffff ? 1 : id + 1;
    return id;
  }

  /**
   * Lets the importer reach `buf` on this channel: it proved it holds the buffer's file (a
   * HELLO through the file, or a hand-off that carried the file). Each grant is counted; the
   * importer's PUT says how many it consumed, so a PUT that crosses a newer hand-off of the
   * same buffer does not revoke it.
   */
  adopt(buf: DmaBuf): void {
    this.grants.set(buf.id, (this.grants.get(buf.id) ?? 0) + 1);
    if (this.buffers.has(buf.id)) return;
    this.buffers.set(buf.id, buf);
    buf[kOnRelease](() => { this.buffers.delete(buf.id); this.grants.delete(buf.id); this.#closeIfIdle(); });
  }

  #closeWhenIdle = false;

  /**
   * Closes the channel once the importer holds nothing through it (no buffer, no attachment):
   * for a hand-off channel whose route (the buffer channel, the worker) is gone.
   */
  closeWhenIdle(): void {
    this.#closeWhenIdle = true;
    this.#closeIfIdle();
  }

  #closeIfIdle(): void {
    if (this.#closeWhenIdle && !this.conn.closed && this.buffers.size === 0 && this.attachments.size === 0) this.conn.close();
  }

  #answerError(id: number, err: unknown): void {
    const e = err instanceof DmaBufError ? err : new DmaBufError('EIO', String(err));
    this.conn.send(MsgType.ERROR, id, { code: e.code, message: e.message }).catch(() => {});
  }

  #buffer(body: Record<string, unknown>): DmaBuf {
    const id = field.uint(body, 'buffer', 0xffffffff);
    const buf = this.buffers.get(id);
    if (!buf) throw new DmaBufError('EINVAL', `buffer ${id} was not imported on this channel (send a HELLO through its file first)`, { op: 'protocol' });
    return buf;
  }

  #attachment(body: Record<string, unknown>): [number, RemoteAttachment] {
    const id = field.uint(body, 'attachment', 0xffffffff);
    const entry = this.attachments.get(id);
    if (!entry) throw new DmaBufError('EINVAL', `attachment ${id} is not a live attachment of this channel`, { op: 'protocol' });
    return [id, entry];
  }

  async #handle(msg: Message, fds: number[]): Promise<void> {
    if (msg.type === MsgType.BATCH) {
      // Notifications sent together: run in order, each as if it had come alone.
      closeAll(fds);
      let list: Message[] | null = null;
      try {
        if (msg.id === 0 && fds.length === 0) list = unbatch(msg.body, (type) => NOTIFICATIONS.has(type));
      } catch {
        list = null;
      }
      if (!list) {
        this.conn.badMessages += 1;
        return;
      }
      for (const m of list) void this.#handle(m, []);
      return;
    }
    if (msg.id === 0 && !NOTIFICATIONS.has(msg.type)) {
      // A request nobody can be answered for (id 0 is for notifications): refuse to run it.
      closeAll(fds);
      this.conn.badMessages += 1;
      return;
    }
    let answer: Answer | undefined;
    if (msg.id === 0) this.notifications += 1;
    else this.requests += 1;
    try {
      answer = await this.dispatch(msg, fds);
      this.#closeIfIdle();
      if (msg.id === 0) return; // a notification: nobody waits for an answer
      if (answer && !this.conn.closed) await this.conn.send(MsgType.REPLY, msg.id, answer.body, answer.fds);
    } catch (err) {
      // An answer that could not be sent: the importer will never know of what it did.
      if (answer?.undo) await answer.undo().catch(() => {});
      if (msg.id !== 0 && !this.conn.closed) this.#answerError(msg.id, err);
    } finally {
      if (answer?.closeFds) closeAll(answer.fds);
    }
  }

  /**
   * Runs a request; returns the answer (undefined for notifications, or when the channel
   * closed meanwhile and the work was undone).
   */
  async dispatch(msg: Message, fds: number[] = []): Promise<Answer | undefined> {
    const { body } = msg;
    if (RESV_REQUESTS.has(msg.type)) {
      let buf: DmaBuf;
      try {
        buf = this.#buffer(body);
      } catch (err) {
        closeAll(fds);
        throw err;
      }
      return (this.#resv ??= new ResvService(this.pid)).dispatch(msg, fds, buf);
    }
    closeAll(fds); // only a RESV_ADD carries a descriptor
    if (msg.type === MsgType.CANCEL) {
      this.#resv?.cancel(body);
      return msg.id === 0 ? undefined : { body: {}, fds: [] };
    }
    const ok = (): Answer => ({ body: {}, fds: [] });
    switch (msg.type) {
      case MsgType.ATTACH:
        return this.#attach(this.#buffer(body), this.#remoteDevice(body.device));
      case MsgType.DETACH: {
        const [attId, entry] = this.#attachment(body);
        this.attachments.delete(attId);
        refund(this.pid, 'attachments');
        for (const m of entry.maps) this.maps.delete(m);
        refund(this.pid, 'maps', entry.maps.size);
        // An exporter stays alive while importers hold attachments: it answers their maps.
        if (this.attachments.size === 0) this.conn.keepAlive(false);
        await entry.att.detach();
        return ok();
      }
      case MsgType.MAP: {
        const [attId, entry] = this.#attachment(body);
        return this.#map(attId, entry, field.oneOf(body, 'direction', DIRECTIONS) as DmaDirection);
      }
      case MsgType.UNMAP: {
        const mapId = field.uint(body, 'map', 0xffffffff);
        const m = this.maps.get(mapId);
        if (!m) throw new DmaBufError('EINVAL', `unmap: map ${mapId} is not a live map of this channel`, { op: 'unmap' });
        this.maps.delete(mapId);
        refund(this.pid, 'maps');
        const entry = this.attachments.get(m.attachment);
        entry?.maps.delete(mapId);
        if (entry && !entry.att.detached) await entry.att.unmap(m.sgt);
        return ok();
      }
      case MsgType.PUT: {
        const bufId = field.uint(body, 'buffer', 0xffffffff);
        const consumed = body.grants === undefined ? Infinity : field.uint(body, 'grants', 0xffffffff);
        const left = (this.grants.get(bufId) ?? 0) - consumed;
        if (left > 0) {
          this.grants.set(bufId, left);
        } else {
          this.buffers.delete(bufId);
          this.grants.delete(bufId);
        }
        return undefined;
      }
      default:
        throw new DmaBufError('EPROTO', `protocol: unexpected message type ${msg.type} from an importer`, { op: 'protocol' });
    }
  }

  /** The device an importer described (its constraints, checked by `Device`). */
  #remoteDevice(d: unknown): RemoteDevice {
    if (typeof d !== 'object' || d === null) throw new DmaBufError('EPROTO', 'protocol: field "device" must be an object', { op: 'protocol' });
    const dev = d as Record<string, unknown>;
    return new RemoteDevice({
      name: `${field.str(dev, 'name', 255)}@${this.pid}`,
      maxSegmentSize: field.uint(dev, 'maxSegmentSize'),
      maxSegments: field.uint(dev, 'maxSegments'),
      segmentAlignment: field.uint(dev, 'segmentAlignment'),
      pageSize: field.uint(dev, 'pageSize'),
    }, field.str(dev, 'kind', 64), this.pid);
  }

  /**
   * Attaches the importer's `device` (an ATTACH); undefined when the channel closed meanwhile.
   * In this call when the buffer's lock is free and the exporter attaches synchronously.
   */
  #attach(buf: DmaBuf, device: RemoteDevice): Now<Answer | undefined> {
    charge(this.pid, 'attachments', 'attach');
    const refundAttach = (err: unknown): never => {
      refund(this.pid, 'attachments');
      throw err;
    };
    let att: Now<DmaBufAttachment>;
    try {
      att = buf[kAttachRemote](device);
    } catch (err) {
      return refundAttach(err);
    }
    return andThen(att, (a) => this.#attached(a, device), refundAttach);
  }

  /** The answer of an attach that succeeded (or its undoing when the channel closed meanwhile). */
  #attached(att: DmaBufAttachment, device: RemoteDevice): Answer | Promise<undefined> {
    if (this.conn.closed) {
      refund(this.pid, 'attachments');
      return att.detach().then(() => undefined);
    }
    const attId = this.nextId();
    this.attachments.set(attId, { att, device, mapLock: new AsyncLock(), maps: new Set() });
    this.conn.keepAlive(true);
    return { body: { attachment: attId }, fds: [], undo: async () => {
      if (this.attachments.delete(attId)) refund(this.pid, 'attachments');
      if (this.attachments.size === 0) this.conn.keepAlive(false);
      await att.detach();
    } };
  }

  /**
   * Maps attachment `attId` (a MAP): the answer carries the table's runs and the memory to
   * send; undefined when the channel or the attachment went away meanwhile.
   */
  #map(attId: number, entry: RemoteAttachment | undefined, direction: DmaDirection): Now<Answer | undefined> {
    if (!entry) return undefined;
    charge(this.pid, 'maps', 'map');
    const refundMap = (err: unknown): never => {
      refund(this.pid, 'maps');
      throw err;
    };
    let made: Now<{ sgt: SgTable; mapping: RemoteMapping | null }>;
    try {
      // One map at a time per attachment: the device's pending memory is this map's.
      made = entry.mapLock.tryRun('map', () => andThen(entry.att[kMapNow](direction), (sgt) => ({ sgt, mapping: entry.device.takePending() })));
    } catch (err) {
      return refundMap(err);
    }
    return andThen(made, ({ sgt, mapping }) => this.#mapped(attId, entry, sgt, mapping), refundMap);
  }

  /** The answer of a map that succeeded: the table's runs and the memory to send. */
  #mapped(attId: number, entry: RemoteAttachment, sgt: SgTable, mapping: RemoteMapping | null): Answer | Promise<undefined> {
    // From here the map counts until it is in this.maps, then until it leaves it.
    const uncount = (): void => refund(this.pid, 'maps');
    if (!mapping) {
      uncount();
      return entry.att.unmap(sgt).then(() => {
        throw new DmaBufError('EINVAL', `map: the exporter "${entry.att.dmabuf.exporter}" has no memory a device in another process can map`, { op: 'map' });
      });
    }
    if (this.conn.closed || !this.attachments.has(attId)) {
      uncount();
      if (entry.att.detached) return Promise.resolve(undefined);
      return entry.att.unmap(sgt).then(() => undefined, () => undefined);
    }
    let runs;
    try {
      runs = toRuns(sgt.segments);
    } catch (err) {
      uncount();
      return entry.att.unmap(sgt).then(() => {
        throw err;
      });
    }
    const mapId = this.nextId();
    this.maps.set(mapId, { attachment: attId, sgt });
    entry.maps.add(mapId);
    const { memory, access } = mapping;
    return {
      body: {
        map: mapId,
        segments: runs,
        memory: { size: memory.size, pageSize: memory.pageSize, writeSealed: memory.writeSealed },
        access,
      },
      fds: [memory.fd],
      undo: async () => {
        if (this.maps.delete(mapId)) uncount();
        entry.maps.delete(mapId);
        if (!entry.att.detached) await entry.att.unmap(sgt);
      },
    };
  }

  /** The importer is gone: undo what it left, as if it had. */
  #cleanup(): void {
    channels.delete(this.token);
    this.#resv?.close();
    refund(this.pid, 'channels');
    refund(this.pid, 'attachments', this.attachments.size);
    refund(this.pid, 'maps', this.maps.size);
    const left = [...this.attachments.values()];
    this.attachments.clear();
    this.maps.clear();
    this.buffers.clear();
    this.grants.clear();
    for (const entry of left) {
      if (!entry.att.detached) {
        entry.att.detach().catch((err: unknown) => {
          warnLimited('cleanup', `cleaning up after an importer (pid ${this.pid}) failed: ${String(err)}`);
        });
      }
    }
  }
}

/**
 * What an importer may send with id 0, as a notification that is not answered: PUT, the
 * UNMAP and DETACH of an importer that does not wait for the exporter (its own side is undone
 * already), and CANCEL of a wait it gave up. They are run in order with the channel's requests.
 */
const NOTIFICATIONS: ReadonlySet<number> = new Set([MsgType.PUT, MsgType.UNMAP, MsgType.DETACH, MsgType.CANCEL]);

/** The requests about a buffer's reservation object and CPU access (see `resv-service.ts`). */
const RESV_REQUESTS: ReadonlySet<number> = new Set([MsgType.RESV_ADD, MsgType.RESV_FENCES, MsgType.RESV_WAIT, MsgType.RESV_EXPORT, MsgType.CPU_ACCESS]);

/** This thread's channels, by token. */
const channels = new Map<string, ServiceChannel>();

/** The live channel with this token. */
export function serviceChannel(token: string): ServiceChannel | undefined {
  const ch = channels.get(token);
  return ch && !ch.conn.closed ? ch : undefined;
}

/** The channels of this exporter thread (for introspection and tests). */
export function serviceChannels(): { token: string; pid: number; buffers: number; attachments: number; maps: number; requests: number; notifications: number; records: number }[] {
  return [...channels.values()].map((c) => ({ token: c.token, pid: c.pid, buffers: c.buffers.size, attachments: c.attachments.size, maps: c.maps.size, requests: c.requests, notifications: c.notifications, records: c.records }));
}

/** The buffer's description, as the importer receives it. */
export function describe(buf: DmaBuf, channel: ServiceChannel, reused: boolean): Record<string, unknown> {
  return {
    buffer: buf.id,
    size: buf.size,
    flags: buf.flags,
    name: buf.name,
    exporter: buf.exporter,
    sealed: buf.sealed,
    cpuAccess: buf.ops.beginCpuAccess !== undefined || buf.ops.endCpuAccess !== undefined,
    pid: process.pid,
    token: channel.token,
    reused,
  };
}

/**
 * Whether a HELLO's channel belongs to the process that sent the HELLO: its `SO_PEERCRED`
 * (the process that created the socket pair) must be the sender that the kernel vouches for
 * (`SCM_CREDENTIALS`). A HELLO without credentials is refused.
 */
function channelOfSender(channelFd: number, cred: { pid: number } | null): boolean {
  if (cred === null || cred.pid <= 0) return false;
  try {
    return native.peerCred(channelFd).pid === cred.pid;
  } catch {
    return false;
  }
}

/**
 * Handles a message that arrived through a buffer's file: a HELLO from an importer. Anything
 * else is dropped, its descriptors closed. Never throws.
 */
export function handleHello(buf: DmaBuf, data: Buffer, fds: number[], flags = 0, cred: { pid: number; uid: number; gid: number } | null = null): void {
  const c = native.constants;
  if (flags & c.MSG_CTRUNC) {
    // The kernel dropped the HELLO's channel: this process is out of descriptors. The
    // importer cannot be answered; it will time out. Say why here, where it can be fixed.
    warnLimited('ctrunc', `an importer's HELLO for buffer "${buf.name}" lost its descriptor (MSG_CTRUNC): this process is probably out of descriptors (EMFILE); raise RLIMIT_NOFILE`);
  }
  // The one descriptor must be a connected SEQPACKET Unix socket: the importer's channel.
  let channelFd = -1;
  if (fds.length === 1) {
    try {
      const info = native.socketInfo(fds[0]!);
      if (info.domain === c.AF_UNIX && info.type === c.SOCK_SEQPACKET) channelFd = fds[0]!;
    } catch {
      // not a socket
    }
  }
  if (channelFd >= 0) {
    // A descriptor of a buffer's file is no channel: holding it would keep that buffer alive.
    try {
      if (lookup(fileKey(channelFd))) channelFd = -1;
    } catch {
      channelFd = -1;
    }
  }
  if (channelFd >= 0 && !channelOfSender(channelFd, cred)) {
    // The channel is not the sender's own (a descriptor of another process's buffer or
    // channel, passed on): keeping it would pin what it belongs to. Refused, and said why.
    const id = data.length >= 12 ? data.readUInt32LE(8) : 0;
    try {
      native.sendmsg(channelFd, encode(MsgType.ERROR, id, { code: 'EPERM', message: 'the channel of a HELLO must be a socket the sending process created' }), [], c.MSG_DONTWAIT);
    } catch {
      // not ours to answer
    }
    warnLimited('foreign-channel', `refused a HELLO for buffer "${buf.name}" from pid ${cred?.pid ?? 'unknown'}: its channel was created by another process`);
    channelFd = -1;
  }
  if (channelFd < 0) {
    closeAll(fds);
    return;
  }
  let msg: Message;
  try {
    msg = decode(data);
    if (msg.type !== MsgType.HELLO) throw new DmaBufError('EPROTO', `protocol: expected a HELLO through the buffer's file, got type ${msg.type}`, { op: 'protocol' });
  } catch (err) {
    const e = err as DmaBufError;
    const id = data.length >= 12 ? data.readUInt32LE(8) : 0;
    try {
      native.sendmsg(channelFd, encode(MsgType.ERROR, id, { code: e.code, message: e.message }), [], c.MSG_DONTWAIT);
    } catch {
      // the importer is gone or does not read
    }
    closeAll([channelFd]);
    return;
  }
  try {
    const versions = msg.body.versions;
    if (versions !== undefined && !(Array.isArray(versions) && versions.includes(VERSION))) {
      native.sendmsg(channelFd, encode(MsgType.ERROR, msg.id, { code: 'EPROTO', message: `the exporter speaks protocol version ${VERSION} only` }), [], c.MSG_DONTWAIT);
      closeAll([channelFd]);
      return;
    }
    let tokens: string[] = [];
    try {
      tokens = field.strings(msg.body, 'tokens', 64, 64);
    } catch {
      tokens = [];
    }
    const existing = tokens.map((t) => channels.get(t)).find((ch) => ch !== undefined && !ch.conn.closed);
    let channel: ServiceChannel;
    try {
      channel = existing ?? new ServiceChannel(channelFd);
    } catch (err) {
      // Over its limit of channels (or out of resources): refused, and nothing kept.
      const e = err instanceof DmaBufError ? err : new DmaBufError('EIO', String(err));
      try {
        native.sendmsg(channelFd, encode(MsgType.ERROR, msg.id, { code: e.code, message: e.message }), [], c.MSG_DONTWAIT);
      } catch {
        // the importer is gone or does not read
      }
      closeAll([channelFd]);
      if (e.code === 'ENOSPC') warnLimited('channels', `refused a channel for buffer "${buf.name}": ${e.message}`);
      return;
    }
    channel.adopt(buf);
    const welcome = describe(buf, channel, existing !== undefined);
    const answer = (prefetched: Answer | undefined): void => {
      const body = prefetched ? { ...welcome, ...prefetched.body } : welcome;
      const fds = prefetched?.fds ?? [];
      if (existing) {
        // The answer goes on the new channel, which is then closed: the importer uses the old one.
        let sent = false;
        try {
          sent = native.sendmsg(channelFd, encode(MsgType.REPLY, msg.id, body), fds, c.MSG_DONTWAIT, true) >= 0;
        } catch {
          sent = false;
        } finally {
          closeAll([channelFd]);
        }
        if (!sent) void prefetched?.undo?.().catch(() => {});
      } else {
        channel.conn.send(MsgType.REPLY, msg.id, body, fds).catch(() => {
          void prefetched?.undo?.().catch(() => {});
          channel.conn.close();
        });
      }
    };
    const wanted = msg.body.prefetch;
    if (wanted === undefined) {
      answer(undefined);
      return;
    }
    // The importer asked for an attach and a map along with the HELLO (one round trip for the
    // whole hand-off). A failure here is not fatal: the importer then asks again, one by one.
    void channel.prefetch(buf, wanted).then(answer, () => answer(undefined));
  } catch {
    // The importer will time out; nothing of ours is left open.
  }
}
