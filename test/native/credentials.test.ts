/**
 * Kernel-verified credentials (issue 8, item 4, the native part): `SO_PASSCRED` and the
 * `SCM_CREDENTIALS` of each message, `SO_PEERCRED` of a socket passed between processes,
 * `SO_PEERPIDFD`; with real child processes.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { DmaBufError } from '../../src/index.js';
import { native, type RecvResult } from '../../src/native/binding.js';
import { openFdCount, reapChildren, runChild, waitFor } from '../helpers.js';

after(reapChildren);
const c = native.constants;

/** Receives one message (with credentials) from a blocking-free socket, waiting for it. */
async function recvCred(fd: number, maxFds = 8): Promise<RecvResult> {
  let r: RecvResult | null = null;
  await waitFor(() => (r = native.recvmsg(fd, 4096, maxFds, c.MSG_DONTWAIT, true, true)) !== null, 5000, 'a message');
  return r!;
}

test('credentials: with SO_PASSCRED each message carries its sender\'s pid, uid and gid, along with its data and descriptors', async () => {
  const fds = openFdCount();
  const [mine, theirs] = native.socketpair(c.SOCK_SEQPACKET, false);
  native.setPassCred(mine, true);
  const pids: number[] = [];
  for (let i = 0; i < 2; i++) {
    const r = await runChild(`const [x, y] = native.socketpair(native.constants.SOCK_SEQPACKET, false); native.sendmsg(3, Buffer.from('from ' + process.pid), [x], 0); out({ pid: process.pid });`, [theirs]);
    assert.equal(r.code, 0, r.stderr);
    pids.push(r.json[0]!.pid as number);
  }
  for (const pid of pids) {
    const msg = await recvCred(mine);
    assert.equal(msg.data.toString(), `from ${pid}`);
    assert.equal(msg.fds.length, 1, 'the descriptor arrives along with the credentials');
    assert.deepEqual(msg.cred, { pid, uid: process.getuid!(), gid: process.getgid!() });
    native.close(msg.fds[0]!);
  }
  native.close(mine);
  native.close(theirs);
  assert.equal(openFdCount(), fds);
});

test('credentials: without SO_PASSCRED a message has none (no cred); the plain recvmsg never returns cred', () => {
  const [a, b] = native.socketpair(c.SOCK_SEQPACKET, false);
  try {
    native.sendmsg(b, Buffer.from('x'), [], 0);
    const r = native.recvmsg(a, 16, 0, c.MSG_DONTWAIT, true, true)!;
    assert.equal(r.data.toString(), 'x');
    assert.equal(r.cred, undefined);
    native.sendmsg(b, Buffer.from('y'), [], 0);
    assert.equal('cred' in native.recvmsg(a, 16, 0, c.MSG_DONTWAIT), false);
  } finally {
    native.close(a);
    native.close(b);
  }
});

test('credentials: a message queued before SO_PASSCRED was turned on carries no sender (the kernel reports pid 0: no cred)', () => {
  const [a, b] = native.socketpair(c.SOCK_SEQPACKET, false);
  try {
    native.sendmsg(b, Buffer.from('early'), [], 0);
    native.setPassCred(a, true);
    native.sendmsg(b, Buffer.from('late'), [], 0);
    const early = native.recvmsg(a, 16, 0, c.MSG_DONTWAIT, true, true)!;
    const late = native.recvmsg(a, 16, 0, c.MSG_DONTWAIT, true, true)!;
    assert.equal(early.data.toString(), 'early');
    assert.equal(early.cred, undefined);
    assert.deepEqual(late.cred, { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() });
  } finally {
    native.close(a);
    native.close(b);
  }
});

test('credentials: with more descriptors than asked for, the surplus is closed and the credentials still arrive', async () => {
  const fds = openFdCount();
  const [a, b] = native.socketpair(c.SOCK_SEQPACKET, false);
  native.setPassCred(a, true);
  const extra = Array.from({ length: 10 }, () => native.dup(b, true));
  native.sendmsg(b, Buffer.from('many'), extra, 0);
  for (const fd of extra) native.close(fd);
  const r = await recvCred(a, 3);
  assert.equal(r.fds.length, 3);
  assert.equal(r.cred?.pid, process.pid);
  for (const fd of r.fds) native.close(fd);
  native.close(a);
  native.close(b);
  assert.equal(openFdCount(), fds, 'the surplus descriptors were closed');
});

test('credentials: a socket created by process A and passed through process B still has SO_PEERCRED = A; the message that carried it says B', async () => {
  // B's end: B receives from A on its fd 3 and forwards to this process on its fd 4.
  const [aToB, bFromA] = native.socketpair(c.SOCK_SEQPACKET, false);
  const [mine, bToMe] = native.socketpair(c.SOCK_SEQPACKET, false);
  native.setPassCred(mine, true);
  const a = await runChild(`
    const [keep, give] = native.socketpair(native.constants.SOCK_SEQPACKET, false);
    native.sendmsg(3, Buffer.from('channel'), [give], 0);
    out({ pid: process.pid });`, [aToB]);
  assert.equal(a.code, 0, a.stderr);
  const b = await runChild(`
    const r = native.recvmsg(3, 64, 1, 0);
    native.sendmsg(4, Buffer.from('forwarded'), r.fds, 0);
    out({ pid: process.pid });`, [bFromA, bToMe]);
  assert.equal(b.code, 0, b.stderr);
  const msg = await recvCred(mine);
  assert.equal(msg.fds.length, 1);
  const channel = msg.fds[0]!;
  const aPid = a.json[0]!.pid as number;
  const bPid = b.json[0]!.pid as number;
  assert.equal(msg.cred?.pid, bPid, 'the message came from B');
  assert.equal(native.peerCred(channel).pid, aPid, 'the socket\'s peer was created by A');
  assert.notEqual(native.peerCred(channel).pid, msg.cred?.pid, 'so a HELLO from B with this channel can be refused');
  for (const fd of [channel, mine, bToMe, aToB, bFromA]) native.close(fd);
});

test('credentials: SO_PEERPIDFD gives a pidfd of the peer\'s process, which polls readable once that process has exited', async () => {
  const [mine, theirs] = native.socketpair(c.SOCK_SEQPACKET, false);
  const child = await runChild(`
    const [keep, give] = native.socketpair(native.constants.SOCK_SEQPACKET, false);
    native.sendmsg(3, Buffer.from('peer'), [give], 0);
    out({ pid: process.pid });`, [theirs]);
  assert.equal(child.code, 0, child.stderr);
  const msg = await recvCred(mine);
  const peer = msg.fds[0]!;
  let pidfd: number;
  try {
    pidfd = native.peerPidfd(peer);
  } catch (err) {
    // Only a kernel before 6.5 lacks it.
    assert.ok(DmaBufError.is(err, 'ENOPROTOOPT'), String(err));
    for (const fd of [peer, mine, theirs]) native.close(fd);
    return;
  }
  const info = readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8');
  assert.match(info, new RegExp(`^Pid:\\s+(${child.json[0]!.pid}|-1)$`, 'm'), info);
  assert.notEqual(native.pollNow(pidfd, c.POLLIN) & c.POLLIN, 0, 'the peer\'s process has exited');
  // A live peer: this process.
  const [x, y] = native.socketpair(c.SOCK_STREAM, false);
  const own = native.peerPidfd(x);
  assert.match(readFileSync(`/proc/self/fdinfo/${own}`, 'utf8'), new RegExp(`^Pid:\\s+${process.pid}$`, 'm'));
  assert.equal(native.pollNow(own, c.POLLIN) & c.POLLIN, 0, 'a live process');
  for (const fd of [own, x, y, pidfd, peer, mine, theirs]) native.close(fd);
});

test('credentials: shutdown() and setPassCred() check their arguments', () => {
  const [a, b] = native.socketpair(c.SOCK_SEQPACKET, false);
  try {
    assert.throws(() => native.shutdown(a, 3), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
    assert.throws(() => native.shutdown(a, -1), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
    assert.throws(() => native.setPassCred(a, 1 as unknown as boolean), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
    assert.throws(() => native.shutdown(-1, c.SHUT_RD), (e: unknown) => DmaBufError.is(e, 'EBADF'));
    const file = native.memfdCreate('not-a-socket', 0);
    assert.throws(() => native.peerPidfd(file), (e: unknown) => DmaBufError.is(e, 'ENOTSOCK'));
    assert.throws(() => native.sockOutq(file), (e: unknown) => DmaBufError.is(e, 'ENOTTY') || DmaBufError.is(e, 'ENOTSOCK') || DmaBufError.is(e, 'EINVAL'));
    native.close(file);
  } finally {
    native.close(a);
    native.close(b);
  }
});
