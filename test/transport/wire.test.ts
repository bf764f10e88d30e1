/**
 * The buffer channel's wire format: encode/decode, limits, every malformed header.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DmaBufError } from '../../src/index.js';
import {
  CHANNEL_HEADER_SIZE, CHANNEL_MAGIC, CHANNEL_MAX_META, CHANNEL_VERSION, ChannelMessageType,
  decodeChannelMessage, encodeChannelMessage,
} from '../../src/transport/channel-wire.js';

function isCode(code: string, pattern?: RegExp) {
  return (e: unknown): boolean => DmaBufError.is(e, code) && (pattern === undefined || pattern.test((e as Error).message));
}

/** A header with the given fields (defaults: a valid BUFFER header) and body. */
function raw(fields: { magic?: number; version?: number; type?: number; metaLength?: number; reserved?: number } = {}, body = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(CHANNEL_HEADER_SIZE + body.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, fields.magic ?? CHANNEL_MAGIC, true);
  v.setUint16(4, fields.version ?? CHANNEL_VERSION, true);
  v.setUint16(6, fields.type ?? ChannelMessageType.BUFFER, true);
  v.setUint32(8, fields.metaLength ?? body.length, true);
  v.setUint32(12, fields.reserved ?? 0, true);
  out.set(body, CHANNEL_HEADER_SIZE);
  return out;
}

test('the header is 16 little-endian bytes starting with "DBCH", version 1, type 1', () => {
  const bytes = encodeChannelMessage({ a: 1 });
  const json = Buffer.from('{"a":1}');
  assert.equal(bytes.length, 16 + json.length);
  assert.deepEqual([...bytes.subarray(0, 4)], [...Buffer.from('DBCH')]);
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  assert.equal(v.getUint32(0, true), CHANNEL_MAGIC);
  assert.equal(v.getUint16(4, true), 1);
  assert.equal(v.getUint16(6, true), 1);
  assert.equal(v.getUint32(8, true), json.length);
  assert.equal(v.getUint32(12, true), 0);
  assert.deepEqual(Buffer.from(bytes.subarray(16)), json);
});

test('round trip of metadata; undefined means no metadata (metaLength 0)', () => {
  const values: unknown[] = [null, 0, -1.5, 'text', 'ünïcødé ✓', true, [], [1, 'two', null], { nested: { deep: [1, 2, { x: 'y' }] } }];
  for (const v of values) {
    const d = decodeChannelMessage(encodeChannelMessage(v));
    assert.equal(d.type, ChannelMessageType.BUFFER);
    assert.deepEqual(d.meta, v);
  }
  const none = encodeChannelMessage(undefined);
  assert.equal(none.length, CHANNEL_HEADER_SIZE);
  assert.equal(decodeChannelMessage(none).meta, undefined);
  // Decoding works on a view at an offset of a larger buffer.
  const big = new Uint8Array(100);
  const enc = encodeChannelMessage({ k: 'v' });
  big.set(enc, 7);
  assert.deepEqual(decodeChannelMessage(big.subarray(7, 7 + enc.length)).meta, { k: 'v' });
});

test('encode: metadata without a JSON form is EINVAL; over 60 KiB is EMSGSIZE', () => {
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  assert.throws(() => encodeChannelMessage(cyclic), isCode('EINVAL', /JSON/));
  assert.throws(() => encodeChannelMessage(10n), isCode('EINVAL', /JSON/));
  assert.throws(() => encodeChannelMessage(() => 1), isCode('EINVAL', /no JSON form/));
  assert.throws(() => encodeChannelMessage(Symbol('x')), isCode('EINVAL'));
  const atLimit = 'x'.repeat(CHANNEL_MAX_META - 2); // plus two quotes
  assert.equal(encodeChannelMessage(atLimit).length, CHANNEL_HEADER_SIZE + CHANNEL_MAX_META);
  assert.throws(() => encodeChannelMessage(atLimit + 'y'), isCode('EMSGSIZE', /61441 bytes.*61440/));
  // The limit counts UTF-8 bytes, not characters.
  assert.throws(() => encodeChannelMessage('é'.repeat(CHANNEL_MAX_META / 2)), isCode('EMSGSIZE'));
});

test('decode: every malformed header is EPROTO with a message that says what is wrong', () => {
  const body = Buffer.from('{"ok":true}');
  assert.deepEqual(decodeChannelMessage(raw({}, body)).meta, { ok: true });
  const cases: Array<[Uint8Array, RegExp]> = [
    [new Uint8Array(0), /0 bytes, shorter than the 16-byte header/],
    [raw().subarray(0, 15), /15 bytes/],
    [raw({ magic: 0x12345678 }), /bad magic 0x12345678/],
    [raw({ version: 2 }), /unsupported version 2/],
    [raw({ version: 0 }), /unsupported version 0/],
    [raw({ type: 0 }), /unknown message type 0/],
    [raw({ type: 3 }), /unknown message type 3/],
    [raw({ type: 2 }), /HANDOFF message without its body/],
    [raw({ reserved: 1 }), /reserved field is 0x1, must be 0/],
    [raw({ reserved: 0x80000000 }), /reserved/],
    [raw({ metaLength: CHANNEL_MAX_META + 1 }), /over the limit/],
    [raw({ metaLength: 0xffffffff }), /over the limit/],
    [raw({ metaLength: body.length + 1 }, body), /says 12 bytes but 11 follow/],
    [raw({ metaLength: body.length - 1 }, body), /says 10 bytes but 11 follow/],
    [raw({}, Buffer.from('{"ok":')), /not JSON/],
    [raw({}, Buffer.from('undefined')), /not JSON/],
    [raw({}, Uint8Array.from([0x22, 0xff, 0xfe, 0x22])), /not valid UTF-8/],
  ];
  for (const [bytes, pattern] of cases) {
    assert.throws(() => decodeChannelMessage(bytes), isCode('EPROTO', pattern), `expected ${pattern}`);
  }
});

test('decode never throws anything but EPROTO on random and mutated input', () => {
  let seed = 12345;
  const rand = (): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed;
  };
  const good = encodeChannelMessage({ frame: 1, name: 'x' });
  for (let i = 0; i < 5000; i++) {
    let bytes: Uint8Array;
    if (i % 2 === 0) {
      bytes = Uint8Array.from({ length: rand() % 64 }, () => rand() & 0xff);
    } else {
      bytes = Uint8Array.from(good);
      const flips = 1 + (rand() % 3);
      for (let f = 0; f < flips; f++) bytes[rand() % bytes.length] = rand() & 0xff;
      if (rand() % 4 === 0) bytes = bytes.subarray(0, rand() % bytes.length);
    }
    try {
      decodeChannelMessage(bytes);
    } catch (e) {
      assert.ok(DmaBufError.is(e, 'EPROTO'), `unexpected ${String(e)}`);
    }
  }
});
