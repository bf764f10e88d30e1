/**
 * One-message hand-offs: the properties the new path must keep (issue 7), against real
 * processes and threads.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, readdirSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import { BufferChannel, CpuDevice, DmaBuf, DmaBufError, postBuffer, systemHeap } from '../../src/index.js';
import { MsgType } from '../../src/remote/protocol.js';
import { serviceChannels } from '../../src/remote/service.js';
import { encodeHandoffMessage } from '../../src/transport/channel-wire.js';
import { native } from '../../src/native/binding.js';
import { finish, nextLine, reapChildren, startChild, waitFor, INDEX_URL } from '../helpers.js';

after(reapChildren);

/** A system-heap buffer whose storage exists, filled with `byte`. */
async function filled(size: number, byte: number, name: string): Promise<DmaBuf> {
  const buf = systemHeap.allocate(size, { name });
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('bidirectional');
  for (const seg of sgt.segments) seg.view!.fill(byte);
  await att.unmap(sgt);
  await att.detach();
  return buf;
}

/** Tokens of this thread's service channels now. */
function tokens(): Set<string> {
  return new Set(serviceChannels().map((c) => c.token));
}

/** The service channel of this thread opened since `before`. */
function newChannel(before: Set<string>) {
  return serviceChannels().find((c) => !before.has(c.token));
}

/**
 * A worker that, for each buffer posted to it, does `receiveBuffer(m, { map })`, unmaps,
 * detaches and puts, then runs `after` in the same turn (`parentPort`, `workerData` in scope).
 * It posts 'ready' once it listens.
 */
function releasingWorker(after: string, workerData?: unknown): Worker {
  return new Worker(`
    const { parentPort, workerData } = require('node:worker_threads');
    import(${JSON.stringify(INDEX_URL)}).then((m) => {
      parentPort.on('message', async (msg) => {
        const { buffer, attachment, sgt } = await m.receiveBuffer(msg, { map: { device: new m.CpuDevice(), direction: 'to-device' } });
        await attachment.unmap(sgt);
        await attachment.detach();
        buffer.put();
        ${after}
      });
      parentPort.postMessage('ready');
    });
  `, { eval: true, workerData });
}

/** A child script that waits for a line on its stdin: `await step()`. */
const STEP = `
const rl = (await import('node:readline')).createInterface({ input: process.stdin });
const lines = rl[Symbol.asyncIterator]();
const step = async () => (await lines.next()).value;
`;

/** A child running `script` with the other end of a new BufferChannel pair as its fd 3. */
function childOnChannel(script: string): { ch: BufferChannel; child: ReturnType<typeof startChild>; done: ReturnType<typeof finish> } {
  const [ch, theirs] = BufferChannel.pair();
  const child = startChild(script, [theirs]);
  closeSync(theirs);
  return { ch, child, done: finish(child) };
}

/** Ends a child started with {@link STEP} (its stdin closes) and checks that it exited well. */
async function ended(child: ReturnType<typeof startChild>, done: ReturnType<typeof finish>): Promise<void> {
  child.stdin!.end();
  const r = await done;
  assert.equal(r.code, 0, r.stderr);
}

test('a receiver that takes only the descriptor gives the map made ahead back: unmap, detach and put in one record (a BATCH)', async () => {
  const buf = await filled(1 << 16, 0x33, 'declined');
  const { ch, child, done } = childOnChannel(`${STEP}
    const fs = await import('node:fs');
    const ch = m.BufferChannel.fromFd(3);
    const { fd, meta } = await ch.receiveFd();
    out({ meta, socket: fs.fstatSync(fd).isSocket() });
    fs.closeSync(fd);
    await step();
    ch.close();
  `);
  const before = tokens();
  try {
    await ch.send(buf, { frame: 2 });
    assert.deepEqual(await nextLine(child), { meta: { frame: 2 }, socket: true });
    await waitFor(() => newChannel(before)?.notifications === 3, 5000, 'the notifications');
    const served = newChannel(before)!;
    assert.equal(served.requests, 0);
    assert.equal(served.records, 1, 'the unmap, detach and put of the declined offer left together');
    await waitFor(() => buf.mapCount === 0 && buf.attachments.length === 0, 5000, 'the undo');
  } finally {
    await ended(child, done);
    ch.close();
    buf.put();
  }
});

test('an unmap or a detach that no put follows still reaches the exporter, at the end of the turn', async () => {
  const buf = await filled(1 << 16, 0x21, 'no-put');
  const { ch, child, done } = childOnChannel(`${STEP}
    const ch = m.BufferChannel.fromFd(3);
    const { buffer, attachment, sgt } = await ch.receive({ map: { device: new m.CpuDevice(), direction: 'to-device' } });
    await attachment.unmap(sgt);
    out({ unmapped: true });
    await step();
    await attachment.detach();
    out({ detached: true });
    await step();
    buffer.put();
    ch.close();
  `);
  const before = tokens();
  try {
    await ch.send(buf, {});
    await nextLine(child, (v) => 'unmapped' in v);
    await waitFor(() => buf.mapCount === 0, 5000, 'the unmap, alone');
    assert.equal(buf.attachments.length, 1, 'the receiver still holds its attachment');
    child.stdin!.write('go\n');
    await nextLine(child, (v) => 'detached' in v);
    await waitFor(() => buf.attachments.length === 0, 5000, 'the detach, alone');
    assert.equal(newChannel(before)?.records, 2, 'each left on its own, without waiting for a put');
    child.stdin!.write('go\n');
  } finally {
    await ended(child, done);
    ch.close();
  }
  buf.put();
  await waitFor(() => buf.released, 5000, 'release');
});

test('a first hand-off to another process is one message: mapped with no request to the exporter; unmap, detach and put are notifications', async () => {
  const buf = await filled(1 << 16, 0x5a, 'one-message');
  const { ch, child, done } = childOnChannel(`${STEP}
    const ch = m.BufferChannel.fromFd(3);
    const { buffer, attachment, sgt, meta } = await ch.receive({ map: { device: new m.CpuDevice(), direction: 'to-device' } });
    const view = sgt.segments[0].view;
    out({ first: view[0], last: view[view.length - 1], meta, segments: sgt.segments.length });
    await step();
    await attachment.unmap(sgt);
    const stale = view.byteLength;
    await attachment.detach();
    buffer.put();
    out({ done: true, stale });
    await step();
    ch.close();
  `);
  const before = tokens();
  try {
    await ch.send(buf, { frame: 1 });
    const got = await nextLine(child, (v) => 'first' in v);
    assert.deepEqual(got, { first: 0x5a, last: 0x5a, meta: { frame: 1 }, segments: 1 });
    const served = newChannel(before);
    assert.ok(served, 'a channel serves the child');
    assert.equal(served.requests, 0, 'the child asked the exporter nothing');
    assert.equal(buf.mapCount, 1, 'the map made with the hand-off is outstanding');
    child.stdin!.write('go\n');
    assert.deepEqual(await nextLine(child, (v) => 'done' in v), { done: true, stale: 0 });
    await waitFor(() => buf.mapCount === 0 && buf.attachments.length === 0 && newChannel(before)?.notifications === 3, 5000, 'the notifications');
    assert.equal(newChannel(before)?.requests, 0, 'still no request: unmap, detach and put did not wait');
    assert.equal(newChannel(before)?.records, 1, 'unmap, detach and put left as one record, at the end of the turn');

  } finally {
    await ended(child, done);
    ch.close();
    buf.put();
  }
  await waitFor(() => buf.released, 5000, 'release');
});

test('a map made with a hand-off is outstanding: seal waits until the receiver unmaps', async () => {
  const buf = await filled(1 << 16, 0x11, 'seal-waits');
  const { ch, child, done } = childOnChannel(`${STEP}
    const ch = m.BufferChannel.fromFd(3);
    const { buffer, attachment, sgt } = await ch.receive({ map: { device: new m.CpuDevice(), direction: 'bidirectional' } });
    sgt.segments[0].view[0] = 0x22;
    out({ mapped: true });
    await step();
    await attachment.detach();
    buffer.put();
    out({ detached: true });
    await step();
  `);
  try {
    await ch.send(buf);
    await nextLine(child, (v) => 'mapped' in v);
    let sealed = false;
    const sealing = buf.seal().then(() => { sealed = true; });
    await sleep(200);
    assert.equal(sealed, false, 'seal waits for the receiver\'s writable map');
    child.stdin!.write('go\n');
    await sealing;
    assert.equal(buf.sealed, true);
    const att = await buf.attach(new CpuDevice());
    const sgt = await att.map('to-device');
    assert.equal(sgt.segments[0]!.view![0], 0x22, 'the receiver wrote into the buffer itself');
    await att.detach();
  } finally {
    child.stdin!.end();
    await done;
    ch.close();
    buf.put();
  }
});

test('a receiver killed while it holds a hand-off map: the exporter drops the attachment and the map, and releases once', async () => {
  const buf = await filled(1 << 16, 0x33, 'killed-receiver');
  const { ch, child, done } = childOnChannel(`
    const ch = m.BufferChannel.fromFd(3);
    const { sgt } = await ch.receive({ map: { device: new m.CpuDevice(), direction: 'to-device' } });
    out({ first: sgt.segments[0].view[0] });
    setInterval(() => {}, 1000);
  `);
  await ch.send(buf);
  assert.deepEqual(await nextLine(child, (v) => 'first' in v), { first: 0x33 });
  assert.equal(buf.mapCount, 1);
  child.kill('SIGKILL');
  await done;
  await waitFor(() => buf.mapCount === 0 && buf.attachments.length === 0, 5000, 'cleanup after the receiver died');
  ch.close();
  buf.put();
  await waitFor(() => buf.released, 5000, 'release');
});

test('late allocation: a buffer with no storage yet goes without a map, and the receiver\'s constraints shape the storage', async () => {
  const buf = systemHeap.allocate(1 << 16, { name: 'late' });
  const [ch, theirs] = BufferChannel.pair();
  const child = startChild(`
    const ch = m.BufferChannel.fromFd(3);
    const { buffer, attachment, sgt } = await ch.receive({ map: { device: new m.CpuDevice({ maxSegmentSize: 4096 }), direction: 'bidirectional' } });
    sgt.segments[3].view.fill(9);
    out({ segments: sgt.segments.length, lengths: [...new Set(sgt.segments.map((s) => s.length))] });
    await attachment.detach();
    buffer.put();
    ch.close();
  `, [theirs]);
  closeSync(theirs);
  const before = tokens();
  try {
    await ch.send(buf);
    const r = await finish(child);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.json[0], { segments: 16, lengths: [4096] });
    assert.equal(newChannel(before)?.requests ?? 2, 2, 'attach and map were asked for');
    const att = await buf.attach(new CpuDevice());
    const sgt = await att.map('to-device');
    assert.equal(sgt.segments[0]!.view![3 * 4096], 9);
    await att.detach();
  } finally {
    ch.close();
    buf.put();
  }
});

test('an exporter that dies leaves the receiver\'s hand-off map valid; new operations fail with EPIPE', async () => {
  const { ch, child, done } = childOnChannel(`${STEP}
    const ch = m.BufferChannel.fromFd(3);
    const buf = m.systemHeap.allocate(1 << 16, { name: 'dying-exporter' });
    const att = await buf.attach(new m.CpuDevice());
    const sgt = await att.map('bidirectional');
    sgt.segments[0].view.fill(0x44);
    await att.unmap(sgt);
    await att.detach();
    await ch.send(buf);
    out({ sent: true });
    await step();
  `);
  const { buffer, attachment, sgt } = await ch.receive({ map: { device: new CpuDevice(), direction: 'to-device' } });
  child.kill('SIGKILL');
  await done;
  assert.equal(sgt!.segments[0]!.view![100], 0x44);
  await assert.rejects(buffer.attach(new CpuDevice()), (e: unknown) => (e as { code?: string }).code === 'EPIPE');
  assert.equal(sgt!.segments[0]!.view![0], 0x44, 'the mapping outlives the exporter');
  await attachment!.detach();
  buffer.put();
  ch.close();
});

test('unmap, detach and put resolve while the exporter is stopped; it undoes them in order when it runs again', async () => {
  const { ch, child, done } = childOnChannel(`
    const ch = m.BufferChannel.fromFd(3);
    const buf = m.systemHeap.allocate(1 << 16, { name: 'stopped-exporter' });
    const att = await buf.attach(new m.CpuDevice());
    await att.unmap(await att.map('bidirectional'));
    await att.detach();
    await ch.send(buf);
    buf.put();
    out({ sent: true });
    const timer = setInterval(() => {
      if (buf.released) { out({ released: true }); clearInterval(timer); ch.close(); }
    }, 5);
  `);
  const { buffer, attachment, sgt } = await ch.receive({ map: { device: new CpuDevice(), direction: 'bidirectional' } });
  await nextLine(child, (v) => 'sent' in v);
  child.kill('SIGSTOP');
  try {
    await attachment!.unmap(sgt!);
    await attachment!.detach();
    buffer.put();
  } finally {
    child.kill('SIGCONT');
  }
  ch.close();
  const r = await done;
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.json.some((v) => v.released === true), 'the exporter released after the notifications');
});

test('a forged hand-off from a holder that is not the exporter is not trusted: the receiver imports through the file', async () => {
  const buf = await filled(1 << 16, 0x5a, 'forged');
  const [toHostile, hostileEnd] = BufferChannel.pair();
  const [a, b] = native.socketpair(native.constants.SOCK_SEQPACKET, false);
  // The hostile holder sends the victim the buffer's file with its own memfd and description.
  const hostile = startChild(`
    const ch = m.BufferChannel.fromFd(3);
    const { fd } = await ch.receiveFd();
    const mem = native.memfdCreate('forged', 3);
    native.ftruncate(mem, 65536);
    native.addSeals(mem, native.constants.F_SEAL_SHRINK | native.constants.F_SEAL_GROW);
    const v = native.mmap(mem, 65536, 0, 3, native.constants.MAP_SHARED);
    new Uint8Array(native.mappingView(v, 0, 65536)).fill(0xee);
    const { encodeHandoffMessage } = await import(${JSON.stringify(new URL('../../src/transport/channel-wire.js', import.meta.url).href)});
    const body = { buffer: 1, size: 65536, flags: 2, name: 'forged', exporter: 'system', sealed: false, pid: process.pid, token: 'ab'.repeat(16),
      map: { attachment: 1, map: 1, segments: [[0, 65536, 1]], memory: { size: 65536, pageSize: 4096, writeSealed: false }, access: 'write' } };
    native.sendmsg(4, Buffer.from(encodeHandoffMessage(undefined, body)), [fd, mem], 0);
    out({ forged: true });
    await ch.receiveFd().catch(() => {});
  `, [hostileEnd, a]);
  closeSync(hostileEnd);
  closeSync(a);
  const victim = startChild(`
    const ch = m.BufferChannel.fromFd(3);
    const { buffer, attachment, sgt } = await ch.receive({ map: { device: new m.CpuDevice(), direction: 'to-device' } });
    out({ first: sgt.segments[0].view[0] });
    await attachment.detach();
    buffer.put();
    ch.close();
  `, [b]);
  closeSync(b);
  try {
    await toHostile.sendFd(buf.fd(), {});
    const r = await finish(victim);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.json[0], { first: 0x5a }, 'the victim reads the real buffer, not the forged memory');
  } finally {
    toHostile.close();
    await finish(hostile);
    buf.put();
  }
  void encodeHandoffMessage;
});

test('an exporter whose hand-off carries storage that is not sealed is refused: EPROTO, nothing mapped, and the attach and map made ahead are given back with the put in one record', async () => {
  const [mine, theirs] = BufferChannel.pair();
  // A hostile exporter: its own "buffer file", channel and an unsealed memfd, all made by it.
  const hostile = startChild(`
    const c = native.constants;
    const [file, fileEnd] = native.socketpair(c.SOCK_SEQPACKET, false);
    const [chan, chanEnd] = native.socketpair(c.SOCK_SEQPACKET, false);
    const mem = native.memfdCreate('unsealed', 3);
    native.ftruncate(mem, 65536);
    const { encodeHandoffMessage, encodeChannelMessage } = await import(${JSON.stringify(new URL('../../src/transport/channel-wire.js', import.meta.url).href)});
    const { decode, unbatch } = await import(${JSON.stringify(new URL('../../src/remote/protocol.js', import.meta.url).href)});
    const body = { buffer: 7, size: 65536, flags: 2, name: 'unsealed', exporter: 'hostile', sealed: false, pid: process.pid, token: 'cd'.repeat(16), channel: true,
      map: { attachment: 5, map: 6, segments: [[0, 65536, 1]], memory: { size: 65536, pageSize: 4096, writeSealed: false }, access: 'write' } };
    native.sendmsg(3, Buffer.from(encodeHandoffMessage({ frame: 9 }, body)), [fileEnd, mem, chanEnd], 0);
    native.close(fileEnd); native.close(chanEnd); native.close(mem);
    // Then a plain message: the refusal (thrown while the message was being read) must not
    // stop the channel.
    const fs = await import('node:fs');
    const devnull = fs.openSync('/dev/null', 'r');
    native.sendmsg(3, Buffer.from(encodeChannelMessage({ frame: 10 })), [devnull], 0);
    fs.closeSync(devnull);
    const got = [];
    for (let i = 0; i < 50 && got.length < 3; i++) {
      const r = native.recvmsg(chan, 65536, 4, c.MSG_DONTWAIT, true);
      if (r === null) { await new Promise((res) => setTimeout(res, 20)); continue; }
      const msg = decode(r.data);
      const list = msg.type === 16 ? unbatch(msg.body, () => true) : [msg];
      got.push(...list.map((x) => [x.type, x.body]));
      out({ record: list.length });
    }
    out({ got });
    native.close(file);
  `, [theirs]);
  closeSync(theirs);
  const fdsBefore = readdirSync('/proc/self/fd').length;
  try {
    await assert.rejects(mine.receive({ map: { device: new CpuDevice(), direction: 'to-device' } }), (err: unknown) => {
      assert.ok(DmaBufError.is(err, 'EPROTO'), String(err));
      assert.match((err as Error).message, /not sealed against shrinking and growing/);
      return true;
    });
    const next = await mine.receiveFd();
    closeSync(next.fd);
    assert.deepEqual(next.meta, { frame: 10 }, 'the channel goes on after the refusal');
    const r = await finish(hostile);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.json.filter((v) => 'record' in v), [{ record: 3 }], 'one record');
    assert.deepEqual(r.json.find((v) => 'got' in v)?.got, [[MsgType.UNMAP, { map: 6 }], [MsgType.DETACH, { attachment: 5 }], [MsgType.PUT, { buffer: 7, grants: 1 }]]);
    await waitFor(() => readdirSync('/proc/self/fd').length <= fdsBefore, 5000, 'every descriptor of the refused hand-off closed');
  } finally {
    mine.close();
  }
});

test('between threads: receiveBuffer(message, { map }) maps with no request to the exporter thread', async () => {
  const buf = await filled(1 << 20, 0x66, 'to-worker');
  const worker = new Worker(`
    const { parentPort } = require('node:worker_threads');
    import(${JSON.stringify(INDEX_URL)}).then((m) => {
      parentPort.on('message', async (msg) => {
        const { buffer, attachment, sgt } = await m.receiveBuffer(msg, { map: { device: new m.CpuDevice(), direction: 'to-device' } });
        const first = sgt.segments[0].view[0];
        await attachment.unmap(sgt);
        await attachment.detach();
        buffer.put();
        parentPort.postMessage({ first });
      });
    });
  `, { eval: true });
  const before = tokens();
  try {
    await postBuffer(worker, buf);
    const reply = await new Promise<{ first: number }>((resolve) => worker.once('message', resolve));
    assert.deepEqual(reply, { first: 0x66 });
    const served = newChannel(before);
    assert.ok(served);
    assert.equal(served.requests, 0, 'the worker asked the exporter thread nothing');
    await waitFor(() => buf.mapCount === 0 && buf.attachments.length === 0, 5000, 'the worker\'s notifications');
  } finally {
    await worker.terminate();
    buf.put();
  }
  await waitFor(() => buf.released, 5000, 'release');
});

test('a consumer\'s acknowledgement sent right after its put reaches the producer before the unmap, detach and put, which follow at the end of the consumer\'s turn', async () => {
  const buf = await filled(1 << 16, 0x33, 'ack-first');
  // The worker acknowledges, then stays in the same turn (blocked on `gate`) until told to go on.
  const gate = new Int32Array(new SharedArrayBuffer(4));
  const worker = releasingWorker(`
    parentPort.postMessage({ acked: true });
    Atomics.wait(workerData.gate, 0, 0, 10000);
  `, { gate });
  const before = tokens();
  try {
    await new Promise((resolve) => worker.once('message', resolve)); // ready
    await postBuffer(worker, buf);
    assert.deepEqual(await new Promise((resolve) => worker.once('message', resolve)), { acked: true });
    assert.equal(buf.mapCount, 1, 'the acknowledgement came first: the map made ahead is still outstanding here');
    await sleep(150);
    assert.equal(buf.mapCount, 1, 'nothing was sent in the consumer\'s turn');
    assert.equal(buf.attachments.length, 1);
    Atomics.store(gate, 0, 1);
    Atomics.notify(gate, 0);
    await waitFor(() => buf.mapCount === 0 && buf.attachments.length === 0, 5000, 'the notifications at the end of the consumer\'s turn');
    const served = newChannel(before);
    assert.equal(served?.records, 1, 'unmap, detach and put in one record');
    assert.equal(served?.requests, 0);
  } finally {
    Atomics.store(gate, 0, 1);
    Atomics.notify(gate, 0);
    await worker.terminate();
    buf.put();
  }
  await waitFor(() => buf.released, 5000, 'release');
});

test('a worker that puts and ends in the same turn, before its notifications leave: the exporter still drops the map and the attachment, and the buffer is released', async () => {
  for (const end of ['process.exit(0)', 'parentPort.close()']) {
    const buf = await filled(1 << 16, 0x44, 'put-then-end');
    const worker = releasingWorker(`${end};`);
    try {
      await new Promise((resolve) => worker.once('message', resolve)); // ready
      const exited = new Promise((resolve) => worker.once('exit', resolve));
      await postBuffer(worker, buf);
      await exited;
      await waitFor(() => buf.mapCount === 0 && buf.attachments.length === 0, 5000, `the exporter's cleanup after ${end}`);
    } finally {
      await worker.terminate();
      buf.put();
    }
    await waitFor(() => buf.released, 5000, `release after ${end}`);
  }
});
