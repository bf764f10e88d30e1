/**
 * Unix sockets: SCM_RIGHTS passing, truncation, EAGAIN/EOF, addresses, credentials.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { thrown, withFds, type Thrown } from './util.js';
import { native } from '../../src/native/binding.js';

const K = native.constants;



/** The descriptors open in this process (less the one readdir itself used). */
function openFds(): Set<number> {
  const fds = new Set<number>();
  for (const name of fs.readdirSync('/proc/self/fd')) {
    try {
      fs.readlinkSync(`/proc/self/fd/${name}`);
      fds.add(Number(name));
    } catch {
      // readdir's own descriptor, closed by now
    }
  }
  return fds;
}

function uniqueName(tag: string): string {
  return `\0dmabuf-test-${tag}-${process.pid}-${Math.random().toString(36).slice(2)}`;
}

test('socketpair: close-on-exec, non-blocking as asked, socketInfo', () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
  const [c, d] = native.socketpair(K.SOCK_STREAM, false);
  withFds([a, b, c, d], () => {
    assert.equal(native.setCloexec(a, true), true);
    assert.equal(native.setNonblock(a, true), true);
    assert.equal(native.setNonblock(c, false), false);
    assert.deepEqual(native.socketInfo(a), { domain: K.AF_UNIX, type: K.SOCK_SEQPACKET });
    assert.deepEqual(native.socketInfo(d), { domain: K.AF_UNIX, type: K.SOCK_STREAM });
    assert.equal(native.fstat(a).mode & K.S_IFMT, K.S_IFSOCK);
    const cred = native.peerCred(a);
    assert.equal(cred.pid, process.pid);
    assert.equal(cred.uid, process.getuid?.());
    assert.equal(cred.gid, process.getgid?.());
    assert.equal(native.sockName(a), '');
  });
});

test('socketInfo of a pipe (FIFO) is ENOTSOCK', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmabuf-fifo-'));
  const fifo = path.join(dir, 'fifo');
  try {
    execFileSync('mkfifo', [fifo]);
    const fd = fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK);
    try {
      assert.equal(native.fstat(fd).mode & K.S_IFMT, K.S_IFIFO);
      const e = thrown(() => native.socketInfo(fd));
      assert.equal(e.code, 'ENOTSOCK');
      assert.equal(e.syscall, 'getsockopt');
      assert.equal(thrown(() => native.peerCred(fd)).code, 'ENOTSOCK');
      assert.equal(thrown(() => native.recvmsg(fd, 1, 0, 0)).code, 'ENOTSOCK');
    } finally {
      fs.closeSync(fd);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('sendmsg/recvmsg pass a memfd with SCM_RIGHTS over SOCK_SEQPACKET', () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, false);
  const memfd = native.memfdCreate('passed', 0);
  withFds([a, b, memfd], () => {
    native.ftruncate(memfd, 12345);
    assert.equal(native.sendmsg(a, Buffer.from('buffer#1'), [memfd], 0), 8);
    const r = native.recvmsg(b, 64, 4, 0);
    assert.ok(Buffer.isBuffer(r.data));
    assert.equal(r.data.toString(), 'buffer#1');
    assert.equal(r.flags, 0);
    assert.equal(r.fds.length, 1);
    const got = r.fds[0]!;
    withFds([got], () => {
      assert.notEqual(got, memfd);
      const st = native.fstat(got);
      assert.equal(st.ino, native.fstat(memfd).ino);
      assert.equal(st.dev, native.fstat(memfd).dev);
      assert.equal(st.size, 12345);
      assert.equal(native.setCloexec(got, true), true); // MSG_CMSG_CLOEXEC
    });
  });
});

test('zero-length data with descriptors is a message on SOCK_SEQPACKET', () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, false);
  const memfd = native.memfdCreate('empty-msg', 0);
  withFds([a, b, memfd], () => {
    assert.equal(native.sendmsg(a, new Uint8Array(0), [memfd, memfd], 0), 0);
    const r = native.recvmsg(b, 16, 8, 0);
    assert.equal(r.data.length, 0);
    assert.equal(r.fds.length, 2);
    for (const fd of r.fds) native.close(fd);
  });
});

test('recvmsg with maxFds 1 closes the extra descriptors and reports MSG_CTRUNC', () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, false);
  const memfds = [native.memfdCreate('x1', 0), native.memfdCreate('x2', 0), native.memfdCreate('x3', 0)];
  withFds([a, b, ...memfds], () => {
    native.sendmsg(a, Buffer.from('three'), memfds, 0);
    const before = openFds();
    const r = native.recvmsg(b, 64, 1, 0);
    const after = openFds();
    assert.equal(r.data.toString(), 'three');
    assert.equal(r.fds.length, 1);
    assert.equal(r.flags & K.MSG_CTRUNC, K.MSG_CTRUNC);
    const added = [...after].filter((fd) => !before.has(fd));
    assert.deepEqual(added, r.fds);
    assert.equal(native.fstat(r.fds[0]!).ino, native.fstat(memfds[0]!).ino);
    native.close(r.fds[0]!);
    assert.deepEqual(openFds(), before);

    // maxFds 0: the kernel drops them all; nothing leaks.
    native.sendmsg(a, Buffer.from('again'), memfds, 0);
    const r0 = native.recvmsg(b, 64, 0, 0);
    assert.deepEqual(r0.fds, []);
    assert.equal(r0.flags & K.MSG_CTRUNC, K.MSG_CTRUNC);
    assert.deepEqual(openFds(), before);
  });
});

test('recvmsg with a short buffer truncates the datagram (MSG_TRUNC)', () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, false);
  withFds([a, b], () => {
    native.sendmsg(a, Buffer.from('0123456789'), [], 0);
    const r = native.recvmsg(b, 4, 0, 0);
    assert.equal(r.data.toString(), '0123');
    assert.equal(r.flags & K.MSG_TRUNC, K.MSG_TRUNC);
    // With MSG_TRUNC as input the kernel returns the real size; data stays within maxBytes.
    native.sendmsg(a, Buffer.from('abcdefghij'), [], 0);
    const r2 = native.recvmsg(b, 4, 0, K.MSG_TRUNC);
    assert.equal(r2.data.toString(), 'abcd');
    // MSG_PEEK leaves the message queued.
    native.sendmsg(a, Buffer.from('peek'), [], 0);
    assert.equal(native.recvmsg(b, 16, 0, K.MSG_PEEK).data.toString(), 'peek');
    assert.equal(native.recvmsg(b, 16, 0, 0).data.toString(), 'peek');
  });
});

test('EAGAIN with MSG_DONTWAIT on an empty socket; EOF after the peer closes', () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, false);
  let aOpen = true;
  withFds([b], () => {
    try {
      const e = thrown(() => native.recvmsg(b, 16, 1, K.MSG_DONTWAIT));
      assert.equal(e.code, 'EAGAIN');
      assert.equal(e.syscall, 'recvmsg');
      assert.equal(e.errno, 11);
    } finally {
      native.close(a);
      aOpen = false;
    }
    const r = native.recvmsg(b, 16, 1, K.MSG_DONTWAIT);
    assert.equal(r.data.length, 0);
    assert.deepEqual(r.fds, []);
    // Writing to a closed peer is EPIPE, never SIGPIPE (MSG_NOSIGNAL).
    const w = thrown(() => native.sendmsg(b, Buffer.from('x'), [], 0));
    assert.equal(w.code, 'EPIPE');
    assert.equal(w.syscall, 'sendmsg');
  });
  assert.equal(aOpen, false);
});

test('sendmsg throws EAGAIN when a non-blocking socket is full', () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
  withFds([a, b], () => {
    const chunk = Buffer.alloc(4096);
    let sent = 0;
    let err: Thrown | undefined;
    for (let i = 0; i < 100_000; i++) {
      try {
        sent += native.sendmsg(a, chunk, [], 0);
      } catch (e) {
        err = e as Thrown;
        break;
      }
    }
    assert.ok(sent > 0);
    assert.equal(err?.code, 'EAGAIN');
    assert.equal(err?.syscall, 'sendmsg');
  });
});

test('sendmsg errors: bad descriptor in fds, too many fds', () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, false);
  withFds([a, b], () => {
    assert.equal(thrown(() => native.sendmsg(a, Buffer.from('x'), [-1], 0)).code, 'EBADF');
    const many = new Array<number>(300).fill(a);
    assert.equal(thrown(() => native.sendmsg(a, Buffer.from('x'), many, 0)).code, 'EINVAL');
  });
});

test('bind/listen/connect/accept on an abstract name', () => {
  const name = uniqueName('abstract');
  const server = native.socket(K.SOCK_SEQPACKET, false);
  const client = native.socket(K.SOCK_SEQPACKET, false);
  withFds([server, client], () => {
    native.bind(server, name);
    assert.equal(native.sockName(server), name);
    native.listen(server, 8);
    // Nothing pending yet on a non-blocking accept.
    native.setNonblock(server, true);
    assert.equal(thrown(() => native.accept(server, false)).code, 'EAGAIN');
    native.connect(client, name);
    const conn = native.accept(server, true);
    withFds([conn], () => {
      assert.equal(native.setCloexec(conn, true), true);
      assert.equal(native.setNonblock(conn, true), true);
      assert.equal(native.peerCred(conn).pid, process.pid);
      native.sendmsg(client, Buffer.from('ping'), [], 0);
      assert.equal(native.recvmsg(conn, 16, 0, 0).data.toString(), 'ping');
    });
    // The same name cannot be bound twice.
    const again = native.socket(K.SOCK_SEQPACKET, false);
    withFds([again], () => {
      assert.equal(thrown(() => native.bind(again, name)).code, 'EADDRINUSE');
    });
  });
  // Connecting to a name nobody listens on.
  const lonely = native.socket(K.SOCK_SEQPACKET, false);
  withFds([lonely], () => {
    const e = thrown(() => native.connect(lonely, uniqueName('nobody')));
    assert.equal(e.code, 'ECONNREFUSED');
    assert.equal(e.syscall, 'connect');
  });
});

test('bind to a path; sockName returns it; too long a path is ENAMETOOLONG', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dmabuf-sock-'));
  const file = path.join(dir, 's.sock');
  const fd = native.socket(K.SOCK_STREAM, false);
  try {
    withFds([fd], () => {
      native.bind(fd, file);
      assert.equal(native.sockName(fd), file);
      assert.ok(fs.statSync(file).isSocket());
      const e = thrown(() => native.connect(fd, '/' + 'x'.repeat(200)));
      assert.equal(e.code, 'ENAMETOOLONG');
      assert.equal(e.syscall, 'connect');
    });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('bind to the empty address autobinds an abstract name', () => {
  const fd = native.socket(K.SOCK_SEQPACKET, false);
  withFds([fd], () => {
    native.bind(fd, '');
    const name = native.sockName(fd);
    assert.equal(name[0], '\0');
    assert.ok(name.length > 1);
  });
});
