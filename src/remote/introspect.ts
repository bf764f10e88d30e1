/**
 * Introspection: what this thread exports and imports, for `dmabuf info` (the user-space
 * `dmabuf_dump`).
 *
 * {@link introspect} describes this thread: the buffers it exported (with their attachments,
 * maps and storage), the buffers it imported from other threads and processes, and its
 * channels. {@link ensureIntrospection}, called by the framework at the first export or get
 * of a thread, makes the description reachable from other processes without any registry
 * file: the thread listens on the abstract Unix socket `\0dmabuf-info.<pid>.<threadId>`
 * (listed in `/proc/net/unix` as `@dmabuf-info.<pid>.<threadId>`) and answers every
 * connection with one JSON snapshot, then closes it. Only peers of the same effective user, or
 * root, in this thread's user namespace get an answer (see {@link mayAnswerPeer}); others are
 * closed without data. While {@link MAX_INTROSPECTION_CLIENTS} answers are in progress, a
 * further peer that may be answered gets {@link INTROSPECTION_BUSY} instead.
 *
 * The thread listens only while it has buffers (exported or imported, not yet released): the
 * listener starts with the first and closes with the last, so a thread without buffers holds
 * no descriptor for it. It never keeps the process alive (its watcher is unref'd) and goes
 * away with the thread (its descriptor is closed at the thread's end). Set `DMABUF_INFO=0` in
 * the environment to disable it. Introspection never makes an export or a get fail.
 *
 * @module
 */
import { threadId, isMainThread } from 'node:worker_threads';
import type { DmaBuf } from '../core/dma-buf.js';
import type { DeviceConstraints } from '../core/device.js';
import type { DmaDirection } from '../core/direction.js';
import { RemoteDevice } from './remote-device.js';
import { kMaps, kOnRelease } from '../core/internal.js';
import { registered } from '../core/registry.js';
import { serviceChannels } from './service.js';
import { importChannels } from './importer.js';
import { native, own, closeOwned, available, type PollHandle } from '../native/binding.js';
import { fileKey } from '../transport/buffer-file.js';
import { overflowUid, peerIdentity, someUidsUnmapped } from '../transport/credentials.js';
import type { PeerCred } from '../native/binding.js';

/** Version of the snapshot format; bumped on incompatible changes. */
export const SNAPSHOT_VERSION = 1;
/** Prefix of the abstract socket names (without the leading NUL). */
export const INTROSPECTION_PREFIX = 'dmabuf-info.';
/** Most connections answered at once; more are closed without data until some finish. */
export const MAX_INTROSPECTION_CLIENTS = 16;
/** A client that has not read its snapshot in this time is dropped, in milliseconds. */
export const INTROSPECTION_SEND_TIMEOUT = 5000;
/**
 * The whole answer to a peer that may be answered while {@link MAX_INTROSPECTION_CLIENTS}
 * others are being answered: `dmabuf info` reports the thread as busy, not as refusing. A peer
 * that may not be answered still gets nothing.
 */
export const INTROSPECTION_BUSY = '{"busy":true}\n';
const BUSY_NOTICE = Buffer.from(INTROSPECTION_BUSY);

/** One attachment of a buffer: the device and its live maps. */
export interface AttachmentSnapshot {
  /** The device's name (a remote device is named `<name>@<pid>` by the exporter's service). */
  device: string;
  /** The device's kind (`'cpu'`, `'remote-cpu'`, ...). */
  kind: string;
  /** The device's constraints. */
  constraints: DeviceConstraints;
  /** For the device of an importer in another thread or process: that process's id. */
  pid?: number;
  /** Live maps of this attachment. */
  maps: number;
  /** The direction of each live map. */
  directions: DmaDirection[];
}

/** The backing storage of a buffer, for exporters whose private data exposes it. */
export interface StorageSnapshot {
  /** Whether storage exists (false before the first map: late allocation). */
  allocated: boolean;
  /** Bytes of storage (0 when not allocated). */
  size: number;
  /** 4096, or 2 MiB for hugetlb storage (0 when not allocated). */
  pageSize: number;
  /** Whether the storage lives on hugetlbfs. */
  hugetlb: boolean;
  /** Whether the storage is sealed against writes. */
  writeSealed: boolean;
  /** How many times storage was allocated or moved (migration). */
  generation: number;
  /** `dev:ino` of the storage's memfd (matches `/proc/PID/maps` and `/proc/PID/fd`), or null. */
  file: string | null;
}

/** What every buffer's snapshot tells, exported or imported. */
export interface BufferSnapshot {
  /** The buffer's id in this thread. */
  id: number;
  name: string;
  exporter: string;
  size: number;
  /** `O_RDWR` or `O_RDONLY` (with `O_CLOEXEC` if given). */
  flags: number;
  /** JavaScript references held in this thread. */
  refs: number;
  sealed: boolean;
  /** `dev:ino` of the buffer's file (a socket): the same in every process that holds it. */
  key: string;
  attachments: AttachmentSnapshot[];
  /** Live maps over every attachment. */
  maps: number;
}

/** A buffer this thread exported. */
export interface ExportedSnapshot extends BufferSnapshot {
  released: boolean;
  /** The storage, when the exporter's private data exposes it (the system heap's does). */
  storage?: StorageSnapshot;
}

/** A buffer this thread imported from another thread or process. */
export interface ImportedSnapshot extends BufferSnapshot {
  /** The exporter's process id. */
  exporterPid: number;
}

/** One snapshot of a thread. */
export interface Snapshot {
  /** {@link SNAPSHOT_VERSION}. */
  version: number;
  /** The process id, as this process sees it. */
  pid: number;
  /** `worker_threads.threadId` (0 for the main thread). */
  threadId: number;
  isMainThread: boolean;
  /** `process.title`, and the script (`process.argv[1]`), to recognise the process. */
  title: string;
  script: string;
  /** When the snapshot was taken (milliseconds since the epoch). */
  time: number;
  exported: ExportedSnapshot[];
  imported: ImportedSnapshot[];
  /** This thread's service channels: one per importer thread, with what it holds. */
  serviceChannels: { pid: number; buffers: number; attachments: number; maps: number }[];
  /** This thread's channels to exporter threads. */
  importChannels: { pid: number; closed: boolean }[];
}

interface ImportedPrivLike {
  channel: { token: string };
  handle: number;
  pid: number;
  maps: Map<unknown, unknown>;
}

/** The importer's private data (see importer.ts), recognised by its shape and a live channel token. */
function importedPriv(buf: DmaBuf, tokens: ReadonlySet<string>): ImportedPrivLike | null {
  const p = buf.priv as Partial<ImportedPrivLike> | null;
  if (typeof p !== 'object' || p === null) return null;
  const ch = p.channel as { token?: unknown } | undefined;
  if (typeof ch !== 'object' || ch === null || typeof ch.token !== 'string') return null;
  if (typeof p.handle !== 'number' || typeof p.pid !== 'number' || !(p.maps instanceof Map)) return null;
  return tokens.has(ch.token) ? (p as ImportedPrivLike) : null;
}

function fileKeyOf(fd: number): string | null {
  try {
    return fileKey(fd);
  } catch {
    return null;
  }
}

interface MemoryLike { fd: number; size: number; pageSize: number; writeSealed: boolean }

/**
 * The storage of an exporter whose private data has `storage` (a MemoryObject, or null before
 * the first map) and `generation`, as the system heap's has. The core knows no heap: this is a
 * shape, not an import.
 */
function storageOf(buf: DmaBuf): StorageSnapshot | undefined {
  const p = buf.priv as { storage?: unknown; generation?: unknown } | null;
  if (typeof p !== 'object' || p === null || !('storage' in p) || typeof p.generation !== 'number') return undefined;
  const s = p.storage as Partial<MemoryLike> | null;
  if (s === null || s === undefined) {
    return { allocated: false, size: 0, pageSize: 0, hugetlb: false, writeSealed: false, generation: p.generation, file: null };
  }
  if (typeof s !== 'object' || typeof s.fd !== 'number' || typeof s.size !== 'number' || typeof s.pageSize !== 'number') return undefined;
  let hugetlb = false;
  try {
    hugetlb = native.fstatfsType(s.fd) === native.constants.HUGETLBFS_MAGIC;
  } catch {
    // closed under us: leave false
  }
  return {
    allocated: true,
    size: s.size,
    pageSize: s.pageSize,
    hugetlb,
    writeSealed: s.writeSealed === true,
    generation: p.generation,
    file: fileKeyOf(s.fd),
  };
}

function attachmentsOf(buf: DmaBuf): AttachmentSnapshot[] {
  return buf.attachments.map((a) => {
    const directions = [...a[kMaps].values()];
    const c = a.device.constraints;
    const out: AttachmentSnapshot = {
      device: a.device.name,
      kind: a.device.kind,
      constraints: { maxSegmentSize: c.maxSegmentSize, maxSegments: c.maxSegments, segmentAlignment: c.segmentAlignment, pageSize: c.pageSize },
      maps: directions.length,
      directions,
    };
    if (a.device instanceof RemoteDevice) out.pid = a.device.pid;
    return out;
  });
}

/**
 * Describes this thread: its exported and imported buffers and its channels. Works in any
 * thread, whether or not it listens for `dmabuf info`.
 *
 * @example
 * ```ts
 * const snap = introspect();
 * for (const b of snap.exported) console.log(b.name, b.size, b.attachments.length);
 * ```
 */
export function introspect(): Snapshot {
  const tokens = new Set(importChannelTokens());
  const exported: ExportedSnapshot[] = [];
  const imported: ImportedSnapshot[] = [];
  for (const entry of registered()) {
    const buf = entry as DmaBuf;
    if (typeof buf !== 'object' || buf === null || typeof buf.size !== 'number') continue;
    const attachments = attachmentsOf(buf);
    const maps = attachments.reduce((n, a) => n + a.maps, 0);
    const ip = importedPriv(buf, tokens);
    if (ip) {
      imported.push({
        id: buf.id, name: buf.name, exporter: buf.exporter, size: buf.size, flags: buf.flags,
        refs: buf.refs, sealed: buf.sealed, key: buf.key, exporterPid: ip.pid, attachments, maps,
      });
      continue;
    }
    const snap: ExportedSnapshot = {
      id: buf.id, name: buf.name, exporter: buf.exporter, size: buf.size, flags: buf.flags,
      refs: buf.refs, released: buf.released, sealed: buf.sealed, key: buf.key, attachments, maps,
    };
    const storage = storageOf(buf);
    if (storage) snap.storage = storage;
    exported.push(snap);
  }
  return {
    version: SNAPSHOT_VERSION,
    pid: process.pid,
    threadId,
    isMainThread,
    title: process.title,
    script: process.argv[1] ?? '',
    time: Date.now(),
    exported,
    imported,
    serviceChannels: serviceChannels().map(({ pid, buffers, attachments, maps }) => ({ pid, buffers, attachments, maps })),
    importChannels: importChannels().map(({ pid, closed }) => ({ pid, closed })),
  };
}

function importChannelTokens(): string[] {
  return importChannels().filter((c) => !c.closed).map((c) => c.token);
}

// ---------------------------------------------------------------------------------------------
// The listener

interface Listener {
  fd: number;
  poll: PollHandle;
  name: string;
}

let listener: Listener | null = null;
/** Set when introspection is off in this thread (no addon, `DMABUF_INFO=0`, every name taken). */
let disabled = false;
/** Buffers of this thread (exported or imported) not yet released. */
let live = 0;
let clients = 0;
let scheduled: NodeJS.Immediate | null = null;
/** Whether `DMABUF_INFO` was read (at this thread's first buffer). */
let envRead = false;
/** Buffers created in this thread so far (see {@link linger}). */
let created = 0;

/** The abstract name this thread listens on (without the leading NUL), or null. */
export function introspectionAddress(): string | null {
  return listener ? listener.name : null;
}

/**
 * Called by the framework for every buffer created in this thread (exported or imported):
 * starts this thread's introspection listener if it is not running, and stops it two seconds
 * after the last such buffer is released, so that a thread without buffers soon holds no
 * descriptor for it.
 * Never throws: when sockets are unavailable or the names are taken, the thread simply is
 * not listed by `dmabuf info`.
 */
export function ensureIntrospection(buf: DmaBuf): void {
  try {
    if (disabled) return;
    // The environment is read once, when the thread starts using buffers (no buffer, no
    // endpoint), not at every buffer.
    if (!envRead) {
      envRead = true;
      if (!available || process.env.DMABUF_INFO === '0') {
        disabled = true;
        return;
      }
    }
    live += 1;
    created += 1;
    buf[kOnRelease](onBufferReleased);
    // Listening costs a few syscalls: never in the middle of an export or a get (a hand-off's
    // latency), but right after, once the event loop turns. Also when the buffer is gone by
    // then (a stream of hand-offs releases each within its turn): the endpoint lingers as
    // after any last buffer, so that such a thread is listed too, and pays this once.
    if (!listener && !scheduled) {
      scheduled = setImmediate(() => {
        scheduled = null;
        try {
          if (!listener && !disabled) {
            listener = listen();
            if (live === 0) linger();
          }
        } catch {
          // try again at the next buffer
        }
      });
      scheduled.unref();
    }
  } catch {
    // introspection never makes an export or a get fail
  }
}

/**
 * How long the endpoint stays up after this thread's last buffer went, in milliseconds: a
 * thread that hands buffers off one after the other (each imported, then put) keeps one
 * listener instead of opening and closing one per hand-off.
 */
const LINGER_MS = 2000;
let lingering: NodeJS.Timeout | null = null;

function onBufferReleased(): void {
  live -= 1;
  if (live > 0) return;
  live = 0;
  linger();
}

/**
 * Stops the endpoint after {@link LINGER_MS} without a buffer; buffers that came and went
 * meanwhile (a stream of hand-offs, each released within its turn) keep it up another while.
 */
function linger(): void {
  if (lingering) return;
  const mark = created;
  lingering = setTimeout(() => {
    lingering = null;
    if (live > 0) return;
    if (created !== mark) linger();
    else stopIntrospection();
  }, LINGER_MS);
  lingering.unref();
}

function listen(): Listener | null {
  const c = native.constants;
  const base = `${INTROSPECTION_PREFIX}${process.pid}.${threadId}`;
  // A second copy of this module in the same thread (two installs of the package) takes the
  // next free suffix; `dmabuf info` accepts any.
  for (let i = 0; i < 8; i++) {
    const name = i === 0 ? base : `${base}.${i}`;
    const fd = own(native.socket(c.SOCK_STREAM, true));
    try {
      native.bind(fd, `\0${name}`);
      native.listen(fd, 64);
    } catch (err) {
      closeOwned(fd);
      if ((err as { code?: string }).code === 'EADDRINUSE') continue;
      return null; // out of descriptors, say: try again at the next buffer
    }
    try {
      const poll = native.pollStart(fd, c.UV_READABLE, () => acceptAll(fd));
      return { fd, poll, name };
    } catch {
      closeOwned(fd);
      return null;
    }
  }
  disabled = true;
  return null;
}

function acceptAll(fd: number): void {
  for (;;) {
    let conn: number;
    try {
      conn = native.accept(fd, true);
    } catch {
      return; // EAGAIN (none pending), or the listener is gone
    }
    try {
      own(conn);
    } catch {
      native.close(conn);
      continue;
    }
    if (!mayAnswer(conn)) {
      closeOwned(conn);
      continue;
    }
    if (clients >= MAX_INTROSPECTION_CLIENTS) {
      sayBusy(conn);
      continue;
    }
    let data: Buffer;
    try {
      data = Buffer.from(JSON.stringify(introspect()) + '\n');
    } catch {
      closeOwned(conn);
      continue;
    }
    answer(conn, data);
  }
}

/** Who this thread is, for {@link mayAnswerPeer}. */
export interface EndpointIdentity {
  /** This process's effective uid. */
  uid: number;
  /**
   * The overflow uid (`/proc/sys/kernel/overflowuid`) where it is ambiguous: in a user
   * namespace that leaves some uids unmapped, any of them reads as it. Null where every uid is
   * mapped (the initial namespace: there it is the real user `nobody`).
   */
  overflowUid: number | null;
}

/**
 * Whether the info endpoint answers a peer: `cred` is its `SO_PEERCRED`, `sameUserNs` whether
 * its process lives in this thread's user namespace (null when that could not be told). The
 * peer must be visible in this pid namespace (pid > 0), live in the same user namespace, and be
 * the same effective user or root. The overflow uid is refused wherever it stands for any user that has no mapping in this
 * namespace (an exporter in an unmapped `unshare -U` even runs as that uid itself).
 */
export function mayAnswerPeer(cred: PeerCred, sameUserNs: boolean | null, me: EndpointIdentity): boolean {
  if (cred.pid <= 0 || cred.uid === me.overflowUid || sameUserNs !== true) return false;
  return cred.uid === 0 || cred.uid === me.uid;
}

let self: EndpointIdentity | null = null;

function mayAnswer(fd: number): boolean {
  try {
    self ??= { uid: process.geteuid?.() ?? -1, overflowUid: someUidsUnmapped() ? overflowUid() : null };
    const peer = peerIdentity(fd);
    return peer !== null && mayAnswerPeer(peer.cred, peer.sameUserNs, self);
  } catch {
    return false;
  }
}

/**
 * Tells a peer that may be answered that every answer slot is taken, then closes: a few bytes
 * on a new connection, which its empty send buffer always takes at once.
 */
function sayBusy(fd: number): void {
  try {
    native.sendmsg(fd, BUSY_NOTICE, [], native.constants.MSG_DONTWAIT);
  } catch {
    // the peer is gone: nothing to tell
  }
  closeOwned(fd);
}

/** Sends `data` on a non-blocking stream, waiting for room when needed, then closes. */
function answer(fd: number, data: Buffer): void {
  const c = native.constants;
  clients += 1;
  let offset = 0;
  let poll: PollHandle | null = null;
  let closed = false;
  const done = (): void => {
    if (closed) return;
    closed = true;
    clients -= 1;
    clearTimeout(timer);
    if (poll) native.pollClose(poll);
    closeOwned(fd);
  };
  const timer = setTimeout(done, INTROSPECTION_SEND_TIMEOUT);
  timer.unref();
  const pump = (): void => {
    try {
      while (offset < data.length) {
        offset += native.sendmsg(fd, data.subarray(offset, Math.min(data.length, offset + 65536)), [], c.MSG_DONTWAIT);
      }
    } catch (err) {
      if ((err as { code?: string }).code === 'EAGAIN') {
        if (!poll) poll = native.pollStart(fd, c.UV_WRITABLE | c.UV_DISCONNECT, (status) => (status < 0 ? done() : pump()));
        return;
      }
      done();
      return;
    }
    done();
  };
  pump();
}

/** The listener's descriptor in this thread, or -1 (tests leave it out of descriptor counts). */
export function introspectionFd(): number {
  return listener?.fd ?? -1;
}

/**
 * Stops listening until the next buffer of this thread is created. Connections being answered
 * finish. (A thread's end closes the listener by itself.)
 */
export function stopIntrospection(): void {
  const l = listener;
  if (!l) return;
  listener = null;
  try {
    native.pollClose(l.poll);
    closeOwned(l.fd);
  } catch {
    // already closed at the thread's end
  }
}
