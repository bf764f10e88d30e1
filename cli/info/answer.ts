/**
 * Reading what an endpoint answered: one JSON snapshot of its thread (see
 * `src/remote/introspect.ts`), or the busy notice (`{"busy":true}`) it sends when every
 * answer slot is taken.
 * The answer comes from another process, so nothing in it is taken on trust: every field the
 * listing uses is checked for its type and range, and the snapshot is rebuilt from those
 * fields only (anything else it carries is dropped). A snapshot must also say that it is the
 * thread the endpoint's name gives.
 *
 * @module
 */
import { DmaBufError } from '../../src/core/errors.js';
import {
  SNAPSHOT_VERSION,
  type AttachmentSnapshot, type ExportedSnapshot, type ImportedSnapshot, type Snapshot, type StorageSnapshot,
} from '../../src/remote/introspect.js';

/** What an endpoint answered. */
export type Answer = { busy: true } | { busy: false; snapshot: Snapshot };

type Obj = Record<string, unknown>;

function malformed(path: string, what: string): never {
  throw new DmaBufError('EPROTO', `info: a malformed snapshot: ${path} ${what}`, { op: 'info' });
}

function obj(v: unknown, path: string): Obj {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) malformed(path, 'is not an object');
  return v as Obj;
}

function arr(v: unknown, path: string): unknown[] {
  if (!Array.isArray(v)) malformed(path, 'is not an array');
  return v;
}

/** A non-negative safe integer. */
function count(v: unknown, path: string): number {
  if (!Number.isSafeInteger(v) || (v as number) < 0) malformed(path, 'is not a non-negative integer');
  return v as number;
}

function bool(v: unknown, path: string): boolean {
  if (typeof v !== 'boolean') malformed(path, 'is not a boolean');
  return v;
}

/** Buffer names and exporters are at most 255 characters; device names have no limit here, but some. */
const MAX_STRING = 4096;

function str(v: unknown, path: string, max = MAX_STRING): string {
  if (typeof v !== 'string') malformed(path, 'is not a string');
  if (v.length > max) malformed(path, `is over ${max} characters`);
  return v;
}

/** `dev:ino`, as `fileKey` makes it. */
function key(v: unknown, path: string): string {
  const s = str(v, path, 64);
  if (!/^\d+:\d+$/.test(s)) malformed(path, 'is not a file key (dev:ino)');
  return s;
}

const DIRECTIONS = new Set(['bidirectional', 'to-device', 'from-device', 'none']);

function attachment(v: unknown, path: string): AttachmentSnapshot {
  const a = obj(v, path);
  const c = obj(a.constraints, `${path}.constraints`);
  const out: AttachmentSnapshot = {
    device: str(a.device, `${path}.device`),
    kind: str(a.kind, `${path}.kind`, 255),
    constraints: {
      maxSegmentSize: count(c.maxSegmentSize, `${path}.constraints.maxSegmentSize`),
      maxSegments: count(c.maxSegments, `${path}.constraints.maxSegments`),
      segmentAlignment: count(c.segmentAlignment, `${path}.constraints.segmentAlignment`),
      pageSize: count(c.pageSize, `${path}.constraints.pageSize`),
    },
    maps: count(a.maps, `${path}.maps`),
    directions: arr(a.directions, `${path}.directions`).map((d, i) => {
      if (typeof d !== 'string' || !DIRECTIONS.has(d)) malformed(`${path}.directions[${i}]`, 'is not a direction');
      return d as AttachmentSnapshot['directions'][number];
    }),
  };
  if (a.pid !== undefined) out.pid = count(a.pid, `${path}.pid`);
  return out;
}

function storage(v: unknown, path: string): StorageSnapshot {
  const s = obj(v, path);
  return {
    allocated: bool(s.allocated, `${path}.allocated`),
    size: count(s.size, `${path}.size`),
    pageSize: count(s.pageSize, `${path}.pageSize`),
    hugetlb: bool(s.hugetlb, `${path}.hugetlb`),
    writeSealed: bool(s.writeSealed, `${path}.writeSealed`),
    generation: count(s.generation, `${path}.generation`),
    file: s.file === null ? null : key(s.file, `${path}.file`),
  };
}

function buffer(v: unknown, path: string): Omit<ExportedSnapshot, 'released' | 'storage'> {
  const b = obj(v, path);
  return {
    id: count(b.id, `${path}.id`),
    name: str(b.name, `${path}.name`, 255),
    exporter: str(b.exporter, `${path}.exporter`, 255),
    size: count(b.size, `${path}.size`),
    flags: count(b.flags, `${path}.flags`),
    refs: count(b.refs, `${path}.refs`),
    sealed: bool(b.sealed, `${path}.sealed`),
    key: key(b.key, `${path}.key`),
    attachments: arr(b.attachments, `${path}.attachments`).map((a, i) => attachment(a, `${path}.attachments[${i}]`)),
    maps: count(b.maps, `${path}.maps`),
  };
}

function exported(v: unknown, path: string): ExportedSnapshot {
  const b = obj(v, path);
  const out: ExportedSnapshot = { ...buffer(b, path), released: bool(b.released, `${path}.released`) };
  if (b.storage !== undefined) out.storage = storage(b.storage, `${path}.storage`);
  return out;
}

function imported(v: unknown, path: string): ImportedSnapshot {
  const b = obj(v, path);
  return { ...buffer(b, path), exporterPid: count(b.exporterPid, `${path}.exporterPid`) };
}

/**
 * Reads an endpoint's whole answer (up to its end). `pid` and `threadId` are the ones in the
 * endpoint's name: the pid the thread's process sees itself as, and its `threadId`.
 *
 * @throws {DmaBufError} `EPROTO`: not JSON, not a snapshot of format {@link SNAPSHOT_VERSION},
 * a field of the wrong type or range (the message names it), or a snapshot of another thread.
 */
export function parseAnswer(data: Buffer, pid: number, threadId: number): Answer {
  let v: unknown;
  try {
    v = JSON.parse(data.toString('utf8'));
  } catch (err) {
    // Not the parser's message: it quotes the answer, which is the peer's to choose.
    throw new DmaBufError('EPROTO', `info: a malformed answer: not JSON (${data.length} bytes)`, { op: 'info', cause: err });
  }
  const s = obj(v, 'the answer');
  if (s.busy === true) return { busy: true };
  if (s.version !== SNAPSHOT_VERSION) {
    throw new DmaBufError('EPROTO', `info: a snapshot of format ${JSON.stringify(s.version)?.slice(0, 20)}, not ${SNAPSHOT_VERSION}`, { op: 'info' });
  }
  const snapshot: Snapshot = {
    version: SNAPSHOT_VERSION,
    pid: count(s.pid, 'pid'),
    threadId: count(s.threadId, 'threadId'),
    isMainThread: bool(s.isMainThread, 'isMainThread'),
    title: str(s.title, 'title', 1 << 16),
    script: str(s.script, 'script', 1 << 16),
    time: count(s.time, 'time'),
    exported: arr(s.exported, 'exported').map((b, i) => exported(b, `exported[${i}]`)),
    imported: arr(s.imported, 'imported').map((b, i) => imported(b, `imported[${i}]`)),
    serviceChannels: arr(s.serviceChannels, 'serviceChannels').map((c, i) => {
      const o = obj(c, `serviceChannels[${i}]`);
      const p = `serviceChannels[${i}]`;
      return { pid: count(o.pid, `${p}.pid`), buffers: count(o.buffers, `${p}.buffers`), attachments: count(o.attachments, `${p}.attachments`), maps: count(o.maps, `${p}.maps`) };
    }),
    importChannels: arr(s.importChannels, 'importChannels').map((c, i) => {
      const o = obj(c, `importChannels[${i}]`);
      return { pid: count(o.pid, `importChannels[${i}].pid`), closed: bool(o.closed, `importChannels[${i}].closed`) };
    }),
  };
  if (snapshot.pid !== pid || snapshot.threadId !== threadId) {
    throw new DmaBufError('EPROTO', `info: the snapshot is of pid ${snapshot.pid} thread ${snapshot.threadId}, not of pid ${pid} thread ${threadId} as the endpoint's name says`, { op: 'info' });
  }
  return { busy: false, snapshot };
}

