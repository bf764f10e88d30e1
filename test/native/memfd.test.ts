/**
 * The addon's descriptor, memfd and error wrappers, against the real kernel.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { thrown, withFds } from './util.js';
import { native } from '../../src/native/binding.js';

const K = native.constants;
const MiB = 1024 * 1024;

/** Runs fn and returns what it threw (fails when nothing was thrown). */


test('constants come from the platform headers', () => {
  assert.equal(K.MFD_CLOEXEC, 1);
  assert.equal(K.MFD_ALLOW_SEALING, 2);
  assert.equal(K.F_SEAL_WRITE, 8);
  assert.equal(K.MAP_SHARED, 1);
  assert.equal(K.SOCK_SEQPACKET, 5);
  assert.equal(K.UV_READABLE, 1);
  assert.equal(K.UV_DISCONNECT, 4);
  assert.equal(K.HUGETLBFS_MAGIC, 0x958458f6);
  assert.equal(K.TMPFS_MAGIC, 0x01021994);
  assert.equal(K.S_IFMT, 0o170000);
  assert.ok(K.PAGE_SIZE >= 4096 && (K.PAGE_SIZE & (K.PAGE_SIZE - 1)) === 0);
  for (const [name, value] of Object.entries(K)) {
    assert.equal(typeof value, 'number', name);
    assert.ok(Number.isSafeInteger(value) && value >= 0, name);
  }
  assert.ok(Object.isFrozen(K));
});

test('memfdCreate: close-on-exec, size, fstat, fstatfs', () => {
  const fd = native.memfdCreate('dmabuf-test', K.MFD_ALLOW_SEALING);
  withFds([fd], () => {
    assert.ok(Number.isInteger(fd) && fd >= 0);
    // MFD_CLOEXEC is always added: setCloexec returns the previous state.
    assert.equal(native.setCloexec(fd, true), true);
    native.ftruncate(fd, MiB);
    const st = native.fstat(fd);
    assert.equal(st.size, MiB);
    assert.equal(st.mode & K.S_IFMT, K.S_IFREG);
    assert.equal(typeof st.dev, 'bigint');
    assert.equal(typeof st.ino, 'bigint');
    assert.ok(st.blksize > 0);
    assert.equal(native.fstatfsType(fd), K.TMPFS_MAGIC);
    assert.match(fs.readlinkSync(`/proc/self/fd/${fd}`), /^\/memfd:dmabuf-test/);
  });
});

test('statKey and memoryInfo: what fstat and F_GET_SEALS say, with no object built; errors as fstat\'s', () => {
  const fd = native.memfdCreate('dmabuf-test-info', K.MFD_ALLOW_SEALING);
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, false);
  withFds([fd, a, b], () => {
    native.ftruncate(fd, 3 * 4096);
    native.addSeals(fd, K.F_SEAL_SHRINK | K.F_SEAL_GROW);
    const st = native.fstat(fd);
    assert.equal(native.statKey(fd), `${st.dev}:${st.ino}`);
    assert.deepEqual(native.memoryInfo(fd), [st.mode, 3 * 4096, K.F_SEAL_SHRINK | K.F_SEAL_GROW]);
    // A socket: not a regular file, and no seals (-1).
    const sock = native.memoryInfo(a);
    assert.equal(sock[0] & K.S_IFMT, K.S_IFSOCK);
    assert.equal(sock[2], -1);
    assert.notEqual(native.statKey(a), native.statKey(b), 'the two ends are two files');
    assert.equal(native.peerPid(a), process.pid, 'a pair made here: its peer is this process');
  });
  for (const call of [() => native.statKey(fd), () => native.memoryInfo(fd), () => native.peerPid(fd)]) {
    assert.equal(thrown(call).code, 'EBADF');
  }
  assert.equal(thrown(() => native.statKey('3' as unknown as number)).code, 'EINVAL');
});

test('memfdCreate rejects a name with NUL and bad flags', () => {
  const e = thrown(() => native.memfdCreate('a\0b', 0));
  assert.equal(e.code, 'EINVAL');
  assert.equal(e.syscall, undefined);
  const e2 = thrown(() => native.memfdCreate('x', 0x7fff0000));
  assert.equal(e2.code, 'EINVAL');
  assert.equal(e2.syscall, 'memfd_create');
});

test('seals: F_SEAL_SHRINK makes a smaller ftruncate fail with EPERM', () => {
  const fd = native.memfdCreate('seal-shrink', K.MFD_ALLOW_SEALING);
  withFds([fd], () => {
    native.ftruncate(fd, 2 * K.PAGE_SIZE);
    assert.equal(native.getSeals(fd), 0);
    native.addSeals(fd, K.F_SEAL_SHRINK);
    assert.equal(native.getSeals(fd), K.F_SEAL_SHRINK);
    const e = thrown(() => native.ftruncate(fd, K.PAGE_SIZE));
    assert.equal(e.code, 'EPERM');
    assert.equal(e.syscall, 'ftruncate');
    assert.equal(e.errno, 1);
    native.ftruncate(fd, 4 * K.PAGE_SIZE); // growing is still allowed
    native.addSeals(fd, K.F_SEAL_GROW | K.F_SEAL_SEAL);
    assert.equal(thrown(() => native.ftruncate(fd, 8 * K.PAGE_SIZE)).code, 'EPERM');
    assert.equal(thrown(() => native.addSeals(fd, K.F_SEAL_WRITE)).code, 'EPERM');
    assert.equal(native.getSeals(fd), K.F_SEAL_SHRINK | K.F_SEAL_GROW | K.F_SEAL_SEAL);
  });
});

test('seals need MFD_ALLOW_SEALING', () => {
  const fd = native.memfdCreate('no-sealing', 0);
  withFds([fd], () => {
    assert.equal(native.getSeals(fd), K.F_SEAL_SEAL);
    assert.equal(thrown(() => native.addSeals(fd, K.F_SEAL_SHRINK)).code, 'EPERM');
  });
});

test('fallocate grows the file; KEEP_SIZE does not', () => {
  const fd = native.memfdCreate('falloc', 0);
  withFds([fd], () => {
    native.fallocate(fd, 0, 0, 3 * K.PAGE_SIZE);
    assert.equal(native.fstat(fd).size, 3 * K.PAGE_SIZE);
    native.fallocate(fd, K.FALLOC_FL_KEEP_SIZE, 0, 8 * K.PAGE_SIZE);
    assert.equal(native.fstat(fd).size, 3 * K.PAGE_SIZE);
  });
});

test('dup: same file, cloexec as asked', () => {
  const fd = native.memfdCreate('dup', 0);
  const a = native.dup(fd, true);
  const b = native.dup(fd, false);
  withFds([fd, a, b], () => {
    assert.notEqual(a, fd);
    assert.notEqual(b, fd);
    assert.equal(native.fstat(a).ino, native.fstat(fd).ino);
    assert.equal(native.setCloexec(a, true), true);
    assert.equal(native.setCloexec(b, false), false);
    assert.equal(native.setCloexec(b, true), false);
    assert.equal(native.setCloexec(b, true), true);
  });
});

test('setNonblock returns the previous state', () => {
  const fd = native.eventfd(0, 0);
  withFds([fd], () => {
    assert.equal(native.setNonblock(fd, true), false);
    assert.equal(native.setNonblock(fd, true), true);
    assert.equal(native.setNonblock(fd, false), true);
    assert.equal(native.setNonblock(fd, false), false);
  });
});

test('eventfd: counter readable through fs, flags honoured', () => {
  const fd = native.eventfd(5, K.EFD_NONBLOCK);
  withFds([fd], () => {
    assert.equal(native.setNonblock(fd, true), true);
    assert.equal(native.setCloexec(fd, true), true);
    const buf = Buffer.alloc(8);
    assert.equal(fs.readSync(fd, buf, 0, 8, null), 8);
    assert.equal(buf.readBigUInt64LE(0), 5n);
    // now empty and non-blocking
    assert.throws(() => fs.readSync(fd, buf, 0, 8, null), { code: 'EAGAIN' });
  });
});

test('errors carry code, errno, syscall and the native message', () => {
  const e = thrown(() => native.close(-1));
  assert.equal(e.code, 'EBADF');
  assert.equal(e.errno, 9);
  assert.equal(e.syscall, 'close');
  const cause = e.cause as Error & { code?: string; errno?: number; syscall?: string };
  assert.ok(cause instanceof Error);
  assert.equal(cause.message, 'close: Bad file descriptor (EBADF)');
  assert.equal(cause.code, 'EBADF');
  assert.equal(cause.errno, 9);
  assert.equal(cause.syscall, 'close');

  const fd = native.memfdCreate('closed', 0);
  native.close(fd);
  const e2 = thrown(() => native.fstat(fd));
  assert.equal(e2.code, 'EBADF');
  assert.equal(e2.syscall, 'fstat');
  assert.equal(thrown(() => native.fstatfsType(fd)).code, 'EBADF');
  assert.equal(thrown(() => native.getSeals(fd)).syscall, 'fcntl');
});

test('bad argument types throw EINVAL without syscall', () => {
  const bad: Array<() => unknown> = [
    () => (native.close as (fd: unknown) => void)('3'),
    () => native.close(1.5),
    () => native.close(2 ** 31),
    () => native.ftruncate(0, -1),
    () => native.ftruncate(0, 2 ** 53),
    () => native.ftruncate(0, Number.NaN),
    () => (native.dup as (fd: number, c: unknown) => number)(0, 1),
    () => (native.memfdCreate as (n: unknown, f: number) => number)(42, 0),
    () => (native.sendmsg as (...a: unknown[]) => number)(0, 'text', [], 0),
    () => (native.sendmsg as (...a: unknown[]) => number)(0, Buffer.alloc(1), [0.5], 0),
    () => (native.munmap as (h: unknown) => void)({}),
    () => (native.pollClose as (h: unknown) => void)(null),
    () => (native.detachView as (v: unknown) => void)(new ArrayBuffer(8)),
    () => (native.pollStart as (...a: unknown[]) => unknown)(0, K.UV_READABLE, 'nope'),
    () => native.pollStart(0, 64, () => {}),
  ];
  for (const fn of bad) {
    const e = thrown(fn);
    assert.equal(e.code, 'EINVAL', String(fn));
    assert.equal(e.syscall, undefined, String(fn));
    const cause = e.cause as Error;
    assert.ok(cause instanceof TypeError || cause instanceof RangeError, String(fn));
  }
});

test('ioctl: bad fd -> EBADF, unknown request on a memfd -> ENOTTY', () => {
  const arg = new Uint8Array(8);
  const e = thrown(() => native.ioctl(-1, 0x40086200, arg));
  assert.equal(e.code, 'EBADF');
  assert.equal(e.syscall, 'ioctl');
  const fd = native.memfdCreate('ioctl', 0);
  withFds([fd], () => {
    // DMA_BUF_IOCTL_SYNC on a non-dma-buf; also a request code >= 2^31.
    assert.equal(thrown(() => native.ioctl(fd, 0x40086200, arg)).code, 'ENOTTY');
    assert.equal(thrown(() => native.ioctl(fd, 0xc0086201, arg)).code, 'ENOTTY');
    // The same code written as a negative int32 (what JS bit operations produce).
    assert.equal(thrown(() => native.ioctl(fd, 0xc0086201 | 0, arg)).code, 'ENOTTY');
  });
});

test('ioctl passes the argument in and out (FIONREAD on a socket)', () => {
  // FIONREAD (0x541b) on a socket writes an int into the argument.
  const [a, b] = native.socketpair(K.SOCK_STREAM, false);
  withFds([a, b], () => {
    native.sendmsg(a, Buffer.from('hello'), [], 0);
    const arg = new Int32Array([-1]);
    assert.equal(native.ioctl(b, 0x541b, new Uint8Array(arg.buffer)), 0);
    assert.equal(arg[0], 5);
  });
});

test('pidfdOpen + pidfdGetfd duplicate a descriptor of this process', () => {
  const fd = native.memfdCreate('pidfd', 0);
  let pidfd = -1;
  try {
    pidfd = native.pidfdOpen(process.pid);
  } catch (err) {
    native.close(fd);
    throw err;
  }
  withFds([fd, pidfd], () => {
    assert.equal(native.setCloexec(pidfd, true), true);
    let copy: number;
    try {
      copy = native.pidfdGetfd(pidfd, fd);
    } catch (err) {
      // pidfd_getfd needs ptrace access; some sandboxes deny it.
      const code = (err as { code?: string }).code;
      assert.ok(code === 'EPERM' || code === 'ENOSYS', String(err));
      return;
    }
    withFds([copy], () => {
      assert.equal(native.fstat(copy).ino, native.fstat(fd).ino);
      assert.equal(native.setCloexec(copy, true), true);
    });
  });
  assert.equal(thrown(() => native.pidfdOpen(-5)).code, 'EINVAL');
});
