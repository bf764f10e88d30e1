/**
 * The import protocol: the messages between an importer (another thread or process holding a
 * descriptor of a buffer's file) and the exporter's service. See `docs/protocol.md`.
 *
 * Every message is one `SOCK_SEQPACKET` record: a 24-byte little-endian header, then a UTF-8
 * JSON body. Pure encoding and validation: no I/O, nothing of buffers.
 *
 * @module
 */
import { DmaBufError } from '../core/errors.js';

/** `'DMAB'` as a little-endian u32. */
export const MAGIC = 0x42414d44;
/** The protocol version this code speaks. */
export const VERSION = 1;
/** Header bytes. */
export const HEADER_SIZE = 24;
/** Largest message (header and body). */
export const MAX_MESSAGE = 64 * 1024;
/** Most runs of segments in a map reply. */
export const MAX_SEGMENT_RUNS = 2048;
/**
 * Most segments a map reply may describe once its runs are expanded. Runs compress a table,
 * so without this bound a reply of a few bytes (`[[0, 1, 1e9]]`) would make the importer
 * allocate a billion segments and die of memory exhaustion.
 */
export const MAX_SEGMENTS = 1 << 20;

/** Message types. */
export const MsgType = {
  /**
   * importer -> exporter, through the buffer's file, with one descriptor: a new channel. The
   * exporter answers on that channel with a REPLY (the buffer's description) or an ERROR.
   */
  HELLO: 1,
  /** importer -> exporter: attach a device. */
  ATTACH: 3,
  /** importer -> exporter: detach. */
  DETACH: 4,
  /** importer -> exporter: map an attachment. The reply carries the memfd. */
  MAP: 5,
  /** importer -> exporter: unmap. */
  UNMAP: 6,
  /** importer -> exporter: the importer put its last reference of a buffer (no reply). */
  PUT: 7,
  /** exporter -> importer: success of the request with the same id. */
  REPLY: 8,
  /** exporter -> importer: failure of the request with the same id. */
  ERROR: 9,
  /**
   * importer -> exporter, with exactly one descriptor (a fence file or a kernel sync_file):
   * add its fence to the buffer's reservation object with a usage.
   */
  RESV_ADD: 10,
  /** importer -> exporter: the fences a user of a usage must respect (the reply carries them). */
  RESV_FENCES: 11,
  /**
   * importer -> exporter: answer once the fences a user of a usage must respect have all
   * signalled (or a timeout ran out; a timeout of 0 only tests).
   */
  RESV_WAIT: 12,
  /** importer -> exporter: one fence for what a user of a usage must respect now (the reply carries it). */
  RESV_EXPORT: 13,
  /** importer -> exporter: run the exporter's `beginCpuAccess` or `endCpuAccess` op. */
  CPU_ACCESS: 14,
  /** importer -> exporter (id 0, never answered): stop waiting for the request with this id. */
  CANCEL: 15,
  /**
   * importer -> exporter (id 0, never answered): several notifications in one record, run in
   * order as if each had come alone: `{ messages: [[type, body], ...] }`, at most
   * {@link MAX_BATCH} of them, each of a type that may be sent with id 0 (never a BATCH).
   */
  BATCH: 16,
} as const;

/** Most notifications in one BATCH. */
export const MAX_BATCH = 64;

/** Most fence descriptors a RESV_FENCES reply carries; more fences cross as one merged fence. */
export const MAX_RESV_FENCES = 4;

/** A message type number. */
export type MsgTypeValue = (typeof MsgType)[keyof typeof MsgType];

const TYPE_NAMES = new Map<number, string>(Object.entries(MsgType).map(([k, v]) => [v, k]));

/** The name of a type number (for messages). */
export function typeName(type: number): string {
  return TYPE_NAMES.get(type) ?? `type ${type}`;
}

/** A decoded message. */
export interface Message {
  type: MsgTypeValue;
  /** Request id chosen by the importer; replies echo it; 0 for notifications. */
  id: number;
  body: Record<string, unknown>;
}

function protoError(message: string): DmaBufError {
  return new DmaBufError('EPROTO', `protocol: ${message}`, { op: 'protocol' });
}

/**
 * Encodes a message.
 *
 * @throws {DmaBufError} `EMSGSIZE` when it exceeds {@link MAX_MESSAGE}.
 */
export function encode(type: MsgTypeValue, id: number, body: Record<string, unknown> = {}): Buffer {
  const text = JSON.stringify(body);
  const length = Buffer.byteLength(text, 'utf8');
  const total = HEADER_SIZE + length;
  if (total > MAX_MESSAGE) {
    throw new DmaBufError('EMSGSIZE', `protocol: a ${typeName(type)} message of ${total} bytes exceeds the ${MAX_MESSAGE}-byte limit`, { op: 'protocol' });
  }
  // Every byte is written below: the header's fields, then the body.
  const out = Buffer.allocUnsafe(total);
  out.writeUInt32LE(MAGIC, 0);
  out.writeUInt16LE(VERSION, 4);
  out.writeUInt16LE(type, 6);
  out.writeUInt32LE(id >>> 0, 8);
  out.writeUInt32LE(length, 12);
  out.writeUInt32LE(0, 16); // flags: reserved
  out.writeUInt32LE(0, 20); // reserved
  out.write(text, HEADER_SIZE, 'utf8');
  return out;
}

/**
 * Decodes and checks a message: magic, version, a known type, reserved fields zero, the body
 * length exact, the body a JSON object.
 *
 * @throws {DmaBufError} `EPROTO` for anything malformed.
 */
export function decode(data: Buffer): Message {
  if (data.length < HEADER_SIZE) throw protoError(`a message of ${data.length} bytes is shorter than the ${HEADER_SIZE}-byte header`);
  if (data.length > MAX_MESSAGE) throw protoError(`a message of ${data.length} bytes exceeds the ${MAX_MESSAGE}-byte limit`);
  if (data.readUInt32LE(0) !== MAGIC) throw protoError('bad magic: not a dmabuf message');
  const version = data.readUInt16LE(4);
  if (version !== VERSION) throw protoError(`version ${version} is not supported (this side speaks ${VERSION})`);
  const type = data.readUInt16LE(6);
  if (!TYPE_NAMES.has(type)) throw protoError(`unknown message type ${type}`);
  const id = data.readUInt32LE(8);
  const length = data.readUInt32LE(12);
  if (data.readUInt32LE(16) !== 0 || data.readUInt32LE(20) !== 0) throw protoError('reserved header fields must be zero');
  if (length !== data.length - HEADER_SIZE) throw protoError(`body length ${length} does not match the ${data.length - HEADER_SIZE} bytes received`);
  let body: unknown;
  try {
    body = JSON.parse(data.subarray(HEADER_SIZE).toString('utf8'));
  } catch {
    throw protoError(`the body of a ${typeName(type)} message is not JSON`);
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw protoError(`the body of a ${typeName(type)} message is not a JSON object`);
  }
  return { type: type as MsgTypeValue, id, body: body as Record<string, unknown> };
}

/**
 * The notifications a BATCH carries, checked: at most {@link MAX_BATCH}, each `[type, body]`
 * with a type `allowed` says may come as a notification (a BATCH never nests).
 *
 * @throws {DmaBufError} `EPROTO` for anything else (none of the batch is then run).
 */
export function unbatch(body: Record<string, unknown>, allowed: (type: number) => boolean): Message[] {
  const list = body.messages;
  if (!Array.isArray(list) || list.length === 0 || list.length > MAX_BATCH) throw protoError(`field "messages" of a BATCH must be an array of 1 to ${MAX_BATCH} notifications`);
  return list.map((entry: unknown) => {
    if (!Array.isArray(entry) || entry.length !== 2) throw protoError('a notification in a BATCH must be [type, body]');
    const [type, inner] = entry as [unknown, unknown];
    if (typeof type !== 'number' || type === MsgType.BATCH || !TYPE_NAMES.has(type) || !allowed(type)) throw protoError(`a BATCH may not carry a message of type ${String(type)}`);
    if (typeof inner !== 'object' || inner === null || Array.isArray(inner)) throw protoError('the body of a notification in a BATCH must be a JSON object');
    return { type: type as MsgTypeValue, id: 0, body: inner as Record<string, unknown> };
  });
}

/** Field readers that reject a malformed body with `EPROTO`. */
export const field = {
  /** A non-negative safe integer. */
  uint(body: Record<string, unknown>, name: string, max = Number.MAX_SAFE_INTEGER): number {
    const v = body[name];
    if (!Number.isSafeInteger(v) || (v as number) < 0 || (v as number) > max) throw protoError(`field "${name}" must be an integer in [0, ${max}]`);
    return v as number;
  },
  /** A string of at most `max` characters. */
  str(body: Record<string, unknown>, name: string, max = 4096): string {
    const v = body[name];
    if (typeof v !== 'string' || v.length > max) throw protoError(`field "${name}" must be a string of at most ${max} characters`);
    return v;
  },
  /** A boolean. */
  bool(body: Record<string, unknown>, name: string): boolean {
    const v = body[name];
    if (typeof v !== 'boolean') throw protoError(`field "${name}" must be a boolean`);
    return v;
  },
  /** One of the given strings. */
  oneOf<T extends string>(body: Record<string, unknown>, name: string, values: readonly T[]): T {
    const v = body[name];
    if (typeof v !== 'string' || !values.includes(v as T)) throw protoError(`field "${name}" must be one of ${values.join(', ')}`);
    return v as T;
  },
  /** An array of strings, each at most `maxLength` characters, at most `maxItems` of them. */
  strings(body: Record<string, unknown>, name: string, maxItems: number, maxLength: number): string[] {
    const v = body[name];
    if (!Array.isArray(v) || v.length > maxItems || !v.every((s) => typeof s === 'string' && s.length <= maxLength)) {
      throw protoError(`field "${name}" must be an array of at most ${maxItems} strings`);
    }
    return v as string[];
  },
};

/** A run of equal segments: `count` segments of `length` bytes, back to back from `offset`. */
export type SegmentRun = [offset: number, length: number, count: number];

/** Compresses segments (sorted, not overlapping) into runs. */
export function toRuns(segments: readonly { offset: number; length: number }[]): SegmentRun[] {
  const runs: SegmentRun[] = [];
  for (const s of segments) {
    const last = runs[runs.length - 1];
    if (last && last[1] === s.length && last[0] + last[1] * last[2] === s.offset) {
      last[2] += 1;
    } else {
      runs.push([s.offset, s.length, 1]);
    }
  }
  if (runs.length > MAX_SEGMENT_RUNS) {
    throw new DmaBufError('EMSGSIZE', `protocol: a table of ${runs.length} irregular runs of segments exceeds the limit of ${MAX_SEGMENT_RUNS}`, { op: 'protocol' });
  }
  if (segments.length > MAX_SEGMENTS) {
    throw new DmaBufError('EMSGSIZE', `protocol: a table of ${segments.length} segments exceeds the limit of ${MAX_SEGMENTS} a map for another thread or process may carry`, { op: 'protocol' });
  }
  return runs;
}

/**
 * Expands and checks runs: every segment inside `[0, size)`, ascending, not overlapping, at
 * most `maxSegments` segments and never more than {@link MAX_SEGMENTS} (checked before any
 * run is expanded).
 *
 * @throws {DmaBufError} `EPROTO` for anything else.
 */
export function fromRuns(runs: unknown, size: number, maxSegments: number): { offset: number; length: number }[] {
  if (!Array.isArray(runs) || runs.length === 0 || runs.length > MAX_SEGMENT_RUNS) throw protoError('field "segments" must be a non-empty array of runs');
  const limit = Math.min(maxSegments, MAX_SEGMENTS);
  const out: { offset: number; length: number }[] = [];
  let end = 0;
  for (const r of runs) {
    if (!Array.isArray(r) || r.length !== 3 || !r.every((n) => Number.isSafeInteger(n) && n >= 0)) throw protoError('a run of segments must be [offset, length, count]');
    const [offset, length, count] = r as number[];
    if (length! <= 0 || count! <= 0 || offset! < end || offset! + length! * count! > size) throw protoError('a run of segments lies outside the buffer or overlaps another');
    if (out.length + count! > limit) throw protoError(`the table has more than ${limit} segments`);
    for (let i = 0; i < count!; i++) out.push({ offset: offset! + i * length!, length: length! });
    end = offset! + length! * count!;
  }
  return out;
}
