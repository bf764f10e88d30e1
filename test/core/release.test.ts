import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { CpuDevice, DmaBuf } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { openFdCount, recordingExport, waitFor } from '../helpers.js';

test('release runs exactly once, after the last put', async () => {
  const { buf, log } = recordingExport();
  const fd = buf.fd();
  const second = await DmaBuf.get(fd);
  closeSync(fd);
  buf.put();
  await sleep(10);
  assert.equal(log.released, 0, 'one reference is still held');
  second.put();
  assert.equal(log.released, 1);
  await sleep(10);
  assert.equal(log.released, 1, 'never twice');
  assert.equal(buf.released, true);
});

test('release waits for a descriptor closed after every put', async () => {
  const { buf, log } = recordingExport();
  const fd = buf.fd();
  buf.put();
  await sleep(20);
  assert.equal(log.released, 0, 'the descriptor still holds the file');
  closeSync(fd);
  await waitFor(() => log.released === 1, 5000, 'release after the last close');
  await sleep(10);
  assert.equal(log.released, 1);
});

test('a buffer whose descriptor is held by a child process is released only after the child exits', async () => {
  const { buf, log } = recordingExport();
  const fd = buf.fd();
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 400)'], { stdio: ['ignore', 'ignore', 'inherit', fd] });
  await once(child, 'spawn');
  closeSync(fd);
  buf.put();
  const keepAlive = setInterval(() => {}, 1000);
  try {
    await sleep(100);
    assert.equal(log.released, 0, 'the child still holds a descriptor');
    await once(child, 'exit');
    await waitFor(() => log.released === 1, 5000, 'release after the child exited');
  } finally {
    clearInterval(keepAlive);
  }
});

test('a descriptor in flight in a socket message holds the buffer until it is received and closed', async () => {
  const c = native.constants;
  const { buf, log } = recordingExport();
  const [a, b] = native.socketpair(c.SOCK_SEQPACKET, false);
  try {
    const fd = buf.fd();
    native.sendmsg(a, Buffer.from('buffer'), [fd], 0);
    closeSync(fd);
    buf.put();
    await sleep(20);
    assert.equal(log.released, 0, 'the descriptor is in flight');
    const msg = native.recvmsg(b, 64, 4, c.MSG_DONTWAIT);
    assert.equal(msg.fds.length, 1);
    await sleep(20);
    assert.equal(log.released, 0, 'the received descriptor is open');
    closeSync(msg.fds[0]!);
    await waitFor(() => log.released === 1, 5000, 'release after the received descriptor closed');
  } finally {
    closeSync(a);
    closeSync(b);
  }
});

test('a descriptor in flight in a socket that is closed unread releases the buffer', async () => {
  const c = native.constants;
  const { buf, log } = recordingExport();
  const [a, b] = native.socketpair(c.SOCK_SEQPACKET, false);
  const fd = buf.fd();
  native.sendmsg(a, Buffer.from('x'), [fd], 0);
  closeSync(fd);
  buf.put();
  closeSync(a);
  closeSync(b);
  await waitFor(() => log.released === 1, 5000, 'release after the socket was closed');
});

test('get() of a put but unreleased buffer takes it back', async () => {
  const { buf, log } = recordingExport();
  const fd = buf.fd();
  buf.put();
  const back = await DmaBuf.get(fd);
  closeSync(fd);
  assert.equal(back, buf);
  assert.equal(log.released, 0);
  back.put();
  assert.equal(log.released, 1);
});

test('release waits for the last attachment to be detached', async () => {
  const { buf, log } = recordingExport();
  const { CpuDevice } = await import('../../src/index.js');
  const att = await buf.attach(new CpuDevice({ name: 'late' }));
  buf.put();
  assert.equal(log.released, 0);
  await att.detach();
  assert.equal(log.released, 1);
  assert.deepEqual(log.calls, ['attach:late', 'detach:late', 'release']);
});

test('10,000 export/fd/get/put cycles leave the open-descriptor count where it started', async () => {
  const before = openFdCount();
  let released = 0;
  for (let i = 0; i < 10_000; i++) {
    const { buf, log } = recordingExport(4096);
    const fd = buf.fd();
    const got = await DmaBuf.get(fd);
    closeSync(fd);
    got.put();
    buf.put();
    released += log.released;
  }
  assert.equal(released, 10_000);
  assert.equal(openFdCount(), before);
});

test('release runs once when the last descriptor closes just before the last detach', async () => {
  const { buf, log } = recordingExport();
  const fd = buf.fd();
  const att = await buf.attach(new CpuDevice({ name: 'd' }));
  buf.put();
  closeSync(fd);
  await att.detach(); // end-of-file is seen here, before the event loop reports it
  await sleep(20); // ... and the event loop's report must not release again
  assert.equal(log.released, 1);
});
