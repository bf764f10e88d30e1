import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, fstatSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { execFileSync } from 'node:child_process';
import { DmaBuf, DmaBufError } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { recordingExport, readlinkFd } from '../helpers.js';

test('buf.fd() gives an open descriptor of a socket, owned by the caller', () => {
  const { buf } = recordingExport();
  const fd = buf.fd();
  try {
    assert.ok(fstatSync(fd).isSocket());
    assert.match(readlinkFd(fd), /^socket:\[\d+\]$/);
    const fd2 = buf.fd();
    assert.notEqual(fd, fd2);
    assert.equal(fstatSync(fd).ino, fstatSync(fd2).ino, 'every descriptor is of the same file');
    closeSync(fd2);
  } finally {
    closeSync(fd);
    buf.put();
  }
});

test('buf.fd() is close-on-exec by default, and not with { cloexec: false }', () => {
  const { buf } = recordingExport();
  const a = buf.fd();
  const b = buf.fd({ cloexec: false });
  try {
    assert.equal(native.setCloexec(a, true), true);
    assert.equal(native.setCloexec(b, false), false);
  } finally {
    closeSync(a);
    closeSync(b);
    buf.put();
  }
});

test('DmaBuf.get() of a closed descriptor fails with EBADF', async () => {
  const { buf } = recordingExport();
  const fd = buf.fd();
  closeSync(fd);
  await assert.rejects(DmaBuf.get(fd), (e: unknown) => DmaBufError.is(e, 'EBADF'));
  await assert.rejects(DmaBuf.get(-1), (e: unknown) => DmaBufError.is(e, 'EBADF'));
  await assert.rejects(DmaBuf.get(1.5), (e: unknown) => DmaBufError.is(e, 'EBADF'));
  await assert.rejects(DmaBuf.get('3' as unknown as number), (e: unknown) => DmaBufError.is(e, 'EBADF'));
  buf.put();
});

test('DmaBuf.get() of a regular file fails with EINVAL', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'dmabuf-'));
  const fd = openSync(path.join(dir, 'f'), 'w+');
  try {
    await assert.rejects(DmaBuf.get(fd), (e: unknown) => DmaBufError.is(e, 'EINVAL') && /regular file/.test((e as Error).message));
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true });
  }
});

test('DmaBuf.get() of a pipe fails with EINVAL', async () => {
  const [r, w] = pipe();
  try {
    await assert.rejects(DmaBuf.get(r), (e: unknown) => DmaBufError.is(e, 'EINVAL') && /pipe/.test((e as Error).message));
  } finally {
    closeSync(r);
    closeSync(w);
  }
});

test('DmaBuf.get() of unrelated sockets fails with EINVAL', async () => {
  const c = native.constants;
  for (const type of [c.SOCK_STREAM, c.SOCK_DGRAM, c.SOCK_SEQPACKET]) {
    const [a, b] = native.socketpair(type, false);
    try {
      // A SEQPACKET peer that never answers the handshake is not a dma-buf either.
      await assert.rejects(DmaBuf.get(a, { timeout: 100 }), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
    } finally {
      closeSync(a);
      closeSync(b);
    }
  }
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const sock = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise((resolve) => sock.once('connect', resolve));
  try {
    const fd = (sock as unknown as { _handle: { fd: number } })._handle.fd;
    await assert.rejects(DmaBuf.get(fd), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  } finally {
    sock.destroy();
    server.close();
  }
});

test('DmaBuf.get() in the exporter\'s thread returns the same object with one more reference', async () => {
  const { buf, log } = recordingExport();
  const fd = buf.fd();
  const again = await DmaBuf.get(fd);
  closeSync(fd);
  assert.equal(again, buf);
  assert.equal(buf.refs, 2);
  buf.put();
  assert.equal(log.released, 0);
  again.put();
  assert.equal(log.released, 1);
});

/** Both ends of a named pipe (a FIFO is the same kernel pipe object as pipe(2)'s). */
function pipe(): [number, number] {
  const dir = mkdtempSync(path.join(tmpdir(), 'dmabuf-fifo-'));
  const fifo = path.join(dir, 'p');
  execFileSync('mkfifo', [fifo]);
  const r = openSync(fifo, 'r+');
  const w = openSync(fifo, 'r+');
  rmSync(dir, { recursive: true });
  return [r, w];
}
