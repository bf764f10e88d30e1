/**
 * "Protocol and bad input" (issue 3), one named test per bullet, against both sides: the
 * exporter's service (messages crafted by hand into a buffer's file and into a channel) and
 * the importer (a fake exporter written here answers `DmaBuf.get` and the importer's
 * requests). Victims whose crash must show run in a child process (this file, run with
 * `DMABUF_PROTOCOL_CHILD` set).
 *
 * The one `todo` test (huge-page storage and SIGBUS) is opt-in: it drains the machine's huge
 * page pool, which other tests share. Set DMABUF_TEST_HUGETLB_SIGBUS=1 (as root) to run it.
 */
import { test as nodeTest } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, openSync, readFileSync, writeFileSync, existsSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { DmaBuf, DmaBufError, CpuDevice, SgTable, systemHeap, type DmaBufAttachment } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { serviceChannels } from '../../src/remote/service.js';
import { importChannels } from '../../src/remote/importer.js';
import { MAX_FDS_PER_MESSAGE, MAX_QUEUED_SENDS } from '../../src/remote/connection.js';
import { HEADER_SIZE, MAX_BATCH, MAX_MESSAGE, MsgType, decode, encode, type Message } from '../../src/remote/protocol.js';
import {
  FakeExporter, O_RDONLY, SHRINK_GROW, attachThrough, c, closeFds, detachThrough, importThrough, closureProbe, describeOutcome, deviceBody, fdCount, mapsMatching,
  memfd, patched, peerClosed, rawCycle, rawHandshake, rawRequest, recvMsg, recvRaw, report, runChild, sendRaw,
  seqpacketPair, turns, until, welcomeBody, withBody, type RawChannel,
} from './raw.js';

const SELF = fileURLToPath(import.meta.url);
/** Set when this file runs as a child victim: then it registers no test. */
const scenario = process.env.DMABUF_PROTOCOL_CHILD;
const test = (scenario ? () => {} : nodeTest) as typeof nodeTest;
const PATTERN = Uint8Array.from({ length: 64 }, (_, i) => (i * 7 + 3) & 0xff);

const codeIs = (code: string, re?: RegExp) => (e: unknown): boolean => {
  assert.ok(e instanceof DmaBufError, `expected a DmaBufError, got ${String(e)}`);
  assert.equal(e.code, code, e.message);
  if (re) assert.match(e.message, re);
  return true;
};

/** Expects the next message on a raw channel to be an ERROR for `id` with `code`. */
async function expectError(ch: RawChannel | number, id: number, code: string, re?: RegExp): Promise<Message> {
  const sock = typeof ch === 'number' ? ch : ch.sock;
  const { msg, fds } = await recvMsg(sock);
  closeFds(fds);
  assert.equal(msg.type, MsgType.ERROR, `expected an ERROR, got ${JSON.stringify(msg)}`);
  assert.equal(msg.id, id);
  assert.equal(msg.body.code, code, String(msg.body.message));
  if (re) assert.match(String(msg.body.message), re);
  return msg;
}

/**
 * Proves that nothing was answered to what was sent before: a probe request (an UNMAP of a map
 * that does not exist) must be the next thing answered.
 */
async function expectNothingBefore(ch: RawChannel, probeId: number): Promise<void> {
  await sendRaw(ch.sock, encode(MsgType.UNMAP, probeId, { map: 0xfffffff0 }));
  await expectError(ch, probeId, 'EINVAL', /not a live map/);
}

/** An exporter of this thread with a known pattern, a descriptor of its file and a raw channel. */
async function exporterWithChannel(name: string, size = 8192): Promise<{ buf: DmaBuf; fd: number; ch: RawChannel; done: () => Promise<void> }> {
  const buf = systemHeap.allocate(size, { name, contents: PATTERN });
  const fd = buf.fd();
  const ch = await rawHandshake(fd);
  return {
    buf,
    fd,
    ch,
    async done() {
      native.close(ch.sock);
      native.close(fd);
      buf.put();
      await until(() => buf.released, 5000, 'the release');
    },
  };
}

async function withFdCheck(fn: () => Promise<void>): Promise<void> {
  const before = fdCount();
  await fn();
  await until(() => fdCount() === before, 5000, `the descriptor count to return to ${before} (now ${fdCount()})`);
}

// ---------------------------------------------------------------------------------------
// Malformed messages
// ---------------------------------------------------------------------------------------

test('malformed: a bad magic, version, type, reserved field or body on a channel gets an EPROTO ERROR, and the exporter keeps serving', async () => {
  await withFdCheck(async () => {
    const { ch, done } = await exporterWithChannel('malformed');
    const buffer = ch.welcome.body.buffer as number;
    const attach = { buffer, device: deviceBody() };
    const cases: [string, Buffer, RegExp][] = [
      ['bad magic', patched(MsgType.ATTACH, 101, attach, { magic: 0x12345678 }), /bad magic/],
      ['version 0', patched(MsgType.ATTACH, 102, attach, { version: 0 }), /version 0 is not supported \(this side speaks 1\)/],
      ['version 2', patched(MsgType.ATTACH, 103, attach, { version: 2 }), /version 2 is not supported \(this side speaks 1\)/],
      ['unknown type 2', patched(MsgType.ATTACH, 104, attach, { type: 2 }), /unknown message type 2/],
      ['unknown type 4242', patched(MsgType.ATTACH, 105, attach, { type: 4242 }), /unknown message type 4242/],
      ['flags set', patched(MsgType.ATTACH, 106, attach, { flags: 1 }), /reserved header fields must be zero/],
      ['reserved set', patched(MsgType.ATTACH, 107, attach, { reserved: 0x80000000 }), /reserved header fields must be zero/],
      ['not JSON', withBody(MsgType.ATTACH, 108, Buffer.from('{"buffer":')), /not JSON/],
      ['not an object', withBody(MsgType.ATTACH, 109, Buffer.from('[1,2,3]')), /not a JSON object/],
      ['buffer is a string', encode(MsgType.ATTACH, 110, { ...attach, buffer: String(buffer) }), /field "buffer"/],
      ['device is a string', encode(MsgType.ATTACH, 111, { buffer, device: 'cpu' }), /field "device" must be an object/],
      ['device name too long', encode(MsgType.ATTACH, 112, { buffer, device: deviceBody({ name: 'n'.repeat(256) }) }), /field "name"/],
      ['negative pageSize', encode(MsgType.ATTACH, 113, { buffer, device: deviceBody({ pageSize: -4096 }) }), /field "pageSize"/],
      ['map id is a float', encode(MsgType.UNMAP, 114, { map: 1.5 }), /field "map"/],
      ['attachment missing', encode(MsgType.DETACH, 115, {}), /field "attachment"/],
    ];
    for (const [what, bytes, re] of cases) {
      await sendRaw(ch.sock, bytes);
      const id = bytes.readUInt32LE(8);
      await expectError(ch, id, 'EPROTO', re).catch((err: unknown) => { throw new Error(`${what}: ${String(err)}`); });
    }
    // A well-formed cycle on the same channel still works and sees the buffer's contents.
    assert.deepEqual([...await rawCycle(ch, 1000, PATTERN.length)], [...PATTERN]);
    await done();
  });
});

test('malformed: a BATCH runs only notifications, at most MAX_BATCH, never nested and only with id 0; a bad one runs nothing, and a good one runs each in order', async () => {
  await withFdCheck(async () => {
    const { buf, ch, done } = await exporterWithChannel('batch');
    const buffer = ch.welcome.body.buffer as number;
    const a = await rawRequest(ch, MsgType.ATTACH, 1, { buffer, device: deviceBody() });
    const attachment = a.msg.body.attachment as number;
    const m = await rawRequest(ch, MsgType.MAP, 2, { attachment, direction: 'to-device' });
    closeFds(m.fds);
    const map = m.msg.body.map as number;
    assert.equal(buf.mapCount, 1);
    const unmap = [MsgType.UNMAP, { map }];
    const detach = [MsgType.DETACH, { attachment }];
    const bad: [string, Buffer][] = [
      ['a request inside', encode(MsgType.BATCH, 0, { messages: [unmap, [MsgType.ATTACH, { buffer, device: deviceBody() }]] })],
      ['a nested BATCH', encode(MsgType.BATCH, 0, { messages: [unmap, [MsgType.BATCH, { messages: [detach] }]] })],
      ['an unknown type', encode(MsgType.BATCH, 0, { messages: [unmap, [4242, {}]] })],
      ['a body that is not an object', encode(MsgType.BATCH, 0, { messages: [unmap, [MsgType.DETACH, [attachment]]] })],
      ['an entry that is not a pair', encode(MsgType.BATCH, 0, { messages: [unmap, [MsgType.DETACH]] })],
      ['no list', encode(MsgType.BATCH, 0, { messages: unmap })],
      ['an empty list', encode(MsgType.BATCH, 0, { messages: [] })],
      [`${MAX_BATCH + 1} entries`, encode(MsgType.BATCH, 0, { messages: [unmap, ...Array.from({ length: MAX_BATCH }, () => [MsgType.CANCEL, { request: 1 }])] })],
      ['an id', encode(MsgType.BATCH, 7, { messages: [unmap, detach] })],
    ];
    for (const [what, bytes] of bad) {
      await sendRaw(ch.sock, bytes);
      // Not answered, and nothing of it ran: the map and the attachment are still there.
      await expectNothingBefore(ch, 900);
      assert.equal(buf.mapCount, 1, what);
      assert.equal(buf.attachments.length, 1, what);
    }
    // A good one: the unmap, then the detach, as if each had come alone; nothing answered.
    await sendRaw(ch.sock, encode(MsgType.BATCH, 0, { messages: [unmap, detach] }));
    await expectNothingBefore(ch, 901);
    await until(() => buf.attachments.length === 0, 5000, 'the batched detach');
    assert.equal(buf.mapCount, 0);
    // An unmap of a map that is gone, in a batch, is dropped like the same notification alone.
    await sendRaw(ch.sock, encode(MsgType.BATCH, 0, { messages: [unmap, unmap] }));
    assert.deepEqual([...await rawCycle(ch, 1000, PATTERN.length)], [...PATTERN]);
    await done();
  });
});

test('malformed: a bad HELLO through the buffer\'s file gets an EPROTO ERROR on its channel, which is then closed', async () => {
  await withFdCheck(async () => {
    const { fd, ch, done } = await exporterWithChannel('malformed-hello');
    const hello = { versions: [1], pid: process.pid, tokens: [] };
    const cases: [string, Buffer, RegExp][] = [
      ['version 2', patched(MsgType.HELLO, 21, hello, { version: 2 }), /version 2 is not supported/],
      ['bad magic', patched(MsgType.HELLO, 22, hello, { magic: 0 }), /bad magic/],
      ['reserved set', patched(MsgType.HELLO, 23, hello, { reserved: 7 }), /reserved/],
      ['not JSON', withBody(MsgType.HELLO, 24, Buffer.from('hello')), /not JSON/],
      ['an ATTACH instead', encode(MsgType.ATTACH, 25, { buffer: 1, device: deviceBody() }), /expected a HELLO through the buffer's file, got type 3/],
      ['a REPLY instead', encode(MsgType.REPLY, 26, {}), /expected a HELLO/],
    ];
    const channelsBefore = serviceChannels().length;
    for (const [what, bytes, re] of cases) {
      const [mine, theirs] = seqpacketPair();
      await sendRaw(fd, bytes, [theirs]);
      native.close(theirs);
      await expectError(mine, bytes.readUInt32LE(8), 'EPROTO', re).catch((err: unknown) => { throw new Error(`${what}: ${String(err)}`); });
      assert.equal(await recvRaw(mine), 'eof', `${what}: the exporter closes the refused channel`);
      native.close(mine);
    }
    assert.equal(serviceChannels().length, channelsBefore, 'no channel was created');
    assert.deepEqual([...await rawCycle(ch, 2000, 8)], [...PATTERN.subarray(0, 8)]);
    await done();
  });
});

test('malformed: a bad message from an importer that closes at once does not crash the exporter (answering it fails with EPIPE)', async () => {
  // Regression: Connection.send threw EPIPE synchronously inside the poll callback that read
  // the bad message, an uncaught exception that ended the exporter's process.
  const out = await runChild(SELF, { DMABUF_PROTOCOL_CHILD: 'answer-closed-peer' });
  assert.equal(out.signal, null, describeOutcome(out));
  assert.equal(out.code, 0, describeOutcome(out));
  assert.deepEqual(out.reports.at(-1), { ok: true, cycle: [...PATTERN.subarray(0, 8)] }, describeOutcome(out));
});

test('malformed: an importer refuses a malformed welcome with a DmaBufError and closes its channel', async () => {
  await withFdCheck(async () => {
    const cases: [string, (fe: FakeExporter, hello: Message) => Promise<void>, string, RegExp][] = [
      ['an ERROR', (fe, h) => fe.send(MsgType.ERROR, h.id, { code: 'EPROTO', message: 'nope' }), 'EINVAL', /failed the dma-buf handshake: nope/],
      ['bad magic', (fe, h) => fe.sendBytes(patched(MsgType.REPLY, h.id, welcomeBody(), { magic: 1 })), 'EINVAL', /bad magic/],
      ['version 2', (fe, h) => fe.sendBytes(patched(MsgType.REPLY, h.id, welcomeBody(), { version: 2 })), 'EINVAL', /version 2 is not supported/],
      ['not JSON', (fe, h) => fe.sendBytes(withBody(MsgType.REPLY, h.id, Buffer.from('{'))), 'EINVAL', /not JSON/],
      ['size 0', (fe, h) => fe.send(MsgType.REPLY, h.id, welcomeBody({ size: 0 })), 'EINVAL', /size 0/],
      ['size missing', (fe, h) => fe.send(MsgType.REPLY, h.id, welcomeBody({ size: undefined })), 'EINVAL', /field "size"/],
      ['size negative', (fe, h) => fe.send(MsgType.REPLY, h.id, welcomeBody({ size: -1 })), 'EINVAL', /field "size"/],
      ['bad flags', (fe, h) => fe.send(MsgType.REPLY, h.id, welcomeBody({ flags: 0o100 })), 'EINVAL', /bad flags/],
      ['flags O_WRONLY', (fe, h) => fe.send(MsgType.REPLY, h.id, welcomeBody({ flags: 1 })), 'EINVAL', /bad flags/],
      ['bad token', (fe, h) => fe.send(MsgType.REPLY, h.id, welcomeBody({ token: 'ZZ' })), 'EINVAL', /bad channel token/],
      ['name too long', (fe, h) => fe.send(MsgType.REPLY, h.id, welcomeBody({ name: 'x'.repeat(256) })), 'EINVAL', /field "name"/],
      ['sealed not a boolean', (fe, h) => fe.send(MsgType.REPLY, h.id, welcomeBody({ sealed: 'no' })), 'EINVAL', /field "sealed"/],
      ['reused unknown channel', (fe, h) => fe.send(MsgType.REPLY, h.id, welcomeBody({ reused: true })), 'EPIPE', /reused a channel that is closed/],
    ];
    for (const [what, answer, code, re] of cases) {
      const fe = new FakeExporter();
      const got = DmaBuf.get(fe.fileEnd, { timeout: 3000 });
      const hello = await fe.hello();
      assert.equal(hello.type, MsgType.HELLO);
      assert.deepEqual(hello.body.versions, [1]);
      assert.equal(hello.body.pid, process.pid);
      assert.ok(Array.isArray(hello.body.tokens));
      await answer(fe, hello);
      await assert.rejects(got, codeIs(code, re), what);
      assert.equal(await recvRaw(fe.channel), 'eof', `${what}: the importer closed its channel`);
      fe.close();
    }
  });
});

test('malformed: an importer refuses a malformed reply to a request with a DmaBufError', async () => {
  await withFdCheck(async () => {
    const fe = new FakeExporter();
    const buf = await importThrough(fe);
    const cases: [string, (id: number) => Promise<void>, string, RegExp][] = [
      ['attachment missing', (id) => fe.send(MsgType.REPLY, id, {}), 'EPROTO', /field "attachment"/],
      ['attachment is a string', (id) => fe.send(MsgType.REPLY, id, { attachment: '1' }), 'EPROTO', /field "attachment"/],
      ['reserved set', (id) => fe.sendBytes(patched(MsgType.REPLY, id, { attachment: 1 }, { flags: 2 })), 'EPROTO', /reserved/],
      ['not an object', (id) => fe.sendBytes(withBody(MsgType.REPLY, id, Buffer.from('"x"'))), 'EPROTO', /not a JSON object/],
      ['an ERROR with a code', (id) => fe.send(MsgType.ERROR, id, { code: 'EBUSY', message: 'busy' }), 'EBUSY', /busy \(answered by the exporter\)/],
      ['an ERROR with a code that is not an errno name', (id) => fe.send(MsgType.ERROR, id, { code: 'rm -rf', message: 'x' }), 'EPROTO', /x/],
    ];
    for (const [what, answer, code, re] of cases) {
      const p = buf.attach(new CpuDevice());
      const { msg } = await fe.next();
      assert.equal(msg.type, MsgType.ATTACH, what);
      await answer(msg.id);
      await assert.rejects(p, codeIs(code, re), what);
    }
    buf.put();
    fe.close();
  });
});

// ---------------------------------------------------------------------------------------
// Truncated messages
// ---------------------------------------------------------------------------------------

test('truncated: a message cut short gets EPROTO (answered when its id survived), and the exporter keeps serving', async () => {
  await withFdCheck(async () => {
    const { fd, ch, done } = await exporterWithChannel('truncated');
    const buffer = ch.welcome.body.buffer as number;
    const full = encode(MsgType.ATTACH, 301, { buffer, device: deviceBody() });
    // Fewer than 12 bytes: no id to answer; nothing is answered and the channel stays open.
    for (const n of [1, 4, 8, 11]) await sendRaw(ch.sock, full.subarray(0, n));
    await expectNothingBefore(ch, 302);
    // From 12 bytes on, the id is known: each piece gets its ERROR.
    for (const n of [12, 16, 23, HEADER_SIZE, HEADER_SIZE + 1, full.length - 1]) {
      const piece = Buffer.from(full.subarray(0, n));
      piece.writeUInt32LE(400 + n, 8);
      await sendRaw(ch.sock, piece);
      await expectError(ch, 400 + n, 'EPROTO', n < HEADER_SIZE ? /shorter than the 24-byte header/ : /body length .* does not match/);
    }
    // A header that promises more body than was sent.
    await sendRaw(ch.sock, patched(MsgType.ATTACH, 303, { buffer, device: deviceBody() }, { length: 1000 }));
    await expectError(ch, 303, 'EPROTO', /body length 1000 does not match/);
    // A truncated HELLO through the file: its channel gets the ERROR, then is closed.
    const [mine, theirs] = seqpacketPair();
    const hello = encode(MsgType.HELLO, 304, { versions: [1], tokens: [] });
    await sendRaw(fd, hello.subarray(0, hello.length - 3), [theirs]);
    native.close(theirs);
    await expectError(mine, 304, 'EPROTO', /body length/);
    assert.equal(await recvRaw(mine), 'eof');
    native.close(mine);
    assert.deepEqual([...await rawCycle(ch, 3000, 4)], [...PATTERN.subarray(0, 4)]);
    await done();
  });
});

test('truncated: an importer refuses a truncated reply with EPROTO', async () => {
  await withFdCheck(async () => {
    const fe = new FakeExporter();
    const got = DmaBuf.get(fe.fileEnd);
    const hello = await fe.hello();
    const welcome = encode(MsgType.REPLY, hello.id, welcomeBody());
    await fe.sendBytes(welcome.subarray(0, welcome.length - 5));
    await assert.rejects(got, codeIs('EINVAL', /body length/));
    fe.close();
  });
});

// ---------------------------------------------------------------------------------------
// Oversized messages
// ---------------------------------------------------------------------------------------

test('oversized: a message over MAX_MESSAGE gets EPROTO on a channel and through the file; encode refuses one with EMSGSIZE', async () => {
  await withFdCheck(async () => {
    const { fd, ch, done } = await exporterWithChannel('oversized');
    for (const [id, size] of [[501, MAX_MESSAGE + 1], [502, MAX_MESSAGE + 4096], [503, 200 * 1024]] as const) {
      const big = withBody(MsgType.ATTACH, id, Buffer.from(`{"pad":"${'p'.repeat(size - HEADER_SIZE - 10)}"}`));
      assert.equal(big.length, size);
      await sendRaw(ch.sock, big);
      await expectError(ch, id, 'EPROTO', /larger than 65536 bytes was truncated/);
    }
    // Through the buffer's file: the HELLO is cut at 64 KiB, which breaks its body length.
    const [mine, theirs] = seqpacketPair();
    const bigHello = withBody(MsgType.HELLO, 504, Buffer.from(`{"pad":"${'h'.repeat(100 * 1024)}"}`));
    await sendRaw(fd, bigHello, [theirs]);
    native.close(theirs);
    await expectError(mine, 504, 'EPROTO');
    assert.equal(await recvRaw(mine), 'eof');
    native.close(mine);
    assert.throws(() => encode(MsgType.ERROR, 1, { m: 'x'.repeat(MAX_MESSAGE) }), codeIs('EMSGSIZE'));
    assert.deepEqual([...await rawCycle(ch, 4000, 4)], [...PATTERN.subarray(0, 4)]);
    await done();
  });
});

test('oversized: an importer refuses an oversized reply with EPROTO', async () => {
  await withFdCheck(async () => {
    const fe = new FakeExporter();
    const buf = await importThrough(fe);
    const p = buf.attach(new CpuDevice());
    const { msg } = await fe.next();
    await fe.sendBytes(withBody(MsgType.REPLY, msg.id, Buffer.from(`{"attachment":1,"pad":"${'z'.repeat(MAX_MESSAGE)}"}`)));
    await assert.rejects(p, codeIs('EPROTO', /larger than 65536 bytes/));
    buf.put();
    fe.close();
  });
});

test('oversized: a map whose table does not fit in one reply fails with EMSGSIZE and the exporter undoes the map', async () => {
  const mfd = memfd('irregular', 8192, SHRINK_GROW());
  const memory = { id: 1, fd: mfd, size: 8192, pageSize: 4096, writeSealed: false, onInvalidate: () => () => {} };
  const buf = DmaBuf.export({
    size: 8192,
    priv: {},
    ops: {
      async mapDmaBuf(att: DmaBufAttachment<object>) {
        await att.device.mapMemory({ memory, access: 'write' });
        // 2049 segments with gaps: 2049 runs, one more than a reply may carry.
        return new SgTable(Array.from({ length: 2049 }, (_, i) => ({ offset: 2 * i, length: 1 })));
      },
      unmapDmaBuf() {},
      release() {},
    },
  });
  const fd = buf.fd();
  const ch = await rawHandshake(fd);
  try {
    const a = await rawRequest(ch, MsgType.ATTACH, 2, { buffer: ch.welcome.body.buffer, device: deviceBody() });
    await sendRaw(ch.sock, encode(MsgType.MAP, 3, { attachment: a.msg.body.attachment, direction: 'bidirectional' }));
    await expectError(ch, 3, 'EMSGSIZE', /2049 irregular runs/);
    await turns(5);
    assert.equal(buf.mapCount, 0, 'the exporter still holds the map the importer never learnt of');
  } finally {
    native.close(ch.sock);
    native.close(fd);
    buf.put();
    await until(() => buf.released);
    native.close(mfd);
  }
});

// ---------------------------------------------------------------------------------------
// Out-of-order messages
// ---------------------------------------------------------------------------------------

test('out-of-order: a REPLY or ERROR from an importer closes its channel (what it held is undone); requests for unknown or finished objects get EINVAL or EPROTO', async () => {
  await withFdCheck(async () => {
    const { buf, fd, ch, done } = await exporterWithChannel('out-of-order');
    const buffer = ch.welcome.body.buffer as number;
    // REPLY and ERROR are the exporter's to send: an importer that sends one is not an
    // importer (two crossed ends of a pair, say). Its channel is closed, its attachments undone.
    for (const [type, id] of [[MsgType.REPLY, 601], [MsgType.ERROR, 602]] as const) {
      const other = await rawHandshake(fd);
      const a = await rawRequest(other, MsgType.ATTACH, 1, { buffer, device: deviceBody() });
      assert.equal(a.msg.type, MsgType.REPLY);
      assert.equal(buf.attachments.length, 1);
      await sendRaw(other.sock, encode(type, id, { attachment: a.msg.body.attachment, code: 'EIO' }));
      assert.equal(await recvRaw(other.sock), 'eof', 'the exporter closes the channel');
      await until(() => buf.attachments.length === 0, 3000, 'the attachment of the closed channel to be detached');
      assert.ok(!serviceChannels().some((x) => x.token === other.welcome.body.token));
      native.close(other.sock);
    }
    // A HELLO belongs in the buffer's file, not on a channel.
    await sendRaw(ch.sock, encode(MsgType.HELLO, 604, { versions: [1] }));
    await expectError(ch, 604, 'EPROTO', /unexpected message type 1/);
    // Objects that do not exist.
    await sendRaw(ch.sock, encode(MsgType.UNMAP, 605, { map: 77 }));
    await expectError(ch, 605, 'EINVAL', /map 77 is not a live map/);
    await sendRaw(ch.sock, encode(MsgType.DETACH, 606, { attachment: 77 }));
    await expectError(ch, 606, 'EINVAL', /attachment 77 is not a live attachment/);
    await sendRaw(ch.sock, encode(MsgType.MAP, 607, { attachment: 77, direction: 'to-device' }));
    await expectError(ch, 607, 'EINVAL', /attachment 77/);
    await sendRaw(ch.sock, encode(MsgType.ATTACH, 608, { buffer: buffer + 1000, device: deviceBody() }));
    await expectError(ch, 608, 'EINVAL', /was not imported on this channel/);
    // Objects that are finished.
    const a = await rawRequest(ch, MsgType.ATTACH, 609, { buffer, device: deviceBody() });
    const attachment = a.msg.body.attachment as number;
    const m = await rawRequest(ch, MsgType.MAP, 610, { attachment, direction: 'to-device' });
    closeFds(m.fds);
    const map = m.msg.body.map as number;
    assert.equal((await rawRequest(ch, MsgType.UNMAP, 611, { map })).msg.type, MsgType.REPLY);
    await sendRaw(ch.sock, encode(MsgType.UNMAP, 612, { map }));
    await expectError(ch, 612, 'EINVAL', /not a live map/);
    assert.equal((await rawRequest(ch, MsgType.DETACH, 613, { attachment })).msg.type, MsgType.REPLY);
    await sendRaw(ch.sock, encode(MsgType.MAP, 614, { attachment, direction: 'to-device' }));
    await expectError(ch, 614, 'EINVAL', /not a live attachment/);
    await sendRaw(ch.sock, encode(MsgType.DETACH, 615, { attachment }));
    await expectError(ch, 615, 'EINVAL', /not a live attachment/);
    // After PUT the buffer is no longer reachable on this channel; PUT is never answered.
    await sendRaw(ch.sock, encode(MsgType.PUT, 616, { buffer }));
    await sendRaw(ch.sock, encode(MsgType.PUT, 0, { buffer: 424242 }));
    await expectNothingBefore(ch, 617);
    await sendRaw(ch.sock, encode(MsgType.ATTACH, 618, { buffer, device: deviceBody() }));
    await expectError(ch, 618, 'EINVAL', /was not imported on this channel/);
    await done();
  });
});

test('out-of-order: an importer drops a reply to nothing it asked, and matches replies that come in any order', async () => {
  await withFdCheck(async () => {
    const fe = new FakeExporter();
    const got = DmaBuf.get(fe.fileEnd);
    const hello = await fe.hello();
    const token = 'ab'.repeat(16);
    await fe.send(MsgType.REPLY, hello.id, welcomeBody({ token, buffer: 11 }));
    const a = await got;
    // A second buffer of the same exporter reuses the channel (its token is in the HELLO).
    const fe2 = new FakeExporter();
    const got2 = DmaBuf.get(fe2.fileEnd);
    const hello2 = await fe2.hello();
    assert.deepEqual(hello2.body.tokens, [token]);
    await fe2.send(MsgType.REPLY, hello2.id, welcomeBody({ token, buffer: 22, reused: true }));
    const b = await got2;
    assert.equal(await recvRaw(fe2.channel), 'eof', 'the spare channel of a reused HELLO is closed');
    fe2.close();
    // A reply to nothing, carrying a descriptor: dropped, descriptor closed.
    const [keep, send] = closureProbe();
    await fe.send(MsgType.REPLY, 9999, { attachment: 1 }, [send]);
    native.close(send);
    await until(() => peerClosed(keep), 3000, 'the importer to close the descriptor of an unexpected reply');
    native.close(keep);
    // Two requests in flight on one channel, answered in reverse order.
    const pa = a.attach(new CpuDevice());
    const pb = b.attach(new CpuDevice());
    const r1 = await fe.next();
    const r2 = await fe.next();
    const byBuffer = new Map([[r1.msg.body.buffer, r1.msg], [r2.msg.body.buffer, r2.msg]]);
    assert.deepEqual([...byBuffer.keys()].sort(), [11, 22]);
    await fe.send(MsgType.REPLY, byBuffer.get(22)!.id, { attachment: 222 });
    await fe.send(MsgType.REPLY, byBuffer.get(11)!.id, { attachment: 111 });
    const [attA, attB] = await Promise.all([pa, pb]);
    // Each attachment got its own answer: its detach names it.
    const dA = attA.detach();
    const reqA = await fe.next();
    assert.deepEqual([reqA.msg.type, reqA.msg.body], [MsgType.DETACH, { attachment: 111 }]);
    await fe.send(MsgType.REPLY, reqA.msg.id, {});
    await dA;
    const dB = attB.detach();
    const reqB = await fe.next();
    assert.deepEqual([reqB.msg.type, reqB.msg.body], [MsgType.DETACH, { attachment: 222 }]);
    await fe.send(MsgType.REPLY, reqB.msg.id, {});
    await dB;
    a.put();
    b.put();
    fe.close();
  });
});

// ---------------------------------------------------------------------------------------
// Unexpected and missing descriptors
// ---------------------------------------------------------------------------------------

test('unexpected descriptors: the exporter closes every descriptor it did not ask for, on a channel and through the file', async () => {
  await withFdCheck(async () => {
    const { fd, ch, done } = await exporterWithChannel('unexpected-fds');
    const buffer = ch.welcome.body.buffer as number;
    const channelsBefore = serviceChannels().length;
    const sendWithProbes = async (target: number, data: Buffer, n: number, also: number[] = []): Promise<void> => {
      const probes = Array.from({ length: n }, () => closureProbe());
      await sendRaw(target, data, [...probes.map(([, s]) => s), ...also]);
      closeFds(probes.map(([, s]) => s));
      await until(() => probes.every(([k]) => peerClosed(k)), 3000, `the exporter to close ${n} unexpected descriptors`);
      closeFds(probes.map(([k]) => k));
    };
    // On a channel: with a valid request (answered), a malformed one (answered), a PUT and an
    // empty message (none answered); with a REPLY (which also closes that channel).
    await sendWithProbes(ch.sock, encode(MsgType.ATTACH, 701, { buffer, device: deviceBody() }), 2);
    const a = await recvMsg(ch.sock);
    assert.equal(a.msg.type, MsgType.REPLY);
    await sendWithProbes(ch.sock, patched(MsgType.UNMAP, 702, { map: 1 }, { version: 9 }), 3);
    await expectError(ch, 702, 'EPROTO', /version 9/);
    const doomed = await rawHandshake(fd);
    await sendWithProbes(doomed.sock, encode(MsgType.REPLY, 703, {}), 1);
    assert.equal(await recvRaw(doomed.sock), 'eof');
    native.close(doomed.sock);
    await sendWithProbes(ch.sock, encode(MsgType.PUT, 0, { buffer: 5555 }), 1);
    await sendWithProbes(ch.sock, Buffer.alloc(0), 1);
    await expectNothingBefore(ch, 704);
    // Through the file: a HELLO with two descriptors, one that is not a SEQPACKET socket, and
    // messages that are not HELLOs: all dropped, their descriptors closed, nothing created.
    const hello = encode(MsgType.HELLO, 705, { versions: [1] });
    await sendWithProbes(fd, hello, 2);
    await sendWithProbes(fd, hello, 1); // a STREAM socket is not a channel
    const [dg1, dg2] = native.socketpair(c.SOCK_DGRAM, false);
    await sendWithProbes(fd, hello, 0, [dg2]); // a DGRAM socket either
    closeFds([dg1, dg2]);
    const m = memfd('not-a-channel', 4096, 0);
    await sendRaw(fd, hello, [m]);
    native.close(m);
    await sendWithProbes(fd, Buffer.from('garbage'), 1);
    await sendWithProbes(fd, Buffer.alloc(0), 1);
    await turns(10);
    assert.equal(serviceChannels().length, channelsBefore, 'no channel was created');
    await expectNothingBefore(ch, 706);
    await done();
  });
});

test('unexpected descriptors: an importer closes descriptors on a welcome, a reply, an ERROR or an unsolicited message', async () => {
  await withFdCheck(async () => {
    const fe = new FakeExporter();
    const probes: [number, number][] = [];
    const probe = (): number => {
      const p = closureProbe();
      probes.push(p);
      return p[1];
    };
    const got = DmaBuf.get(fe.fileEnd);
    const hello = await fe.hello();
    await fe.send(MsgType.REPLY, hello.id, welcomeBody(), [probe(), probe()]);
    const buf = await got;
    const p = buf.attach(new CpuDevice());
    const req = await fe.next();
    await fe.send(MsgType.ATTACH, 0, { buffer: 1, device: {} }, [probe()]); // the exporter does not send requests
    await fe.send(MsgType.REPLY, req.msg.id, { attachment: 5 }, [probe(), probe(), probe()]);
    const att = await p;
    const p2 = buf.attach(new CpuDevice());
    const req2 = await fe.next();
    await fe.send(MsgType.ERROR, req2.msg.id, { code: 'EBUSY', message: 'no' }, [probe()]);
    await assert.rejects(p2, codeIs('EBUSY'));
    closeFds(probes.map(([, s]) => s));
    await until(() => probes.every(([k]) => peerClosed(k)), 3000, 'the importer to close every unexpected descriptor');
    closeFds(probes.map(([k]) => k));
    await detachThrough(fe, att);
    buf.put();
    fe.close();
  });
});

test('missing descriptors: a HELLO without a channel is dropped, and a map reply without memory fails with EPROTO and is undone', async () => {
  await withFdCheck(async () => {
    const { fd, ch, done } = await exporterWithChannel('missing-fds');
    const channelsBefore = serviceChannels().length;
    await sendRaw(fd, encode(MsgType.HELLO, 801, { versions: [1] }));
    await turns(10);
    assert.equal(serviceChannels().length, channelsBefore);
    assert.deepEqual([...await rawCycle(ch, 5000, 4)], [...PATTERN.subarray(0, 4)]);
    await done();

    // The importer's side.
    const fe = new FakeExporter();
    const buf = await importThrough(fe);
    const att = await attachThrough(fe, buf, 3);
    for (const [what, fdsFor] of [['no descriptor', () => []], ['two descriptors', () => [memfd('m1', 4096, SHRINK_GROW()), memfd('m2', 4096, SHRINK_GROW())]]] as const) {
      const pm = att.map('to-device');
      const rm = await fe.next();
      assert.equal(rm.msg.type, MsgType.MAP);
      const fds = fdsFor();
      await fe.send(MsgType.REPLY, rm.msg.id, { map: 42, segments: [[0, 4096, 1]], memory: { size: 4096, pageSize: 4096, writeSealed: false }, access: 'read' }, fds);
      closeFds(fds);
      await assert.rejects(pm, codeIs('EPROTO', new RegExp(`exactly one descriptor, got ${fds.length}`)), what);
      // The importer undoes a map it refused: the exporter is told to unmap it.
      const undo = await fe.next();
      assert.deepEqual([undo.msg.type, undo.msg.body], [MsgType.UNMAP, { map: 42 }], what);
      await fe.send(MsgType.REPLY, undo.msg.id, {});
    }
    await detachThrough(fe, att);
    buf.put();
    fe.close();
  });
});

// ---------------------------------------------------------------------------------------
// MSG_CTRUNC
// ---------------------------------------------------------------------------------------

test('MSG_CTRUNC: more descriptors than a receiver accepts: all closed, EPROTO on a channel, dropped through the file', async () => {
  await withFdCheck(async () => {
    const { fd, ch, done } = await exporterWithChannel('ctrunc');
    const buffer = ch.welcome.body.buffer as number;
    const channelsBefore = serviceChannels().length;
    for (const [target, n, id] of [[ch.sock, MAX_FDS_PER_MESSAGE + 1, 901], [ch.sock, 40, 902], [fd, 9, 903], [fd, 200, 904]] as const) {
      const probes = Array.from({ length: n }, () => closureProbe());
      const body = target === fd ? { versions: [1] } : { buffer, device: deviceBody() };
      await sendRaw(target, encode(target === fd ? MsgType.HELLO : MsgType.ATTACH, id, body), probes.map(([, s]) => s));
      closeFds(probes.map(([, s]) => s));
      if (target === ch.sock) await expectError(ch, id, 'EPROTO', new RegExp(`more than ${MAX_FDS_PER_MESSAGE} descriptors \\(MSG_CTRUNC\\)`));
      await until(() => probes.every(([k]) => peerClosed(k)), 3000, `the receiver to close all ${n} descriptors`);
      closeFds(probes.map(([k]) => k));
    }
    await turns(5);
    assert.equal(serviceChannels().length, channelsBefore);
    assert.equal((ch.welcome.body.buffer as number), buffer);
    assert.deepEqual([...await rawCycle(ch, 6000, 4)], [...PATTERN.subarray(0, 4)]);
    await done();
  });
});

test('MSG_CTRUNC: an importer refuses a map reply with too many descriptors with EPROTO and closes them all', async () => {
  await withFdCheck(async () => {
    const fe = new FakeExporter();
    const buf = await importThrough(fe);
    const att = await attachThrough(fe, buf, 3);
    const pm = att.map('to-device');
    const rm = await fe.next();
    const probes = Array.from({ length: 6 }, () => closureProbe());
    await fe.send(MsgType.REPLY, rm.msg.id, { map: 1, segments: [[0, 4096, 1]], memory: { size: 4096, pageSize: 4096, writeSealed: false }, access: 'read' }, probes.map(([, s]) => s));
    closeFds(probes.map(([, s]) => s));
    await assert.rejects(pm, codeIs('EPROTO', /MSG_CTRUNC/));
    await until(() => probes.every(([k]) => peerClosed(k)), 3000, 'the importer to close all 6 descriptors');
    // The exporter did map: the importer undoes it (without waiting for the answer).
    const un = await fe.next();
    assert.equal(un.msg.type, MsgType.UNMAP);
    assert.equal(un.msg.body.map, 1);
    closeFds(probes.map(([k]) => k));
    await detachThrough(fe, att);
    buf.put();
    fe.close();
  });
});

// ---------------------------------------------------------------------------------------
// A peer that stops reading
// ---------------------------------------------------------------------------------------

test('a peer that stops reading: the exporter queues at most MAX_QUEUED_SENDS answers, then closes the channel, never blocking', async () => {
  await withFdCheck(async () => {
    const { fd, ch, buf, done } = await exporterWithChannel('stops-reading');
    // A live attachment of the importer: it must be detached when the channel is closed.
    const a = await rawRequest(ch, MsgType.ATTACH, 1, { buffer: ch.welcome.body.buffer, device: deviceBody() });
    assert.equal(a.msg.type, MsgType.REPLY);
    assert.equal(buf.attachments.length, 1);
    let ticks = 0;
    const heartbeat = setInterval(() => { ticks += 1; }, 2);
    const request = encode(MsgType.UNMAP, 0, { map: 0xfffffff0 }); // each one answered by an ERROR
    let sent = 0;
    let closed = false;
    const limit = MAX_QUEUED_SENDS + 20_000;
    try {
      while (sent < limit) {
        request.writeUInt32LE(sent + 10, 8);
        try {
          native.sendmsg(ch.sock, request, [], c.MSG_DONTWAIT);
          sent += 1;
          if (sent % 128 === 0) await turns();
        } catch (err) {
          if (DmaBufError.is(err, 'EPIPE') || DmaBufError.is(err, 'ECONNRESET')) { closed = true; break; }
          if (!DmaBufError.is(err, 'EAGAIN')) throw err;
          if (peerClosed(ch.sock)) { closed = true; break; }
          await sleep(1);
        }
      }
      if (!closed) await until(() => peerClosed(ch.sock), 5000, 'the exporter to close the channel');
    } finally {
      clearInterval(heartbeat);
    }
    assert.ok(sent >= MAX_QUEUED_SENDS, `the exporter closed after only ${sent} requests`);
    assert.ok(sent < limit, 'the exporter never gave up on a peer that does not read');
    assert.ok(ticks > 0, 'the event loop kept running');
    await until(() => !serviceChannels().some((s) => s.token === ch.welcome.body.token), 3000, 'the channel to be dropped');
    await until(() => buf.attachments.length === 0, 3000, 'the importer\'s attachment to be detached');
    // What was queued before the close is still readable; then end-of-file.
    let answers = 0;
    for (;;) {
      const r = await recvRaw(ch.sock, 1000);
      if (r === 'eof' || r === null) break;
      answers += 1;
    }
    assert.ok(answers > 0 && answers < sent);
    // The exporter serves a new importer.
    const ch2 = await rawHandshake(fd);
    assert.deepEqual([...await rawCycle(ch2, 10, 4)], [...PATTERN.subarray(0, 4)]);
    native.close(ch2.sock);
    await done();
  });
});

test('a peer that dies with messages of ours unread: the importer gets EPIPE (not a poll error), and the exporter undoes the importer\'s attachments', async () => {
  await withFdCheck(async () => {
    // An exporter that goes away without reading the importer's request (ECONNRESET, which
    // libuv reports as a poll error): the request fails as any with the exporter gone.
    const fe = new FakeExporter();
    const buf = await importThrough(fe);
    const p = buf.attach(new CpuDevice());
    await until(() => peerClosed(fe.channel) || (native.pollNow(fe.channel, c.POLLIN) & c.POLLIN) !== 0, 3000, 'the ATTACH to arrive');
    fe.closeChannel(); // unread
    await assert.rejects(p, codeIs('EPIPE', /the exporter \(pid \d+\) is gone/));
    await assert.rejects(buf.attach(new CpuDevice()), codeIs('EPIPE'));
    buf.put();
    fe.close();

    // An importer that goes away without reading the exporter's answers.
    const { buf: ebuf, ch, fd, done } = await exporterWithChannel('dies-unread');
    for (let id = 1; id <= 3; id++) await sendRaw(ch.sock, encode(MsgType.ATTACH, id, { buffer: ch.welcome.body.buffer, device: deviceBody() }));
    await until(() => ebuf.attachments.length === 3, 3000, 'three attachments');
    native.close(ch.sock);
    await until(() => ebuf.attachments.length === 0, 3000, 'the exporter to detach what the importer left');
    const ch2 = await rawHandshake(fd);
    ch.sock = ch2.sock;
    await done();
  });
});

// ---------------------------------------------------------------------------------------
// Descriptor exhaustion
// ---------------------------------------------------------------------------------------

test('descriptor exhaustion (EMFILE): an importer out of descriptors gets EMFILE from get and map, nothing crashes, and the exporter cleans up', async () => {
  const buf = systemHeap.allocate(8192, { name: 'emfile', contents: PATTERN });
  const fd = buf.fd();
  try {
    const out = await runChild(SELF, { DMABUF_PROTOCOL_CHILD: 'emfile-importer' }, { fds: [fd], nofile: 64 });
    assert.equal(out.signal, null, describeOutcome(out));
    assert.equal(out.code, 0, describeOutcome(out));
    const r = Object.fromEntries(out.reports.map((x) => [x.step, x]));
    assert.equal(r.limit?.nofile, 64, describeOutcome(out));
    assert.deepEqual(r['get-full'], { step: 'get-full', code: 'EMFILE', isDmaBufError: true }, describeOutcome(out));
    assert.deepEqual(r['map-full'], { step: 'map-full', code: 'EMFILE', isDmaBufError: true }, describeOutcome(out));
    assert.deepEqual(r['map-after'], { step: 'map-after', bytes: [...PATTERN.subarray(0, 8)] }, describeOutcome(out));
    assert.equal(r.done?.fdsBackToStart, true, describeOutcome(out));
    // The exporter undid what the importer left (its failed map included).
    await until(() => buf.attachments.length === 0 && buf.mapCount === 0, 5000, 'the exporter to clean up');
  } finally {
    native.close(fd);
    buf.put();
  }
  await until(() => buf.released);
});

test('descriptor exhaustion (EMFILE): an exporter out of descriptors survives; importers fail get with a DmaBufError and succeed once descriptors are free', async () => {
  const [mine, theirs] = seqpacketPair();
  const outcome = runChild(SELF, { DMABUF_PROTOCOL_CHILD: 'emfile-exporter' }, { fds: [theirs], nofile: 64 });
  native.close(theirs);
  try {
    const first = await recvRaw(mine, 20_000);
    assert.ok(first && first !== 'eof' && first.fds.length === 1, 'the child sends a descriptor of its buffer');
    const fileFd = first.fds[0]!;
    try {
      // The child is now out of descriptors: the HELLO's channel cannot be received.
      const err = await DmaBuf.get(fileFd, { timeout: 300 }).then(() => null, (e: unknown) => e);
      assert.ok(err instanceof DmaBufError, String(err));
      assert.equal(err.code, 'EINVAL', err.message); // the exporter cannot answer: the handshake times out
      await sendRaw(mine, Buffer.from('free'));
      assert.equal(((await recvRaw(mine, 10_000)) as { data: Buffer }).data.toString(), 'freed');
      const buf = await DmaBuf.get(fileFd);
      const att = await buf.attach(new CpuDevice());
      const sgt = await att.map('to-device');
      assert.deepEqual([...sgt.segments[0]!.view!.subarray(0, 8)], [...PATTERN.subarray(0, 8)]);
      await att.unmap(sgt);
      await att.detach();
      buf.put();
    } finally {
      native.close(fileFd);
    }
    await sendRaw(mine, Buffer.from('exit'));
    const out = await outcome;
    assert.equal(out.signal, null, describeOutcome(out));
    assert.equal(out.code, 0, describeOutcome(out));
    assert.equal(out.reports.at(-1)?.released, true, describeOutcome(out));
  } finally {
    native.close(mine);
  }
});

// ---------------------------------------------------------------------------------------
// Security: storage a peer could truncate
// ---------------------------------------------------------------------------------------

interface StorageCase {
  name: string;
  /** Creates the descriptor sent as the buffer's memory. */
  make: () => number;
  writeSealed?: boolean;
  /** 'refused' (EPROTO, no mapping) or 'mapped' (a positive control). */
  expect: 'refused' | 'mapped';
  re?: RegExp;
}

const STORAGE_SIZE = 8192;

function storageCases(readOnly: boolean): StorageCase[] {
  const sg = SHRINK_GROW();
  const tag = readOnly ? 'ro' : 'rw';
  const fill = PATTERN;
  const cases: StorageCase[] = readOnly
    ? [
      { name: `hostile-${tag}-no-write-seal`, make: () => memfd(`hostile-${tag}-no-write-seal`, STORAGE_SIZE, sg, fill), expect: 'refused', re: /read-only but its storage is not sealed against writes/ },
      { name: `hostile-${tag}-future-write-only`, make: () => memfd(`hostile-${tag}-future-write-only`, STORAGE_SIZE, sg | c.F_SEAL_FUTURE_WRITE, fill), expect: 'refused', re: /not sealed against writes/ },
      { name: `hostile-${tag}-write-no-shrink`, make: () => memfd(`hostile-${tag}-write-no-shrink`, STORAGE_SIZE, c.F_SEAL_WRITE | c.F_SEAL_GROW, fill), expect: 'refused', re: /not sealed against shrinking and growing/ },
      { name: `hostile-${tag}-sealed`, make: () => memfd(`hostile-${tag}-sealed`, STORAGE_SIZE, sg | c.F_SEAL_WRITE, fill), expect: 'mapped' },
    ]
    : [
      { name: `hostile-${tag}-unsealed`, make: () => memfd(`hostile-${tag}-unsealed`, STORAGE_SIZE, 0, fill), expect: 'refused', re: /not sealed against shrinking and growing/ },
      { name: `hostile-${tag}-shrink-only`, make: () => memfd(`hostile-${tag}-shrink-only`, STORAGE_SIZE, c.F_SEAL_SHRINK, fill), expect: 'refused', re: /shrinking and growing/ },
      { name: `hostile-${tag}-grow-only`, make: () => memfd(`hostile-${tag}-grow-only`, STORAGE_SIZE, c.F_SEAL_GROW, fill), expect: 'refused', re: /shrinking and growing/ },
      {
        name: `hostile-${tag}-no-sealing`,
        make: () => {
          const fd = native.memfdCreate(`hostile-${tag}-no-sealing`, 0); // F_SEAL_SEAL from birth
          native.ftruncate(fd, STORAGE_SIZE);
          return fd;
        },
        expect: 'refused',
        re: /shrinking and growing/,
      },
      { name: `hostile-${tag}-claims-write-sealed`, make: () => memfd(`hostile-${tag}-claims-write-sealed`, STORAGE_SIZE, sg, fill), writeSealed: true, expect: 'refused', re: /not sealed against writes/ },
      { name: `hostile-${tag}-too-small`, make: () => memfd(`hostile-${tag}-too-small`, 4096, sg, fill), expect: 'refused', re: /does not cover/ },
      {
        name: `hostile-${tag}-disk-file`,
        make: () => {
          const p = path.join(process.cwd(), `.hostile-${process.pid}-${Date.now()}`);
          const fd = openSync(p, 'w+');
          ftruncateSync(fd, STORAGE_SIZE);
          unlinkSync(p);
          return fd;
        },
        expect: 'refused',
        re: /not a memfd|not sealed/,
      },
      { name: `hostile-${tag}-socket`, make: () => { const [a, b] = seqpacketPair(); native.close(b); return a; }, expect: 'refused', re: /not a memory file/ },
      { name: `hostile-${tag}-sealed`, make: () => memfd(`hostile-${tag}-sealed`, STORAGE_SIZE, sg, fill), expect: 'mapped' },
    ];
  return cases;
}

/**
 * Serves one fake buffer to a child importer: the welcome, attaches, and each MAP with the
 * next storage case. After the child reports a map, the storage is truncated to 0 (what a
 * hostile exporter does to kill an importer that trusts it) before the child touches its
 * views. Returns what the truncations did.
 */
async function serveHostileStorage(fe: FakeExporter, readOnly: boolean, cases: StorageCase[], mapped: (i: number) => Promise<void>, log: string[]): Promise<void> {
  const hello = await fe.hello(60_000);
  await fe.send(MsgType.REPLY, hello.id, welcomeBody({ size: STORAGE_SIZE, flags: readOnly ? O_RDONLY : 2, name: readOnly ? 'ro' : 'rw' }));
  let i = 0;
  for (;;) {
    const r = await recvRaw(fe.channel, 30_000);
    if (r === null) throw new Error('the child importer went silent');
    if (r === 'eof') return;
    closeFds(r.fds);
    const msg = decode(r.data);
    switch (msg.type) {
      case MsgType.ATTACH:
        await fe.send(MsgType.REPLY, msg.id, { attachment: 1 });
        break;
      case MsgType.MAP: {
        const k = cases[i]!;
        const fd = k.make();
        await fe.send(MsgType.REPLY, msg.id, {
          map: 100 + i,
          segments: [[0, STORAGE_SIZE, 1]],
          memory: { size: STORAGE_SIZE, pageSize: 4096, writeSealed: k.writeSealed ?? readOnly },
          access: readOnly ? 'read' : 'write',
        }, [fd]);
        // Wait for the importer's verdict, then try to pull the memory from under it.
        const index = i;
        i += 1;
        void mapped(index).then(() => {
          try {
            ftruncateSync(fd, 0);
            log.push(`${k.name}: truncated`);
          } catch (err) {
            log.push(`${k.name}: truncate refused (${(err as NodeJS.ErrnoException).code})`);
          }
          closeSync(fd);
        });
        break;
      }
      case MsgType.UNMAP:
      case MsgType.DETACH:
        await fe.send(MsgType.REPLY, msg.id, {});
        break;
      default:
        break;
    }
  }
}

test('security: storage not sealed against shrinking (or against writes, for a read-only buffer) is refused with EPROTO before mapping; truncating it can never raise SIGBUS in the importer', async () => {
  const rw = new FakeExporter();
  const ro = new FakeExporter();
  const [ctl, ctlChild] = seqpacketPair();
  const rwCases = storageCases(false);
  const roCases = storageCases(true);
  const reports: Record<string, unknown>[] = [];
  const waiters = new Map<string, (() => void)[]>();
  const mapReported = (key: string): Promise<void> => new Promise((resolve) => {
    if (reports.some((r) => r.key === key && r.phase === 'map')) resolve();
    else waiters.set(key, [...(waiters.get(key) ?? []), resolve]);
  });
  const log: string[] = [];
  const outcome = runChild(SELF, { DMABUF_PROTOCOL_CHILD: 'hostile-storage', DMABUF_RW_CASES: String(rwCases.length), DMABUF_RO_CASES: String(roCases.length) }, {
    fds: [rw.fileEnd, ctlChild, ro.fileEnd],
    onReport: (r) => {
      reports.push(r);
      if (r.phase === 'map') for (const w of waiters.get(String(r.key)) ?? []) w();
    },
  });
  closeFds([ctlChild, rw.fileEnd, ro.fileEnd]);
  // Each case: the child maps (or is refused) and reports; we truncate; then the child touches.
  const errors: unknown[] = [];
  const serveRw = serveHostileStorage(rw, false, rwCases, (i) => mapReported(`rw-${i}`), log).catch((e: unknown) => { errors.push(e); });
  const serveRo = serveHostileStorage(ro, true, roCases, (i) => mapReported(`ro-${i}`), log).catch((e: unknown) => { errors.push(e); });
  // Let the child touch after each truncation.
  const go = (async () => {
    for (const key of [...rwCases.map((_, i) => `rw-${i}`), ...roCases.map((_, i) => `ro-${i}`)]) {
      await mapReported(key);
      await sleep(5); // the truncation happens right after the report
      await sendRaw(ctl, Buffer.from(key));
    }
  })().catch((e: unknown) => { errors.push(e); });
  const out = await outcome;
  await Promise.all([serveRw, serveRo, go]);
  assert.deepEqual(errors, [], describeOutcome(out));
  closeFds([ctl]);
  rw.close(true);
  ro.close(true);
  assert.equal(out.signal, null, `the importer died: ${describeOutcome(out)}`);
  assert.equal(out.code, 0, describeOutcome(out));
  for (const [tag, cases] of [['rw', rwCases], ['ro', roCases]] as const) {
    cases.forEach((k, i) => {
      const r = reports.find((x) => x.key === `${tag}-${i}` && x.phase === 'map');
      assert.ok(r, `no report for ${k.name}: ${describeOutcome(out)}`);
      const mine = (r.maps as string[]).filter((l) => l.includes(`/memfd:${k.name} `) || l.endsWith(`/memfd:${k.name}`) || l.includes(`/memfd:${k.name} (deleted)`));
      if (k.expect === 'refused') {
        assert.equal(r.code, 'EPROTO', `${k.name}: ${JSON.stringify(r)}`);
        assert.equal(r.isDmaBufError, true);
        if (k.re) assert.match(String(r.message), k.re, k.name);
        assert.deepEqual(mine, [], `${k.name}: refused, so no mapping of it may exist`);
      } else {
        assert.equal(r.ok, true, `${k.name}: ${JSON.stringify(r)}`);
        assert.ok(mine.length >= 1, `${k.name}: the positive control is mapped`);
      }
      const t = reports.find((x) => x.key === `${tag}-${i}` && x.phase === 'touched');
      assert.ok(t, `${k.name}: the child touched its views after the truncation`);
    });
  }
  // The positive controls' storage could not be truncated: it is sealed.
  assert.ok(log.includes('hostile-rw-sealed: truncate refused (EPERM)'), log.join('\n'));
  assert.ok(log.includes('hostile-ro-sealed: truncate refused (EPERM)'), log.join('\n'));
  assert.ok(log.includes('hostile-rw-unsealed: truncated'), log.join('\n'));
});

test('security: huge-page storage sealed against shrinking can still be hole-punched: the importer must not die of SIGBUS', { todo: 'importer.ts accepts hugetlbfs storage without F_SEAL_WRITE; fallocate(PUNCH_HOLE) with the pool exhausted raises SIGBUS in the importer' }, async (t) => {
  // Opt-in: it sizes and drains the machine's huge page pool, which other tests share.
  const nr = '/proc/sys/vm/nr_hugepages';
  if (process.env.DMABUF_TEST_HUGETLB_SIGBUS !== '1' || process.getuid?.() !== 0 || !existsSync(nr)) {
    t.skip('set DMABUF_TEST_HUGETLB_SIGBUS=1 (as root) to run: it drains the shared huge page pool');
    return;
  }
  const HUGE = 2 * 1024 * 1024;
  const pool = (): number => Number(readFileSync(nr, 'utf8').trim());
  const total = (): number => Number(/HugePages_Total:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  const poolBefore = pool();
  writeFileSync(nr, String(total() + 2)); // surplus pages in use count in the total
  const fe = new FakeExporter();
  const [ctl, ctlChild] = seqpacketPair();
  let hog = -1;
  let memory = -1;
  try {
    const outcome = runChild(SELF, { DMABUF_PROTOCOL_CHILD: 'huge-victim' }, { fds: [fe.fileEnd, ctlChild] });
    closeFds([ctlChild]);
    const hello = await fe.hello(20_000);
    await fe.send(MsgType.REPLY, hello.id, welcomeBody({ size: HUGE }));
    const ra = await fe.next(10_000);
    await fe.send(MsgType.REPLY, ra.msg.id, { attachment: 1 });
    const rm = await fe.next(10_000);
    memory = native.memfdCreate('hostile-huge', c.MFD_ALLOW_SEALING | c.MFD_HUGETLB | c.MFD_HUGE_2MB);
    native.ftruncate(memory, HUGE);
    native.fallocate(memory, 0, 0, HUGE); // the exporter's page, as after any write of its own
    native.addSeals(memory, SHRINK_GROW());
    await fe.send(MsgType.REPLY, rm.msg.id, { map: 1, segments: [[0, HUGE, 1]], memory: { size: HUGE, pageSize: HUGE, writeSealed: false }, access: 'write' }, [memory]);
    // Answer whatever else the importer asks (an undo, a detach) so that it can finish.
    void (async () => {
      for (;;) {
        const r = await recvRaw(fe.channel, 20_000).catch(() => null);
        if (r === null || r === 'eof') return;
        closeFds(r.fds);
        const id = r.data.length >= 12 ? r.data.readUInt32LE(8) : 0;
        if (id) await fe.send(MsgType.REPLY, id, {}).catch(() => {});
      }
    })();
    const verdict = await recvRaw(ctl, 10_000);
    const mapped = verdict !== null && verdict !== 'eof' && verdict.data.toString() === 'mapped';
    if (mapped) {
      // The seals allow a hole to be punched; then take every free huge page, so that the
      // importer's next touch of the page finds none.
      native.fallocate(memory, 3 /* PUNCH_HOLE | KEEP_SIZE */, 0, HUGE);
      hog = native.memfdCreate('hostile-hog', c.MFD_HUGETLB | c.MFD_HUGE_2MB);
      let pages = 0;
      for (let n = 1; n < 64; n++) {
        try {
          native.ftruncate(hog, n * HUGE);
          native.fallocate(hog, 0, (n - 1) * HUGE, HUGE);
          pages = n;
        } catch {
          break;
        }
      }
      t.diagnostic(`hog took ${pages} huge pages; ${readFileSync('/proc/meminfo', 'utf8').split('\n').filter((l) => l.startsWith('HugePages_')).join(', ')}`);
      await sendRaw(ctl, Buffer.from('touch'));
    }
    const out = await outcome;
    t.diagnostic(`mapped: ${mapped}; child: ${JSON.stringify(out.reports)}, exit ${out.code}, signal ${out.signal}`);
    assert.ok(mapped, `the importer did not map the huge page (pool busy?): ${describeOutcome(out)}`);
    assert.equal(out.signal, null, `the importer died: ${describeOutcome(out)}`);
  } finally {
    closeFds([ctl, ...(hog >= 0 ? [hog] : []), ...(memory >= 0 ? [memory] : [])]);
    fe.close();
    writeFileSync(nr, String(poolBefore));
  }
});

test('a hostile exporter announcing more than 4 GiB of (sparse, sealed) memory cannot crash the importer', async () => {
  const fe = new FakeExporter();
  const outcome = runChild(SELF, { DMABUF_PROTOCOL_CHILD: 'big-victim' }, { fds: [fe.fileEnd] });
  const SIZE = 5 * 1024 ** 3;
  let stopped = false;
  try {
    const hello = await fe.hello(20_000);
    await fe.send(MsgType.REPLY, hello.id, welcomeBody({ size: SIZE }));
    const ra = await fe.next(10_000);
    await fe.send(MsgType.REPLY, ra.msg.id, { attachment: 1 });
    const rm = await fe.next(10_000);
    const fd = memfd('hostile-big', SIZE, SHRINK_GROW());
    await fe.send(MsgType.REPLY, rm.msg.id, { map: 1, segments: [[0, SIZE, 1]], memory: { size: SIZE, pageSize: 4096, writeSealed: false }, access: 'write' }, [fd]);
    native.close(fd);
    // Answer whatever follows (the undo of a failed map, the detach).
    const answering = (async () => {
      for (;;) {
        const r = await recvRaw(fe.channel, 20_000, 16, () => stopped).catch(() => null);
        if (r === null || r === 'eof') return;
        closeFds(r.fds);
        const id = r.data.length >= 12 ? r.data.readUInt32LE(8) : 0;
        if (id) await fe.send(MsgType.REPLY, id, {}).catch(() => {});
      }
    })();
    const out = await outcome;
    stopped = true;
    await answering;
    assert.equal(out.signal, null, `the importer died: ${describeOutcome(out)}`);
    assert.equal(out.code, 0, describeOutcome(out));
    const r = out.reports.at(-1);
    assert.ok(r?.ok === true || (r?.isDmaBufError === true && typeof r.code === 'string'), describeOutcome(out));
  } finally {
    stopped = true;
    fe.close();
  }
});

// ---------------------------------------------------------------------------------------
// Channels that are not what they claim
// ---------------------------------------------------------------------------------------

test('a HELLO whose channel is the other end of another HELLO\'s channel does not leave the exporter holding both forever', async () => {
  const buf = systemHeap.allocate(4096, { name: 'crossed' });
  const fd = buf.fd();
  const before = serviceChannels().length;
  const [a, b] = seqpacketPair();
  await sendRaw(fd, encode(MsgType.HELLO, 1, { versions: [1] }), [a]);
  await sendRaw(fd, encode(MsgType.HELLO, 2, { versions: [1] }), [b]);
  closeFds([a, b]);
  await turns(20);
  await sleep(50);
  try {
    assert.equal(serviceChannels().length, before, 'the exporter still holds channels nobody else can reach');
  } finally {
    native.close(fd);
    buf.put();
  }
});

test('a HELLO whose channel is a descriptor of the buffer\'s own file does not keep the buffer alive after every holder is gone', async () => {
  const { buf, log } = await (async () => {
    const log = { released: 0 };
    const b = DmaBuf.export({ size: 4096, priv: log, ops: { mapDmaBuf: () => new SgTable([{ offset: 0, length: 4096 }]), unmapDmaBuf() {}, release: () => { log.released += 1; } } });
    return { buf: b, log };
  })();
  const fd = buf.fd();
  const own = buf.fd();
  await sendRaw(fd, encode(MsgType.HELLO, 1, { versions: [1] }), [own]);
  native.close(own);
  await turns(20);
  native.close(fd);
  buf.put();
  await sleep(100);
  assert.equal(log.released, 1, 'release never ran: the exporter holds its own file');
});

// ---------------------------------------------------------------------------------------
// Child processes (victims)
// ---------------------------------------------------------------------------------------

const children: Record<string, () => Promise<void>> = {
  /** An exporter answering bad messages from importers that are already gone. */
  async 'answer-closed-peer'() {
    const buf = systemHeap.allocate(8192, { name: 'victim', contents: PATTERN });
    const fd = buf.fd();
    for (let round = 0; round < 20; round++) {
      const ch = await rawHandshake(fd);
      const buffer = ch.welcome.body.buffer as number;
      const bad = [
        patched(MsgType.ATTACH, 7, { buffer }, { reserved: 1 }), // answered from the poll callback
        encode(MsgType.UNMAP, 8, { map: 12345 }), // answered from an async handler
        encode(MsgType.ATTACH, 9, { buffer, device: deviceBody() }), // a reply that cannot be sent
        encode(MsgType.MAP, 10, { attachment: 1, direction: 'to-device' }),
      ];
      for (const m of bad.slice(0, 1 + (round % bad.length))) native.sendmsg(ch.sock, m, [], 0);
      native.close(ch.sock);
      await turns(3);
    }
    await sleep(50);
    const ch = await rawHandshake(fd);
    const cycle = [...await rawCycle(ch, 100, 8)];
    native.close(ch.sock);
    native.close(fd);
    buf.put();
    report({ ok: true, cycle });
  },

  /** An importer under `ulimit -n 64`, buffer file at descriptor 3. */
  async 'emfile-importer'() {
    const fill: number[] = [];
    const exhaust = (): void => {
      for (;;) {
        try {
          fill.push(openSync('/dev/null', 'r'));
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EMFILE') return;
          throw err;
        }
      }
    };
    const release = (): void => { while (fill.length) closeSync(fill.pop()!); };
    const outcome = async (step: string, fn: () => Promise<unknown>): Promise<unknown> => {
      try {
        return await fn();
      } catch (err) {
        report({ step, code: (err as { code?: string }).code, isDmaBufError: err instanceof DmaBufError });
        return undefined;
      }
    };
    report({ step: 'limit', nofile: Number(readFileSync('/proc/self/limits', 'utf8').match(/Max open files\s+(\d+)/)?.[1]) });
    await turns(5);
    const start = fdCount();
    exhaust();
    await outcome('get-full', () => DmaBuf.get(3));
    release();
    const buf = await DmaBuf.get(3);
    const att = await buf.attach(new CpuDevice());
    exhaust();
    await outcome('map-full', () => att.map('to-device'));
    release();
    const sgt = await att.map('to-device');
    report({ step: 'map-after', bytes: [...sgt.segments[0]!.view!.subarray(0, 8)] });
    await att.unmap(sgt);
    await att.detach();
    buf.put();
    await until(() => importChannels().length === 0 || fdCount() <= start, 2000).catch(() => {});
    await sleep(20);
    report({ step: 'done', fdsBackToStart: fdCount() <= start + 1 /* the channel to the exporter may stay */ });
  },

  /** An exporter under `ulimit -n 64`: sends its buffer on descriptor 3, then runs out of descriptors. */
  async 'emfile-exporter'() {
    const buf = systemHeap.allocate(8192, { name: 'emfile-exporter', contents: PATTERN });
    const fd = buf.fd();
    native.sendmsg(3, Buffer.from('buf'), [fd], 0);
    native.close(fd);
    const fill: number[] = [];
    for (;;) {
      try {
        fill.push(openSync('/dev/null', 'r'));
      } catch {
        break;
      }
    }
    for (;;) {
      const r = await recvRaw(3, 60_000);
      if (r === null || r === 'eof') break;
      const what = r.data.toString();
      if (what === 'free') {
        while (fill.length) closeSync(fill.pop()!);
        native.sendmsg(3, Buffer.from('freed'), [], 0);
      } else if (what === 'exit') {
        break;
      }
    }
    buf.put();
    await until(() => buf.released, 5000).catch(() => {});
    report({ released: buf.released });
  },

  /** An importer of two hostile buffers (3: read-write, 5: read-only); control on 4. */
  async 'hostile-storage'() {
    const views: Uint8Array[] = [];
    for (const [tag, fileFd, count, direction] of [['rw', 3, Number(process.env.DMABUF_RW_CASES), 'bidirectional'], ['ro', 5, Number(process.env.DMABUF_RO_CASES), 'to-device']] as const) {
      const buf = await DmaBuf.get(fileFd);
      const att = await buf.attach(new CpuDevice());
      for (let i = 0; i < count; i++) {
        const key = `${tag}-${i}`;
        try {
          const sgt = await att.map(direction);
          views.push(sgt.segments[0]!.view!);
          report({ key, phase: 'map', ok: true, maps: mapsMatching('memfd:hostile-') });
        } catch (err) {
          report({ key, phase: 'map', code: (err as { code?: string }).code, message: (err as Error).message, isDmaBufError: err instanceof DmaBufError, maps: mapsMatching('memfd:hostile-') });
        }
        const go = await recvRaw(4, 30_000);
        if (go === null || go === 'eof') throw new Error('no go from the parent');
        let sum = 0;
        for (const v of views) for (let j = 0; j < v.length; j += 1024) sum += v[j]!;
        report({ key, phase: 'touched', sum });
      }
      buf.put();
    }
  },

  /** An importer of a huge-page buffer at 3; control on 4. */
  async 'huge-victim'() {
    const buf = await DmaBuf.get(3);
    const att = await buf.attach(new CpuDevice());
    try {
      const sgt = await att.map('bidirectional');
      native.sendmsg(4, Buffer.from('mapped'), [], 0);
      await recvRaw(4, 10_000);
      const v = sgt.segments[0]!.view!;
      let sum = 0;
      for (let j = 0; j < v.length; j += 4096) sum += v[j]!;
      report({ sum });
    } catch (err) {
      native.sendmsg(4, Buffer.from('refused'), [], 0);
      report({ code: (err as { code?: string }).code });
    }
  },

  /** An importer of a buffer announced as 5 GiB, at 3. */
  async 'big-victim'() {
    const buf = await DmaBuf.get(3);
    const att = await buf.attach(new CpuDevice());
    try {
      const sgt = await att.map('bidirectional');
      report({ ok: true, length: sgt.segments[0]!.length });
      await att.unmap(sgt);
    } catch (err) {
      report({ code: (err as { code?: string }).code, isDmaBufError: err instanceof DmaBufError });
    }
    await att.detach().catch(() => {});
    buf.put();
  },
};

if (scenario && SELF === process.argv[1]) {
  const run = children[scenario];
  if (!run) throw new Error(`unknown child scenario ${scenario}`);
  await run();
}

test('a fake exporter\'s table that breaks the device\'s constraints is refused before it is expanded or mapped', async () => {
  await withFdCheck(async () => {
    const fe = new FakeExporter();
    const buf = await importThrough(fe);
    const att = buf.attach(new CpuDevice());
    const a = await fe.next();
    await fe.send(MsgType.REPLY, a.msg.id, { attachment: 1 });
    const attachment = await att;
    for (const [segments, id] of [[[[0, 1000, 4]], 1], [[[0, 1, 4096]], 2]] as const) {
      const p = attachment.map('to-device');
      const req = await fe.next();
      closeFds(req.fds);
      const mem = memfd('fake-storage', 4096, SHRINK_GROW());
      await fe.send(MsgType.REPLY, req.msg.id, { map: id, segments, memory: { size: 4096, pageSize: 4096, writeSealed: false }, access: 'read' }, [mem]);
      native.close(mem);
      await assert.rejects(p, codeIs('EPROTO', /breaks the constraints/));
      // The importer gave the map back at once (a notification, no answer expected).
      const undo = await fe.next();
      assert.equal(undo.msg.type, MsgType.UNMAP);
      assert.equal(undo.msg.body.map, id);
    }
    await attachment.detach();
    buf.put();
    fe.close();
  });
});
