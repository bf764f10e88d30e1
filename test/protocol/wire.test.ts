/**
 * The import protocol's wire format, unit by unit: encode, decode, the field readers, runs of
 * segments, and the error an ERROR message becomes. Every rejection is a DmaBufError with
 * `EPROTO` (malformed input) or `EMSGSIZE` (too large to send), as the code promises.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { DmaBufError } from '../../src/core/errors.js';
import {
  HEADER_SIZE, MAGIC, MAX_MESSAGE, MAX_SEGMENTS, MAX_SEGMENT_RUNS, MsgType, VERSION,
  decode, encode, field, fromRuns, toRuns, typeName,
} from '../../src/remote/protocol.js';
import { remoteError } from '../../src/remote/connection.js';
import { patched, withBody } from './raw.js';

const isCode = (code: string) => (e: unknown): boolean => {
  assert.ok(e instanceof DmaBufError, `expected a DmaBufError, got ${String(e)}`);
  assert.equal(e.code, code, e.message);
  assert.equal(e.op, 'protocol');
  return true;
};
const proto = isCode('EPROTO');
const tooBig = isCode('EMSGSIZE');

const ALL_TYPES = Object.values(MsgType);

test('encode writes the 24-byte little-endian header: magic, version, type, id, body length, two reserved zero words', () => {
  const b = encode(MsgType.MAP, 0x01020304, { attachment: 7, direction: 'to-device' });
  const body = JSON.stringify({ attachment: 7, direction: 'to-device' });
  assert.equal(HEADER_SIZE, 24);
  assert.equal(b.length, HEADER_SIZE + body.length);
  assert.equal(b.readUInt32LE(0), MAGIC);
  assert.equal(b.subarray(0, 4).toString('latin1'), 'DMAB');
  assert.equal(b.readUInt16LE(4), VERSION);
  assert.equal(VERSION, 1);
  assert.equal(b.readUInt16LE(6), MsgType.MAP);
  assert.equal(b.readUInt32LE(8), 0x01020304);
  assert.equal(b.readUInt32LE(12), body.length);
  assert.equal(b.readUInt32LE(16), 0, 'flags are reserved');
  assert.equal(b.readUInt32LE(20), 0, 'reserved');
  assert.equal(b.subarray(HEADER_SIZE).toString('utf8'), body);
});

test('encode: the type numbers are fixed (HELLO 1, ATTACH 3 ... ERROR 9, RESV_ADD 10 ... CANCEL 15, BATCH 16; 2 is unused)', () => {
  assert.deepEqual({ ...MsgType }, { HELLO: 1, ATTACH: 3, DETACH: 4, MAP: 5, UNMAP: 6, PUT: 7, REPLY: 8, ERROR: 9, RESV_ADD: 10, RESV_FENCES: 11, RESV_WAIT: 12, RESV_EXPORT: 13, CPU_ACCESS: 14, CANCEL: 15, BATCH: 16 });
  for (const [name, v] of Object.entries(MsgType)) assert.equal(typeName(v), name);
  assert.equal(typeName(2), 'type 2');
  assert.equal(typeName(65535), 'type 65535');
});

test('encode: the id is written as a u32 (negative and larger ids wrap), the body defaults to {}', () => {
  assert.equal(encode(MsgType.PUT, -1).readUInt32LE(8), 0xffffffff);
  assert.equal(encode(MsgType.PUT, 2 ** 32 + 5).readUInt32LE(8), 5);
  const b = encode(MsgType.PUT, 0);
  assert.equal(b.subarray(HEADER_SIZE).toString(), '{}');
  assert.equal(b.readUInt32LE(12), 2);
});

test('encode: a message of exactly MAX_MESSAGE bytes is accepted, one more byte is EMSGSIZE', () => {
  assert.equal(MAX_MESSAGE, 64 * 1024);
  // {"s":"..."} is 8 bytes of JSON around the string.
  const fits = 'x'.repeat(MAX_MESSAGE - HEADER_SIZE - 8);
  const b = encode(MsgType.ERROR, 1, { s: fits });
  assert.equal(b.length, MAX_MESSAGE);
  assert.equal(decode(b).body.s, fits);
  assert.throws(() => encode(MsgType.ERROR, 1, { s: `${fits}x` }), tooBig);
  // The limit is in bytes of UTF-8, not characters.
  assert.throws(() => encode(MsgType.ERROR, 1, { s: 'é'.repeat(MAX_MESSAGE / 2) }), tooBig);
});

test('decode round-trips every type and any JSON object body', () => {
  for (const type of ALL_TYPES) {
    const body = { a: 1, b: 'two', c: [true, null, { d: 1.5 }], e: 'ünïcødé 🙂' };
    const m = decode(encode(type, 42, body));
    assert.deepEqual(m, { type, id: 42, body });
  }
  fc.assert(fc.property(fc.constantFrom(...ALL_TYPES), fc.nat({ max: 0xffffffff }), fc.dictionary(fc.string(), fc.jsonValue()), (type, id, body) => {
    const clean = JSON.parse(JSON.stringify(body)) as Record<string, unknown>;
    assert.deepEqual(decode(encode(type, id, clean)), { type, id, body: clean });
  }), { seed: 3, numRuns: 300 });
});

test('decode accepts a view with a non-zero byteOffset, and a message of exactly MAX_MESSAGE bytes', () => {
  const msg = encode(MsgType.REPLY, 9, { ok: true });
  const big = Buffer.alloc(msg.length + 100);
  msg.copy(big, 37);
  assert.deepEqual(decode(big.subarray(37, 37 + msg.length)), { type: MsgType.REPLY, id: 9, body: { ok: true } });
  const full = encode(MsgType.REPLY, 1, { s: 'y'.repeat(MAX_MESSAGE - HEADER_SIZE - 8) });
  assert.equal(decode(full).type, MsgType.REPLY);
});

test('decode rejects anything shorter than the header with EPROTO', () => {
  const good = encode(MsgType.PUT, 1, {});
  for (let n = 0; n < HEADER_SIZE; n++) {
    assert.throws(() => decode(good.subarray(0, n)), (e: unknown) => proto(e) && /shorter than the 24-byte header/.test((e as Error).message));
  }
});

test('decode rejects a message longer than MAX_MESSAGE with EPROTO (never reads it)', () => {
  const huge = Buffer.alloc(MAX_MESSAGE + 1);
  encode(MsgType.PUT, 1, {}).copy(huge);
  assert.throws(() => decode(huge), (e: unknown) => proto(e) && /exceeds the 65536-byte limit/.test((e as Error).message));
});

test('decode rejects a bad magic with EPROTO', () => {
  for (const magic of [0, 0x44414d42 /* 'BMAD' */, MAGIC + 1, 0xffffffff]) {
    assert.throws(() => decode(patched(MsgType.PUT, 1, {}, { magic })), (e: unknown) => proto(e) && /bad magic/.test((e as Error).message));
  }
});

test('decode rejects every version but 1 with EPROTO, naming both versions', () => {
  for (const version of [0, 2, 3, 0x100, 0xffff]) {
    assert.throws(() => decode(patched(MsgType.HELLO, 1, {}, { version })),
      (e: unknown) => proto(e) && (e as Error).message.includes(`version ${version} is not supported (this side speaks 1)`));
  }
});

test('decode rejects unknown types (0, 2, 17 .. 65535) with EPROTO', () => {
  for (const type of [0, 2, 17, 18, 255, 256, 0x8001, 0xffff]) {
    assert.throws(() => decode(patched(MsgType.PUT, 1, {}, { type })), (e: unknown) => proto(e) && (e as Error).message.includes(`unknown message type ${type}`));
  }
});

test('decode rejects a non-zero flags or reserved word with EPROTO (every bit)', () => {
  for (let bit = 0; bit < 32; bit++) {
    const v = (2 ** bit) >>> 0;
    assert.throws(() => decode(patched(MsgType.PUT, 1, {}, { flags: v })), (e: unknown) => proto(e) && /reserved header fields must be zero/.test((e as Error).message));
    assert.throws(() => decode(patched(MsgType.PUT, 1, {}, { reserved: v })), (e: unknown) => proto(e) && /reserved header fields must be zero/.test((e as Error).message));
  }
});

test('decode rejects a body length that does not match the bytes received with EPROTO', () => {
  const good = encode(MsgType.ATTACH, 1, { buffer: 1 });
  const n = good.length - HEADER_SIZE;
  for (const length of [0, n - 1, n + 1, 0xffffffff]) {
    assert.throws(() => decode(patched(MsgType.ATTACH, 1, { buffer: 1 }, { length })), (e: unknown) => proto(e) && /body length/.test((e as Error).message));
  }
  // A truncated message: the header promises more than arrived.
  assert.throws(() => decode(good.subarray(0, good.length - 1)), proto);
  // Trailing bytes after the body.
  assert.throws(() => decode(Buffer.concat([good, Buffer.from(' ')])), proto);
});

test('decode rejects a body that is not JSON with EPROTO', () => {
  for (const text of ['', '{', '{"a":1', '{"a":1}}', '{a:1}', "{'a':1}", '{"a":undefined}', '{"a":NaN}', '\u0000', '{"a":1} x']) {
    assert.throws(() => decode(withBody(MsgType.MAP, 1, Buffer.from(text))), (e: unknown) => proto(e) && /is not JSON/.test((e as Error).message), JSON.stringify(text));
  }
  // Bytes that are not UTF-8 outside a string break the JSON.
  assert.throws(() => decode(withBody(MsgType.MAP, 1, Buffer.from([0x7b, 0xff, 0xfe, 0x7d]))), proto);
});

test('decode: bytes that are not UTF-8 inside a JSON string become U+FFFD (not an error)', () => {
  const body = Buffer.concat([Buffer.from('{"s":"'), Buffer.from([0xff, 0xc0]), Buffer.from('"}')]);
  assert.equal(decode(withBody(MsgType.MAP, 1, body)).body.s, '\ufffd\ufffd');
});

test('decode rejects a JSON body that is not an object with EPROTO', () => {
  for (const text of ['[]', '[1,2]', 'null', '0', '-1.5', '"str"', 'true', 'false']) {
    assert.throws(() => decode(withBody(MsgType.REPLY, 1, Buffer.from(text))), (e: unknown) => proto(e) && /is not a JSON object/.test((e as Error).message), text);
  }
});

test('decode survives deeply nested JSON (no stack overflow) and a body of the largest size', () => {
  const depth = (MAX_MESSAGE - HEADER_SIZE - 16) >> 1;
  const nested = `{"a":${'['.repeat(depth)}${']'.repeat(depth)}}`;
  const m = decode(withBody(MsgType.ATTACH, 3, Buffer.from(nested)));
  assert.equal(m.type, MsgType.ATTACH);
  assert.throws(() => field.uint(m.body, 'a'), proto);
});

test('decode: a "__proto__" key is an own property and cannot smuggle fields in', () => {
  const m = decode(withBody(MsgType.ATTACH, 1, Buffer.from('{"__proto__":{"buffer":5,"attachment":1}}')));
  assert.equal(Object.getPrototypeOf(m.body), Object.prototype);
  assert.throws(() => field.uint(m.body, 'buffer'), proto);
  assert.throws(() => field.uint(m.body, 'attachment'), proto);
  assert.equal(({} as Record<string, unknown>).buffer, undefined, 'Object.prototype is untouched');
});

test('field.uint accepts a non-negative safe integer up to max; anything else is EPROTO', () => {
  assert.equal(field.uint({ n: 0 }, 'n'), 0);
  assert.equal(field.uint({ n: Number.MAX_SAFE_INTEGER }, 'n'), Number.MAX_SAFE_INTEGER);
  assert.equal(field.uint({ n: 0xffffffff }, 'n', 0xffffffff), 0xffffffff);
  assert.equal(field.uint({ n: -0 }, 'n'), -0);
  const bad: unknown[] = [-1, 1.5, NaN, Infinity, -Infinity, 2 ** 53, '1', '0', null, undefined, true, [], [1], {}, 1n];
  for (const v of bad) assert.throws(() => field.uint({ n: v }, 'n'), (e: unknown) => proto(e) && /field "n" must be an integer/.test((e as Error).message), String(v));
  assert.throws(() => field.uint({}, 'n'), proto);
  assert.throws(() => field.uint({ n: 0x100000000 }, 'n', 0xffffffff), (e: unknown) => proto(e) && /\[0, 4294967295\]/.test((e as Error).message));
});

test('field.str accepts a string of at most max characters (default 4096); anything else is EPROTO', () => {
  assert.equal(field.str({ s: '' }, 's'), '');
  assert.equal(field.str({ s: 'x'.repeat(4096) }, 's').length, 4096);
  assert.throws(() => field.str({ s: 'x'.repeat(4097) }, 's'), proto);
  assert.equal(field.str({ s: 'abc' }, 's', 3), 'abc');
  assert.throws(() => field.str({ s: 'abcd' }, 's', 3), (e: unknown) => proto(e) && /at most 3 characters/.test((e as Error).message));
  for (const v of [1, null, undefined, true, ['a'], { a: 1 }]) assert.throws(() => field.str({ s: v }, 's'), proto, String(v));
});

test('field.bool accepts only true and false; anything else is EPROTO', () => {
  assert.equal(field.bool({ b: true }, 'b'), true);
  assert.equal(field.bool({ b: false }, 'b'), false);
  for (const v of [0, 1, 'true', 'false', null, undefined, [], {}]) assert.throws(() => field.bool({ b: v }, 'b'), proto, String(v));
});

test('field.oneOf accepts only one of the values; anything else is EPROTO', () => {
  const dirs = ['bidirectional', 'to-device', 'from-device', 'none'] as const;
  for (const d of dirs) assert.equal(field.oneOf({ d }, 'd', dirs), d);
  for (const v of ['Bidirectional', 'to_device', '', 'toString', 'constructor', 1, null, undefined, ['none'], { none: 1 }]) {
    assert.throws(() => field.oneOf({ d: v }, 'd', dirs), (e: unknown) => proto(e) && /must be one of bidirectional, to-device, from-device, none/.test((e as Error).message), String(v));
  }
});

test('field.strings accepts an array of at most maxItems strings of at most maxLength; anything else is EPROTO', () => {
  assert.deepEqual(field.strings({ t: [] }, 't', 2, 3), []);
  assert.deepEqual(field.strings({ t: ['abc', ''] }, 't', 2, 3), ['abc', '']);
  for (const v of [['a', 'b', 'c'], ['abcd'], [1], [null], ['a', 2], 'abc', null, undefined, {}, { 0: 'a', length: 1 }]) {
    assert.throws(() => field.strings({ t: v }, 't', 2, 3), (e: unknown) => proto(e) && /must be an array of at most 2 strings/.test((e as Error).message), JSON.stringify(v));
  }
});

test('toRuns compresses back-to-back segments of one length into runs', () => {
  assert.deepEqual(toRuns([]), []);
  assert.deepEqual(toRuns([{ offset: 0, length: 4096 }]), [[0, 4096, 1]]);
  assert.deepEqual(toRuns([0, 1, 2, 3].map((i) => ({ offset: i * 100, length: 100 }))), [[0, 100, 4]]);
  // A shorter last segment starts a new run.
  assert.deepEqual(toRuns([{ offset: 0, length: 100 }, { offset: 100, length: 100 }, { offset: 200, length: 50 }]), [[0, 100, 2], [200, 50, 1]]);
  // A gap starts a new run.
  assert.deepEqual(toRuns([{ offset: 0, length: 10 }, { offset: 20, length: 10 }, { offset: 30, length: 10 }]), [[0, 10, 1], [20, 10, 2]]);
});

test('toRuns: up to MAX_SEGMENT_RUNS irregular runs are accepted, one more is EMSGSIZE', () => {
  assert.equal(MAX_SEGMENT_RUNS, 2048);
  const gappy = (n: number) => Array.from({ length: n }, (_, i) => ({ offset: 2 * i, length: 1 }));
  assert.equal(toRuns(gappy(MAX_SEGMENT_RUNS)).length, MAX_SEGMENT_RUNS);
  assert.throws(() => toRuns(gappy(MAX_SEGMENT_RUNS + 1)), (e: unknown) => tooBig(e) && /2049 irregular runs/.test((e as Error).message));
});

test('toRuns: the largest table of runs still fits in one message with offsets near 2^53', () => {
  const step = Math.floor(Number.MAX_SAFE_INTEGER / (2 * MAX_SEGMENT_RUNS));
  const segs = Array.from({ length: MAX_SEGMENT_RUNS }, (_, i) => ({ offset: Number.MAX_SAFE_INTEGER - (MAX_SEGMENT_RUNS - i) * step, length: 4096 }));
  const runs = toRuns(segs);
  const msg = encode(MsgType.REPLY, 1, { map: 0xffffffff, segments: runs, memory: { size: Number.MAX_SAFE_INTEGER, pageSize: 2097152, writeSealed: false }, access: 'write' });
  assert.ok(msg.length <= MAX_MESSAGE, `${msg.length} bytes`);
});

test('toRuns: more than MAX_SEGMENTS segments is EMSGSIZE, even when they compress into one run', () => {
  assert.equal(MAX_SEGMENTS, 1 << 20);
  const mk = (n: number) => Array.from({ length: n }, (_, i) => ({ offset: i, length: 1 }));
  assert.deepEqual(toRuns(mk(MAX_SEGMENTS)), [[0, 1, MAX_SEGMENTS]]);
  assert.throws(() => toRuns(mk(MAX_SEGMENTS + 1)), (e: unknown) => tooBig(e) && /segments exceeds the limit/.test((e as Error).message));
});

test('fromRuns expands runs into segments', () => {
  assert.deepEqual(fromRuns([[0, 100, 2], [200, 50, 1]], 250, 10), [{ offset: 0, length: 100 }, { offset: 100, length: 100 }, { offset: 200, length: 50 }]);
  // Adjacent runs and a run that ends exactly at the size are fine.
  assert.deepEqual(fromRuns([[0, 1, 1], [1, 1, 1]], 2, 2), [{ offset: 0, length: 1 }, { offset: 1, length: 1 }]);
});

test('fromRuns(toRuns(segments)) is the identity for any sorted, non-overlapping segments', () => {
  fc.assert(fc.property(fc.array(fc.record({ gap: fc.nat({ max: 3 }), length: fc.integer({ min: 1, max: 4 }) }), { minLength: 1, maxLength: 200 }), (parts) => {
    const segs: { offset: number; length: number }[] = [];
    let at = 0;
    for (const p of parts) {
      at += p.gap;
      segs.push({ offset: at, length: p.length });
      at += p.length;
    }
    assert.deepEqual(fromRuns(JSON.parse(JSON.stringify(toRuns(segs))), at, segs.length), segs);
  }), { seed: 5, numRuns: 300 });
});

test('fromRuns rejects a runs field that is not a non-empty array of at most MAX_SEGMENT_RUNS runs with EPROTO', () => {
  for (const v of [undefined, null, {}, 'runs', 1, [], { length: 1, 0: [0, 1, 1] }]) {
    assert.throws(() => fromRuns(v, 100, 100), (e: unknown) => proto(e) && /non-empty array of runs/.test((e as Error).message), JSON.stringify(v));
  }
  const many = Array.from({ length: MAX_SEGMENT_RUNS + 1 }, (_, i) => [2 * i, 1, 1]);
  assert.throws(() => fromRuns(many, 1e9, 1e9), proto);
  assert.equal(fromRuns(many.slice(0, MAX_SEGMENT_RUNS), 1e9, 1e9).length, MAX_SEGMENT_RUNS);
});

test('fromRuns rejects a run that is not [offset, length, count] of safe non-negative integers with EPROTO', () => {
  const bad: unknown[] = [[0, 1], [0, 1, 1, 1], [], 'run', null, {}, [0, '1', 1], [-1, 1, 1], [0, -1, 1], [0, 1, -1], [0.5, 1, 1], [0, 1, 1.5], [2 ** 53, 1, 1], [0, NaN, 1], [0, 1, null], [0, 1, true]];
  for (const r of bad) {
    assert.throws(() => fromRuns([r], 2 ** 60, 1e9), (e: unknown) => proto(e) && /must be \[offset, length, count\]/.test((e as Error).message), JSON.stringify(r));
  }
});

test('fromRuns rejects empty, overlapping, unsorted or out-of-bounds runs with EPROTO', () => {
  const outside = (runs: unknown, size: number): void => {
    assert.throws(() => fromRuns(runs, size, 1e9), (e: unknown) => proto(e) && /outside the buffer or overlaps/.test((e as Error).message), JSON.stringify(runs));
  };
  outside([[0, 0, 1]], 10); // zero length
  outside([[0, 1, 0]], 10); // zero count
  outside([[0, 4, 3]], 11); // ends past the size
  outside([[10, 1, 1]], 10); // starts at the size
  outside([[0, 4, 2], [7, 1, 1]], 100); // overlaps the previous run
  outside([[5, 1, 1], [0, 1, 1]], 100); // not ascending
  outside([[0, 2 ** 52, 2 ** 52]], Number.MAX_SAFE_INTEGER); // the product overflows any size
  outside([[Number.MAX_SAFE_INTEGER, 1, 1]], Number.MAX_SAFE_INTEGER);
});

test('fromRuns rejects more segments than the device takes with EPROTO, counted across runs', () => {
  assert.equal(fromRuns([[0, 1, 3], [5, 1, 2]], 10, 5).length, 5);
  assert.throws(() => fromRuns([[0, 1, 3], [5, 1, 3]], 10, 5), (e: unknown) => proto(e) && /more than 5 segments/.test((e as Error).message));
});

test('fromRuns refuses a tiny reply that would expand into more than MAX_SEGMENTS segments, before expanding it', () => {
  // Without the bound, [[0, 1, 2^40]] made an importer with default constraints allocate
  // segments until it died of memory exhaustion (2^40 segments would never finish here).
  for (const count of [MAX_SEGMENTS + 1, 1e9, 2 ** 40]) {
    assert.throws(() => fromRuns([[0, 1, count]], 2 ** 52, Number.MAX_SAFE_INTEGER), (e: unknown) => proto(e) && /more than 1048576 segments/.test((e as Error).message));
  }
  assert.throws(() => fromRuns([[0, 1, MAX_SEGMENTS], [MAX_SEGMENTS, 1, 1]], 2 ** 52, Number.MAX_SAFE_INTEGER), proto);
  assert.equal(fromRuns([[0, 1, MAX_SEGMENTS]], MAX_SEGMENTS, Number.MAX_SAFE_INTEGER).length, MAX_SEGMENTS);
});

test('an ERROR message becomes a DmaBufError with its code, or EPROTO for a code that is not an errno name', () => {
  const err = (body: Record<string, unknown>) => remoteError({ type: MsgType.ERROR, id: 1, body }, MsgType.MAP);
  const a = err({ code: 'EBUSY', message: 'storage is moving' });
  assert.ok(a instanceof DmaBufError);
  assert.equal(a.code, 'EBUSY');
  assert.equal(a.op, 'map');
  assert.match(a.message, /^storage is moving \(answered by the exporter\)$/);
  for (const code of ['ebusy', 'BUSY', 'E', 'EABCDEFGHIJKLMNOP', 'E-1', 'E BUSY', 1, null, undefined, ['EBUSY'], '__proto__']) {
    assert.equal(err({ code, message: 'x' }).code, 'EPROTO', String(code));
  }
  assert.equal(err({ code: 'E2BIG' }).code, 'E2BIG');
  assert.match(err({ code: 'EIO' }).message, /the exporter failed without a message/);
  assert.equal(err({ code: 'EIO', message: 'm'.repeat(5000) }).message.length, 1024 + ' (answered by the exporter)'.length);
  assert.equal(err({ code: 'EIO', message: 42 }).message, 'the exporter failed without a message (answered by the exporter)');
});
