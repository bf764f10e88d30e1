/**
 * Worker-thread helpers: postBuffer / isBufferMessage / receiveBuffer, in one thread through
 * a MessageChannel and with a real Worker.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { MessageChannel, Worker } from 'node:worker_threads';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  BUFFER_MESSAGE_MARKER, CpuDevice, isBufferMessage, postBuffer, receiveBuffer, systemHeap,
  type BufferMessage, type DmaBuf,
} from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { recordingExport } from '../helpers.js';
import { assertSameFds, settleFds, isCode, openFds } from './util.js';

const FIXTURE = new URL('./fixtures/worker-echo.js', import.meta.url);

test('postBuffer/receiveBuffer through a MessageChannel in one thread: the same object, one more reference', async () => {
  const before = openFds();
  const { buf, log } = recordingExport(4096, {}, 'same-thread');
  const { port1, port2 } = new MessageChannel();
  try {
    const got = once(port2, 'message');
    postBuffer(port1, buf, { frame: 3, note: 'hi' });
    const [message] = await got as [unknown];
    assert.ok(isBufferMessage(message));
    assert.equal((message as BufferMessage)[BUFFER_MESSAGE_MARKER], true);
    assert.equal((message as BufferMessage).pid, process.pid);
    const { buffer, meta } = await receiveBuffer(message);
    assert.equal(buffer, buf);
    assert.equal(buf.refs, 2);
    assert.deepEqual(meta, { frame: 3, note: 'hi' });
    // Received once: a second receive is refused (and closes nothing).
    await assert.rejects(receiveBuffer(message), isCode('EINVAL', /already received/));
    buffer.put();
  } finally {
    port1.close();
    port2.close();
    buf.put();
  }
  assert.equal(log.released, 1);
  await settleFds(before);
});

test('isBufferMessage recognises only postBuffer messages', () => {
  assert.equal(isBufferMessage(null), false);
  assert.equal(isBufferMessage(3), false);
  assert.equal(isBufferMessage({ fd: 3 }), false);
  assert.equal(isBufferMessage({ [BUFFER_MESSAGE_MARKER]: 'yes', fd: 3, key: '1:2', pid: 1 }), false);
  assert.equal(isBufferMessage({ [BUFFER_MESSAGE_MARKER]: true, fd: 3, key: '1:2', pid: 1, meta: null }), true);
});

test('postBuffer errors leak nothing: bad port, not a buffer, unclonable meta, a put buffer', async () => {
  const before = openFds();
  const { buf } = recordingExport(4096, {}, 'errors');
  const { port1, port2 } = new MessageChannel();
  try {
    assert.throws(() => postBuffer({} as never, buf), isCode('EINVAL', /postMessage/));
    assert.throws(() => postBuffer(port1, {} as DmaBuf), isCode('EINVAL', /expected a DmaBuf/));
    assert.throws(() => postBuffer(port1, buf, { f: () => 1 }), isCode('EINVAL', /could not be posted/));
    await assert.rejects(postBuffer({ postMessage() { throw new Error('port closed'); } }, buf), isCode('EINVAL', /port closed/));
  } finally {
    port1.close();
    port2.close();
    buf.put();
  }
  assert.throws(() => postBuffer({ postMessage() {} }, buf), isCode('EINVAL', /has been put/));
  await settleFds(before);
});

test('receiveBuffer refuses foreign, stale and closed messages without closing anything', async () => {
  const memfd = native.memfdCreate('not-posted', 0);
  const before = openFds();
  try {
    const st = native.fstat(memfd);
    const key = `${st.dev}:${st.ino}`;
    const base = { [BUFFER_MESSAGE_MARKER]: true as const, fd: memfd, key, pid: process.pid, meta: null };
    await assert.rejects(receiveBuffer({ fd: memfd }), isCode('EINVAL', /not a buffer message/));
    await assert.rejects(receiveBuffer({ ...base, pid: process.pid + 1 }), isCode('EINVAL', /means nothing in this one/));
    await assert.rejects(receiveBuffer({ ...base, key: '0:0' }), isCode('EINVAL', /no longer the one posted/));
    const closed = native.dup(memfd, true);
    native.close(closed);
    await assert.rejects(receiveBuffer({ ...base, fd: closed }), isCode('EBADF', /closed/));
    assertSameFds(before, 'nothing closed, nothing opened');
    // A well-formed message whose descriptor is not a buffer: get fails, the descriptor is closed.
    const dup = native.dup(memfd, true);
    await assert.rejects(receiveBuffer({ ...base, fd: dup }), isCode('EINVAL', /not a dma-buf/));
    assertSameFds(before, 'the message\'s descriptor was closed');
  } finally {
    native.close(memfd);
  }
});

test('a real Worker gets a descriptor of the same file, maps the buffer, and posts it back', async () => {
  const before = openFds();
  const buf = systemHeap.allocate(1 << 16, { name: 'to-worker' });
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('bidirectional');
  sgt.segments[0]!.view!.fill(0x7e);
  await att.unmap(sgt);
  await att.detach();
  const worker = new Worker(FIXTURE);
  const messages: unknown[] = [];
  let wake: (() => void) | undefined;
  worker.on('message', (m) => {
    messages.push(m);
    wake?.();
  });
  const next = async (): Promise<unknown> => {
    while (messages.length === 0) await new Promise<void>((r) => { wake = r; });
    return messages.shift();
  };
  try {
    const fd = buf.fd();
    const ino = String(native.fstat(fd).ino);
    native.close(fd);

    postBuffer(worker, buf, { mode: 'fd' });
    assert.deepEqual(await next(), { reply: { ino, meta: { mode: 'fd' } } });

    postBuffer(worker, buf, { mode: 'twice' });
    assert.deepEqual(await next(), { reply: { second: 'EINVAL' } });

    postBuffer(worker, buf, { mode: 'get' });
    const echoed = await next();
    assert.ok(isBufferMessage(echoed), `expected the buffer back, got ${JSON.stringify(echoed)}`);
    assert.deepEqual(await next(), { reply: { size: 1 << 16, name: 'to-worker', first: 0x7e } });
    const back = await receiveBuffer(echoed);
    assert.equal(back.buffer, buf, 'the exporter\'s thread gets its own object back');
    assert.deepEqual(back.meta, { echo: { mode: 'get' } });
    back.buffer.put();
  } finally {
    worker.postMessage('exit');
    await once(worker, 'exit');
    buf.put();
  }
  for (let i = 0; i < 400 && !buf.released; i++) await sleep(5);
  assert.equal(buf.released, true);
  await settleFds(before);
});
