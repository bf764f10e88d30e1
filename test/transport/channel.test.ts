/**
 * Buffer channels: send/receive over real socket pairs, backpressure, abort, malformed input
 * injected on the raw peer socket, peer close, close, child processes.
 */
import { test } from 'node:test';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import assert from 'node:assert/strict';
import { closeSync, fstatSync } from 'node:fs';
import { setImmediate as immediate, setTimeout as sleep } from 'node:timers/promises';
import { BufferChannel, DmaBuf, DmaBufError, CpuDevice, systemHeap } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { encodeChannelMessage } from '../../src/transport/channel-wire.js';
import { recordingExport } from '../helpers.js';
import { INDEX_URL, assertSameFds, settleFds, finish, isCode, openFds, runChild, startChild } from './util.js';

const K = native.constants;

/** A channel and the raw descriptor of its peer (for injecting bytes); both closed by fn's end. */
async function withRawPeer(fn: (ch: BufferChannel, peer: number) => Promise<void>): Promise<void> {
  const [ch, peer] = BufferChannel.pair();
  try {
    await fn(ch, peer);
  } finally {
    ch.close();
    try {
      native.close(peer);
    } catch {
      // closed by the test
    }
  }
}

/** Two channels connected to each other. */
function channelPair(): [BufferChannel, BufferChannel] {
  const [a, peer] = BufferChannel.pair();
  return [a, BufferChannel.fromFd(peer)];
}

test('send/receive in one thread returns the same DmaBuf with one more reference, and the metadata', async () => {
  const before = openFds();
  const { buf, log } = recordingExport(8192, {}, 'same-thread');
  const [a, b] = channelPair();
  try {
    assert.equal(buf.refs, 1);
    await a.send(buf, { frame: 7, tags: ['x', 'y'], ratio: 0.5, nothing: null });
    const { buffer, meta } = await b.receive();
    assert.equal(buffer, buf, 'the very same object');
    assert.equal(buf.refs, 2);
    assert.deepEqual(meta, { frame: 7, tags: ['x', 'y'], ratio: 0.5, nothing: null });
    buffer.put();
    // No metadata: undefined on the other side.
    await a.send(buf);
    const second = await b.receive();
    assert.equal(second.meta, undefined);
    second.buffer.put();
  } finally {
    a.close();
    b.close();
    buf.put();
  }
  assert.equal(log.released, 1);
  await settleFds(before);
});

test('the caller may put the buffer right after send: the message holds the file', async () => {
  const before = openFds();
  const { buf, log } = recordingExport(4096, {}, 'put-early');
  const [a, b] = channelPair();
  try {
    const sent = a.send(buf, 'hello');
    buf.put();
    await sent;
    assert.equal(log.released, 0, 'a descriptor in flight holds the buffer');
    const { fd, meta } = await b.receiveFd();
    assert.equal(meta, 'hello');
    assert.equal(fstatSync(fd).ino, Number(native.fstat(fd).ino));
    closeSync(fd);
  } finally {
    a.close();
    b.close();
  }
  // Last descriptor gone: release runs from the event loop.
  for (let i = 0; i < 200 && log.released === 0; i++) await sleep(5);
  assert.equal(log.released, 1);
  await settleFds(before);
});

test('sendFd/receiveFd pass raw descriptors in FIFO order with their metadata', async () => {
  const before = openFds();
  const memfds = Array.from({ length: 20 }, (_, i) => native.memfdCreate(`raw-${i}`, 0));
  const [a, b] = channelPair();
  try {
    // Receives issued before the sends, and sends without awaiting: order is kept.
    const receives = memfds.map(() => b.receiveFd());
    const sends = memfds.map((fd, i) => a.sendFd(fd, { i }));
    await Promise.all(sends);
    const got = await Promise.all(receives);
    got.forEach(({ fd, meta }, i) => {
      assert.deepEqual(meta, { i });
      assert.equal(native.fstat(fd).ino, native.fstat(memfds[i]!).ino);
      native.close(fd);
    });
    // The async iterator, then more sends interleaved.
    for (let i = 0; i < 5; i++) await a.sendFd(memfds[i]!, i);
    for (let i = 0; i < 5; i++) {
      const { fd, meta } = await b.receiveFd();
      assert.equal(meta, i);
      native.close(fd);
    }
  } finally {
    a.close();
    b.close();
    for (const fd of memfds) native.close(fd);
  }
  await settleFds(before);
});

test('the async iterator yields buffers until the peer closes', async () => {
  const before = openFds();
  const { buf } = recordingExport(4096, {}, 'iter');
  const [a, b] = channelPair();
  try {
    for (let i = 0; i < 3; i++) await a.send(buf, { i });
    a.close();
    const metas: unknown[] = [];
    for await (const { buffer, meta } of b) {
      assert.equal(buffer, buf);
      metas.push(meta);
      buffer.put();
    }
    assert.deepEqual(metas, [{ i: 0 }, { i: 1 }, { i: 2 }]);
    assert.equal(b.peerClosed, true);
  } finally {
    a.close();
    b.close();
    buf.put();
  }
  await settleFds(before);
});

test('bad arguments: not a buffer, a put buffer, unclonable or oversized meta, closed fd, bad signal', async () => {
  const before = openFds();
  const { buf } = recordingExport(4096, {}, 'bad-args');
  const [a, b] = channelPair();
  try {
    await assert.rejects(a.send({} as DmaBuf), isCode('EINVAL', /expected a DmaBuf/));
    await assert.rejects(a.send(buf, { big: 'x'.repeat(70_000) }), isCode('EMSGSIZE', /61440/));
    await assert.rejects(a.send(buf, 10n), isCode('EINVAL', /JSON/));
    await assert.rejects(a.send(buf, undefined, { signal: 'no' as unknown as AbortSignal }), isCode('EINVAL', /AbortSignal/));
    await assert.rejects(a.sendFd(-1), isCode('EBADF'));
    await assert.rejects(a.sendFd(1.5), isCode('EBADF'));
    const fd = native.memfdCreate('closed', 0);
    native.close(fd);
    await assert.rejects(a.sendFd(fd), isCode('EBADF', /not open/));
    await assert.rejects(a.sendFd(0, undefined, { signal: AbortSignal.abort('stop') }), isCode('EINTR'));
    await assert.rejects(b.receive({ signal: AbortSignal.abort() }), isCode('EINTR'));
    assert.equal(a.pendingSends, 0);
    const { buf: gone } = recordingExport(4096, {}, 'put-already');
    gone.put();
    await assert.rejects(a.send(gone), isCode('EINVAL', /has been put/));
  } finally {
    a.close();
    b.close();
    buf.put();
  }
  await settleFds(before);
});

test('backpressure: 1500 sends to a peer that does not read wait, keep the loop running, then complete in order', async () => {
  const before = openFds();
  const memfd = native.memfdCreate('backpressure', 0);
  const [a, b] = channelPair();
  const N = 1500;
  try {
    let settled = 0;
    let failed: unknown = null;
    const sends = Array.from({ length: N }, (_, i) => a.sendFd(memfd, { i }).then(
      () => { settled++; },
      (e: unknown) => { failed = e; settled++; },
    ));
    // The kernel queue fills: some sends wait, none fails, and the event loop keeps running.
    let ticks = 0;
    for (let i = 0; i < 50; i++) {
      await immediate();
      ticks++;
    }
    assert.equal(ticks, 50);
    assert.equal(failed, null);
    assert.ok(a.pendingSends > 0, 'sends are queued behind a full socket');
    assert.ok(settled < N, `${settled} of ${N} settled`);
    const pendingBefore = a.pendingSends;
    await sleep(30);
    assert.equal(a.pendingSends, pendingBefore, 'nothing moves while the peer does not read');
    // Now the peer reads everything, in order.
    for (let i = 0; i < N; i++) {
      const { fd, meta } = await b.receiveFd();
      assert.deepEqual(meta, { i });
      native.close(fd);
    }
    await Promise.all(sends);
    assert.equal(failed, null);
    assert.equal(settled, N);
    assert.equal(a.pendingSends, 0);
  } finally {
    a.close();
    b.close();
    native.close(memfd);
  }
  await settleFds(before);
});

test('abort of a queued send rejects with EINTR, closes its duplicate, and the message never arrives', async () => {
  const memfd = native.memfdCreate('abort', 0);
  const [a, b] = channelPair();
  const before = openFds();
  try {
    // Fill the socket until a send has to wait.
    const fillers: Promise<void>[] = [];
    let n = 0;
    while (a.pendingSends === 0) {
      fillers.push(a.sendFd(memfd, { n: n++ }));
      if (n > 100_000) assert.fail('the socket never filled');
    }
    const ac = new AbortController();
    const aborted = a.sendFd(memfd, { n: 'aborted' }, { signal: ac.signal });
    const after = a.sendFd(memfd, { n: 'after' });
    assert.equal(a.pendingSends, 3);
    const reason = new Error('changed my mind');
    ac.abort(reason);
    await assert.rejects(aborted, (e: unknown) => isCode('EINTR', /nothing was sent/)(e) && (e as Error).cause === reason);
    assert.equal(a.pendingSends, 2);
    // Drain: every filler, then 'after'; never 'aborted'.
    const seen: unknown[] = [];
    for (let i = 0; i < n + 1; i++) {
      const { fd, meta } = await b.receiveFd();
      native.close(fd);
      seen.push((meta as { n: unknown }).n);
    }
    await Promise.all([...fillers, after]);
    assert.equal(seen.at(-1), 'after');
    assert.ok(!seen.includes('aborted'));
    // Aborting after completion does nothing.
    const ac2 = new AbortController();
    await a.sendFd(memfd, 'x', { signal: ac2.signal });
    ac2.abort();
    native.close((await b.receiveFd()).fd);
    assertSameFds(before, 'after draining');
  } finally {
    a.close();
    b.close();
    native.close(memfd);
  }
});

test('abort of a waiting receive rejects with EINTR and consumes nothing', async () => {
  const before = openFds();
  const memfd = native.memfdCreate('abort-receive', 0);
  const [a, b] = channelPair();
  try {
    const ac = new AbortController();
    const first = b.receiveFd({ signal: ac.signal });
    const second = b.receiveFd();
    ac.abort();
    await assert.rejects(first, isCode('EINTR', /no message was consumed/));
    await a.sendFd(memfd, 'only');
    const got = await second;
    assert.equal(got.meta, 'only');
    native.close(got.fd);
    await assert.rejects(b.receive({ signal: AbortSignal.timeout(20) }), isCode('EINTR'));
  } finally {
    a.close();
    b.close();
    native.close(memfd);
  }
  await settleFds(before);
});

test('malformed messages on the raw socket reject with EPROTO, close every descriptor, and the channel goes on', async () => {
  const memfds = [native.memfdCreate('m1', 0), native.memfdCreate('m2', 0), native.memfdCreate('m3', 0),
    native.memfdCreate('m4', 0), native.memfdCreate('m5', 0)];
  const outer = openFds();
  await withRawPeer(async (ch, peer) => {
    const before = openFds();
    const good = encodeChannelMessage({ ok: true });
    const header = (patch: (v: DataView) => void, body = Buffer.from('{}')): Uint8Array => {
      const bytes = Uint8Array.from(Buffer.concat([Buffer.from(encodeChannelMessage(null).subarray(0, 16)), body]));
      const v = new DataView(bytes.buffer);
      v.setUint32(8, body.length, true);
      patch(v);
      return bytes;
    };
    const cases: Array<[string, Uint8Array, number[], RegExp]> = [
      ['bad magic', header((v) => v.setUint32(0, 0xdeadbeef, true)), [memfds[0]!], /bad magic 0xdeadbeef/],
      ['bad version', header((v) => v.setUint16(4, 9, true)), [memfds[0]!], /unsupported version 9/],
      ['bad type', header((v) => v.setUint16(6, 7, true)), [memfds[0]!], /unknown message type 7/],
      ['reserved', header((v) => v.setUint32(12, 4, true)), [memfds[0]!], /reserved field/],
      ['no fd', good, [], /0 descriptors/],
      ['3 fds', good, memfds.slice(0, 3), /3 descriptors/],
      ['5 fds', good, memfds.slice(0, 5), /more than 4 descriptors/],
      ['bad JSON', header(() => {}, Buffer.from('{"a":')), [memfds[0]!], /not JSON/],
      ['short', Buffer.from('DBCH'), [memfds[0]!], /shorter than the 16-byte header/],
      ['truncated', Buffer.concat([Buffer.from(good), Buffer.alloc(70_000)]), [memfds[0]!], /longer than 65536 bytes/],
      ['length mismatch', header((v) => v.setUint32(8, 1, true)), [memfds[0]!], /metaLength says 1/],
      ['fd only, no bytes', new Uint8Array(0), [memfds[0]!], /shorter than the 16-byte header/],
    ];
    for (const [name, data, fds, pattern] of cases) {
      native.sendmsg(peer, data, fds, 0);
      await assert.rejects(ch.receiveFd(), isCode('EPROTO', pattern), name);
      assertSameFds(before, name);
    }
    // receive() (not just receiveFd) rejects the same way.
    native.sendmsg(peer, good, [], 0);
    await assert.rejects(ch.receive(), isCode('EPROTO', /0 descriptors/));
    // The channel still works.
    native.sendmsg(peer, good, [memfds[1]!], 0);
    const { fd, meta } = await ch.receiveFd();
    assert.deepEqual(meta, { ok: true });
    assert.equal(native.fstat(fd).ino, native.fstat(memfds[1]!).ino);
    native.close(fd);
    await settleFds(before);
  });
  await settleFds(outer);
  for (const fd of memfds) native.close(fd);
});

test('a received descriptor that is not a buffer: receive rejects with get\'s code and closes it', async () => {
  const memfd = native.memfdCreate('not-a-buffer', 0);
  const before = openFds();
  const [a, b] = channelPair();
  try {
    await a.sendFd(memfd, { m: 1 });
    await assert.rejects(b.receive(), isCode('EINVAL', /not a buffer this process can get/));
  } finally {
    a.close();
    b.close();
  }
  await settleFds(before);
  native.close(memfd);
});

test('errors are emitted as \'error\' only when a listener exists; unhandled ones never crash', async () => {
  await withRawPeer(async (ch, peer) => {
    native.sendmsg(peer, Buffer.from('garbage-garbage-garbage'), [], 0);
    await assert.rejects(ch.receiveFd(), isCode('EPROTO'));
    await immediate(); // an emit with no listener would throw here
    const emitted: unknown[] = [];
    ch.on('error', (e) => emitted.push(e));
    native.sendmsg(peer, Buffer.from('more garbage, still bad'), [], 0);
    await assert.rejects(ch.receiveFd(), isCode('EPROTO'));
    await immediate();
    assert.equal(emitted.length, 1);
    assert.ok(DmaBufError.is(emitted[0], 'EPROTO'));
  });
});

test('peer close: queued messages are still delivered, then receives reject with EPIPE; sends fail with EPIPE', async () => {
  const before = openFds();
  const memfd = native.memfdCreate('peer-close', 0);
  const [a, b] = channelPair();
  try {
    await a.sendFd(memfd, 'last words');
    const pendingOnA = a.receiveFd();
    b.close();
    await assert.rejects(pendingOnA, isCode('EPIPE', /peer closed/));
    assert.equal(a.peerClosed, true);
    await assert.rejects(a.receiveFd(), isCode('EPIPE', /peer closed/));
    await assert.rejects(a.sendFd(memfd, 'too late'), isCode('EPIPE', /peer closed/));

    // The other direction: close with the message still queued; it is read first.
    const [c, d] = channelPair();
    await c.sendFd(memfd, 'queued');
    c.close();
    const got = await d.receiveFd();
    assert.equal(got.meta, 'queued');
    native.close(got.fd);
    await assert.rejects(d.receiveFd(), isCode('EPIPE'));
    d.close();
  } finally {
    a.close();
    b.close();
    native.close(memfd);
  }
  await settleFds(before);
});

test('close: idempotent; pending and later operations reject with EPIPE; queued duplicates are closed', async () => {
  const memfd = native.memfdCreate('close', 0);
  const before = openFds();
  const [a, b] = channelPair();
  let closeEvents = 0;
  a.on('close', () => closeEvents++);
  const receive = a.receiveFd();
  let n = 0;
  const sends: Promise<void>[] = [];
  while (a.pendingSends === 0) sends.push(a.sendFd(memfd, n++));
  sends.push(a.sendFd(memfd, 'queued 2'));
  const results = Promise.allSettled(sends);
  a.close();
  a.close();
  await assert.rejects(receive, isCode('EPIPE', /closed by close\(\)/));
  const settled = await results;
  const rejected = settled.filter((s) => s.status === 'rejected');
  assert.equal(rejected.length, 2);
  for (const r of rejected) assert.ok(DmaBufError.is((r as PromiseRejectedResult).reason, 'EPIPE'));
  await assert.rejects(a.sendFd(memfd), isCode('EPIPE', /closed by close\(\)/));
  await assert.rejects(a.receive(), isCode('EPIPE'));
  assert.equal(a.closed, true);
  assert.equal(a.fd, -1);
  await immediate();
  assert.equal(closeEvents, 1);
  // The peer still reads what the kernel took before the close, then EOF.
  for (let i = 0; i < n - 1; i++) native.close((await b.receiveFd()).fd);
  await assert.rejects(b.receiveFd(), isCode('EPIPE'));
  b.close();
  await settleFds(before);
  // await using closes too.
  {
    const [c, d] = channelPair();
    await using _c = c;
    await using _d = d;
  }
  await settleFds(before);
  native.close(memfd);
});

test('fromFd validates: closed, not a socket, another socket type, unconnected, already adopted', async () => {
  const before = openFds();
  const memfd = native.memfdCreate('x', 0);
  const [s1, s2] = native.socketpair(K.SOCK_STREAM, false);
  const lone = native.socket(K.SOCK_SEQPACKET, false);
  try {
    assert.throws(() => BufferChannel.fromFd(-3), isCode('EBADF'));
    const closed = native.dup(memfd, true);
    native.close(closed);
    assert.throws(() => BufferChannel.fromFd(closed), isCode('EBADF', /not open/));
    assert.throws(() => BufferChannel.fromFd(memfd), isCode('EINVAL', /not a socket/));
    assert.throws(() => BufferChannel.fromFd(s1), isCode('EINVAL', /not a Unix SOCK_SEQPACKET/));
    assert.throws(() => BufferChannel.fromFd(lone), isCode('EINVAL', /not connected/));
    const [ch, peer] = BufferChannel.pair();
    assert.throws(() => BufferChannel.fromFd(ch.fd), isCode('EINVAL', /already belongs/));
    const other = BufferChannel.fromFd(peer);
    assert.equal(ch.peer.pid, process.pid);
    assert.equal(other.peer.uid, process.getuid!());
    // Both ends in this process: the first message names this process again.
    const buf = systemHeap.allocate(4096);
    await other.send(buf);
    buf.put();
    (await ch.receive()).buffer.put();
    assert.equal(ch.peer.pid, process.pid);
    ch.close();
    other.close();
    assert.equal(ch.peer.pid, process.pid, 'peer stays known after close');
    assert.throws(() => new (BufferChannel as unknown as new (t: symbol, fd: number) => unknown)(Symbol('x'), 1), isCode('EINVAL'));
  } finally {
    native.close(memfd);
    native.close(s1);
    native.close(s2);
    native.close(lone);
  }
  await settleFds(before);
});

test('an idle channel does not keep the process alive; a pending receive does until a message comes', async () => {
  const r = await runChild(`
    const [ch, peer] = m.BufferChannel.pair();
    const other = m.BufferChannel.fromFd(peer);
    setTimeout(() => out({ idle: 'exits' }), 10);
  `);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json, [{ idle: 'exits' }]);

  const r2 = await runChild(`
    const [ch, peer] = m.BufferChannel.pair();
    const other = m.BufferChannel.fromFd(peer);
    const fd = native.memfdCreate('late', 0);
    // The timer is unref'd: only the pending receive keeps the process alive.
    setTimeout(() => other.sendFd(fd, 'late'), 100).unref();
    const got = await ch.receiveFd();
    native.close(got.fd);
    out({ got: got.meta });
  `);
  assert.equal(r2.code, 0, r2.stderr);
  assert.deepEqual(r2.json, [{ got: 'late' }]);
});

test('a child process receives buffers over its fd 3 (same file, same contents) and sends one back; each side\'s peer is the other process', async () => {
  const before = openFds();
  const buf = systemHeap.allocate(1 << 16, { name: 'to-child' });
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('bidirectional');
  sgt.segments[0]!.view!.fill(0x5a);
  await att.unmap(sgt);
  await att.detach();
  const [ch, theirs] = BufferChannel.pair();
  const child = startChild(`
    const ch = m.BufferChannel.fromFd(3);
    // A raw descriptor: the same file as the parent's.
    const { fd, meta } = await ch.receiveFd();
    out({ ino: native.fstat(fd).ino, meta, peerPid: ch.peer.pid });
    native.close(fd);
    // A buffer: get() reaches the exporter in the parent; map it and read.
    const { buffer, meta: meta2 } = await ch.receive();
    const att = await buffer.attach(new m.CpuDevice());
    const sgt = await att.map('to-device');
    out({ size: buffer.size, name: buffer.name, first: sgt.segments[0].view[0], meta: meta2 });
    await att.unmap(sgt);
    await att.detach();
    buffer.put();
    // Export one here and send it back; stay alive (we are its exporter) until the parent closes.
    const mine = m.systemHeap.allocate(8192, { name: 'from-child' });
    const a2 = await mine.attach(new m.CpuDevice());
    const t2 = await a2.map('bidirectional');
    t2.segments[0].view.fill(0x33);
    await a2.unmap(t2);
    await a2.detach();
    await ch.send(mine, { from: 'child' });
    mine.put();
    try { await ch.receiveFd(); } catch (e) { out({ end: e.code }); }
    ch.close();
  `, { fds: [theirs] });
  closeSync(theirs);
  const done = finish(child);
  try {
    const bufFd = buf.fd();
    const ino = String(native.fstat(bufFd).ino);
    await ch.sendFd(bufFd, { raw: true });
    closeSync(bufFd);
    await ch.send(buf, { hello: 'child' });
    assert.equal(ch.peer.pid, process.pid, 'before the child sends, the kernel only knows the pair\'s creator');
    const { buffer, meta } = await ch.receive();
    assert.equal(ch.peer.pid, child.pid, 'the first message from the child tells its pid (SCM_CREDENTIALS)');
    assert.equal(ch.peer.uid, process.getuid!());
    assert.deepEqual(meta, { from: 'child' });
    assert.notEqual(buffer, buf);
    assert.equal(buffer.name, 'from-child');
    const a = await buffer.attach(new CpuDevice());
    const t = await a.map('to-device');
    assert.equal(t.segments[0]!.view![100], 0x33);
    await a.unmap(t);
    await a.detach();
    buffer.put();
    ch.close();
    const r = await done;
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.json, [
      { ino, meta: { raw: true }, peerPid: process.pid },
      { size: 1 << 16, name: 'to-child', first: 0x5a, meta: { hello: 'child' } },
      { end: 'EPIPE' },
    ]);
  } finally {
    ch.close();
    buf.put();
  }
  for (let i = 0; i < 400 && !buf.released; i++) await sleep(5);
  assert.equal(buf.released, true);
  await settleFds(before);
});

test('descriptors dropped by the kernel (receiver out of descriptors: MSG_CTRUNC) reject with EMFILE', async () => {
  const memfd = native.memfdCreate('emfile', 0);
  const [ch, theirs] = BufferChannel.pair();
  const child = startChild(`
    const ch = m.BufferChannel.fromFd(3);
    const fillers = [];
    for (;;) {
      try { fillers.push(native.dup(0, true)); } catch (e) { if (e.code !== 'EMFILE') throw e; break; }
    }
    out({ full: fillers.length });
    let code = 'none';
    try { await ch.receiveFd(); } catch (e) { code = e.code; out({ message: e.message }); }
    for (const fd of fillers) native.close(fd);
    const next = await ch.receiveFd();
    native.close(next.fd);
    out({ code, next: next.meta });
    ch.close();
  `, { fds: [theirs], shell: 'ulimit -n 256' });
  closeSync(theirs);
  const done = finish(child);
  try {
    await ch.sendFd(memfd, 'dropped');
    await ch.sendFd(memfd, 'kept');
    const r = await done;
    assert.equal(r.code, 0, r.stderr);
    const last = r.json.at(-1)!;
    assert.deepEqual(last, { code: 'EMFILE', next: 'kept' });
    assert.match(String(r.json[1]!.message), /dropped the descriptors.*RLIMIT_NOFILE/);
  } finally {
    ch.close();
    native.close(memfd);
  }
});

test('a worker thread that ends without closing its channel: the peer sees EPIPE, nothing leaks', async () => {
  const before = openFds();
  const memfd = native.memfdCreate('worker-end', 0);
  const [ch, theirs] = BufferChannel.pair();
  const worker = new Worker(`
    const { workerData, parentPort } = require('node:worker_threads');
    const { closeSync } = require('node:fs');
    import(workerData.index).then(async (m) => {
      const ch = m.BufferChannel.fromFd(workerData.fd);
      const { fd, meta } = await ch.receiveFd();
      await ch.sendFd(fd, { echo: meta });
      closeSync(fd);
      parentPort.postMessage('done'); // and end without ch.close()
    });
  `, { eval: true, workerData: { index: INDEX_URL, fd: theirs } });
  try {
    await ch.sendFd(memfd, 'ping');
    const back = await ch.receiveFd();
    assert.deepEqual(back.meta, { echo: 'ping' });
    native.close(back.fd);
    await once(worker, 'message');
    await worker.terminate();
    await assert.rejects(ch.receiveFd({ signal: AbortSignal.timeout(5000) }), isCode('EPIPE', /peer closed/));
  } finally {
    ch.close();
    native.close(memfd);
  }
  await settleFds(before);
});

test('fuzz: random and mutated messages with 0 to 6 descriptors never crash, never leak, and only EPROTO', async () => {
  const memfds = Array.from({ length: 6 }, (_, i) => native.memfdCreate(`fuzz-${i}`, 0));
  const outer = openFds();
  let seed = 4242;
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return seed % n;
  };
  await withRawPeer(async (ch, peer) => {
    const before = openFds();
    let good = 0;
    let bad = 0;
    for (let i = 0; i < 400; i++) {
      let data: Uint8Array;
      const kind = rand(3);
      if (kind === 0) {
        data = Uint8Array.from({ length: rand(80) }, () => rand(256));
      } else {
        data = Uint8Array.from(encodeChannelMessage({ i, s: 'x'.repeat(rand(40)) }));
        if (kind === 2) {
          for (let f = 1 + rand(3); f > 0; f--) data[rand(data.length)] = rand(256);
          if (rand(3) === 0) data = data.subarray(0, rand(data.length + 1));
        }
      }
      const fds = memfds.slice(0, rand(7));
      if (data.length === 0 && fds.length === 0) fds.push(memfds[0]!);
      native.sendmsg(peer, data, fds, 0);
      try {
        const { fd, meta } = await ch.receiveFd();
        assert.equal(fds.length, 1);
        assert.equal(native.fstat(fd).ino, native.fstat(fds[0]!).ino);
        native.close(fd);
        assert.equal((meta as { i: number }).i, i);
        good++;
      } catch (e) {
        isCode('EPROTO')(e);
        bad++;
      }
      if (i % 50 === 0) assertSameFds(before, `after message ${i}`);
    }
    assert.ok(good > 20 && bad > 100, `good ${good}, bad ${bad}`);
    await settleFds(before);
  });
  await settleFds(outer);
  for (const fd of memfds) native.close(fd);
});
