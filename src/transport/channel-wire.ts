/**
 * The wire format of a {@link BufferChannel} message: a small binary header followed by UTF-8
 * JSON metadata. Pure functions, no descriptors and no system calls, so the format can be
 * tested and fuzzed on its own. `docs/protocol.md` ("Buffer channels") is the reference.
 *
 * ```
 * offset size field       value
 * 0      4    magic       0x48434244 (bytes "DBCH"), little-endian u32
 * 4      2    version     1
 * 6      2    type        1 = BUFFER
 * 8      4    metaLength  bytes of metadata that follow (0 = no metadata), at most 61440
 * 12     4    reserved    must be 0
 * 16     n    meta        UTF-8 JSON, exactly metaLength bytes
 * ```
 * Every message carries exactly one descriptor (SCM_RIGHTS); that rule is checked by the
 * channel, not here.
 *
 * @module
 */
import { DmaBufError } from '../core/errors.js';

/** `"DBCH"` read as a little-endian u32. */
export const CHANNEL_MAGIC = 0x48434244;
/** The only version this release speaks. */
export const CHANNEL_VERSION = 1;
/** Bytes of the fixed header. */
export const CHANNEL_HEADER_SIZE = 16;
/** Largest metadata (bytes of UTF-8 JSON) a message may carry: 60 KiB. */
export const CHANNEL_MAX_META = 60 * 1024;
/** Largest message on the wire: the header plus the largest metadata. */
export const CHANNEL_MAX_MESSAGE = CHANNEL_HEADER_SIZE + CHANNEL_MAX_META;

/** Message types. */
export const ChannelMessageType = {
  /** A buffer (or raw descriptor) with optional metadata; carries exactly one descriptor. */
  BUFFER: 1,
  /**
   * A buffer handed off by its exporter: the body is `{"meta": ..., "handoff": {...}}`; the
   * first descriptor is the buffer's file, the others those the hand-off describes (at most
   * {@link HANDOFF_MAX_FDS} in all).
   */
  HANDOFF: 2,
} as const;

/** Most descriptors a HANDOFF message carries: the file, the memory, a channel. */
export const HANDOFF_MAX_FDS = 3;

/** A decoded message. */
export interface ChannelMessage {
  /** The message type ({@link ChannelMessageType}). */
  type: number;
  /** The parsed metadata; `undefined` when the message carried none (metaLength 0). */
  meta: unknown;
  /** For a HANDOFF message, the exporter's offer (an object, not yet checked). */
  handoff?: Record<string, unknown>;
}

const decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * Encodes a BUFFER message: the header and the metadata as JSON. `meta` `undefined` sends no
 * metadata (the receiver gets `undefined`); anything else must survive `JSON.stringify`.
 *
 * @throws {DmaBufError} `EINVAL` when `meta` cannot be serialised as JSON (a cycle, a
 *   `BigInt`, a function); `EMSGSIZE` when its JSON is over {@link CHANNEL_MAX_META} bytes.
 * @example
 * ```ts
 * const bytes = encodeChannelMessage({ frame: 17, width: 1920 });
 * ```
 */
export function encodeChannelMessage(meta?: unknown, op = 'send'): Uint8Array {
  return encodeBody(ChannelMessageType.BUFFER, meta, op);
}

/**
 * Encodes a HANDOFF message: the metadata and the exporter's offer.
 *
 * @throws {DmaBufError} as {@link encodeChannelMessage}, the limit counting the offer too.
 */
export function encodeHandoffMessage(meta: unknown, handoff: Record<string, unknown>, op = 'send'): Uint8Array {
  const metaText = checkJson(meta, op);
  const handoffText = JSON.stringify(handoff);
  return encodeText(ChannelMessageType.HANDOFF, metaText === undefined ? `{"handoff":${handoffText}}` : `{"meta":${metaText},"handoff":${handoffText}}`, op);
}

function checkJson(meta: unknown, op: string): string | undefined {
  if (meta === undefined) return undefined;
  let text: string | undefined;
  try {
    text = JSON.stringify(meta);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new DmaBufError('EINVAL', `${op}: the metadata cannot be sent as JSON (${msg}); send plain objects, arrays, strings, numbers and booleans`, { op, cause: err });
  }
  if (text === undefined) {
    throw new DmaBufError('EINVAL', `${op}: the metadata (a ${typeof meta}) has no JSON form; send plain objects, arrays, strings, numbers and booleans`, { op });
  }
  return text;
}

function encodeBody(type: number, meta: unknown, op: string): Uint8Array {
  return encodeText(type, meta === undefined ? '' : checkJson(meta, op)!, op);
}

/** A message of `type` whose metadata is the JSON `text` ('' for none). */
function encodeText(type: number, text: string, op: string): Uint8Array {
  const length = Buffer.byteLength(text, 'utf8');
  if (length > CHANNEL_MAX_META) {
    throw new DmaBufError('EMSGSIZE', `${op}: the metadata is ${length} bytes of JSON, over the limit of ${CHANNEL_MAX_META}; send large data in a buffer, not in its metadata`, { op });
  }
  // Every byte is written below: the header's fields, then the metadata.
  const out = Buffer.allocUnsafe(CHANNEL_HEADER_SIZE + length);
  out.writeUInt32LE(CHANNEL_MAGIC, 0);
  out.writeUInt16LE(CHANNEL_VERSION, 4);
  out.writeUInt16LE(type, 6);
  out.writeUInt32LE(length, 8);
  out.writeUInt32LE(0, 12);
  out.write(text, CHANNEL_HEADER_SIZE, 'utf8');
  return out;
}

function malformed(op: string, what: string): DmaBufError {
  return new DmaBufError('EPROTO', `${op}: malformed message from the peer: ${what}; the message was dropped (is the peer a BufferChannel of a compatible version?)`, { op });
}

/**
 * Decodes one message (the whole datagram as received).
 *
 * @throws {DmaBufError} `EPROTO` for anything but a well-formed version-1 BUFFER message:
 *   shorter than the header, a wrong magic, another version or type, a reserved field not
 *   zero, a metaLength over the limit or different from the bytes that follow, metadata that
 *   is not UTF-8 or not JSON.
 * @example
 * ```ts
 * const { meta } = decodeChannelMessage(encodeChannelMessage({ n: 1 })); // { n: 1 }
 * ```
 */
export function decodeChannelMessage(data: Uint8Array, op = 'receive'): ChannelMessage {
  if (data.length < CHANNEL_HEADER_SIZE) {
    throw malformed(op, `${data.length} bytes, shorter than the ${CHANNEL_HEADER_SIZE}-byte header`);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const magic = view.getUint32(0, true);
  if (magic !== CHANNEL_MAGIC) {
    throw malformed(op, `bad magic 0x${magic.toString(16).padStart(8, '0')} (expected 0x${CHANNEL_MAGIC.toString(16)})`);
  }
  const version = view.getUint16(4, true);
  if (version !== CHANNEL_VERSION) {
    throw malformed(op, `unsupported version ${version} (this side speaks version ${CHANNEL_VERSION})`);
  }
  const type = view.getUint16(6, true);
  if (type !== ChannelMessageType.BUFFER && type !== ChannelMessageType.HANDOFF) {
    throw malformed(op, `unknown message type ${type}`);
  }
  const metaLength = view.getUint32(8, true);
  const reserved = view.getUint32(12, true);
  if (reserved !== 0) {
    throw malformed(op, `reserved field is 0x${reserved.toString(16)}, must be 0`);
  }
  if (metaLength > CHANNEL_MAX_META) {
    throw malformed(op, `metaLength ${metaLength} is over the limit of ${CHANNEL_MAX_META}`);
  }
  const body = data.length - CHANNEL_HEADER_SIZE;
  if (metaLength !== body) {
    throw malformed(op, `metaLength says ${metaLength} bytes but ${body} follow the header`);
  }
  if (metaLength === 0) {
    if (type === ChannelMessageType.HANDOFF) throw malformed(op, 'a HANDOFF message without its body');
    return { type, meta: undefined };
  }
  let text: string;
  try {
    text = decoder.decode(data.subarray(CHANNEL_HEADER_SIZE));
  } catch {
    throw malformed(op, 'metadata is not valid UTF-8');
  }
  let meta: unknown;
  try {
    meta = JSON.parse(text) as unknown;
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw malformed(op, `metadata is not JSON (${msg})`);
  }
  if (type === ChannelMessageType.BUFFER) return { type, meta };
  const whole = meta as Record<string, unknown> | null;
  if (typeof whole !== 'object' || whole === null || Array.isArray(whole) || typeof whole.handoff !== 'object' || whole.handoff === null || Array.isArray(whole.handoff)) {
    throw malformed(op, 'a HANDOFF body must be an object with an object "handoff"');
  }
  return { type, meta: whole.meta, handoff: whole.handoff as Record<string, unknown> };
}
