/**
 * The facts file-liveness.ts relies on, measured on raw socket pairs of this kernel, and the
 * service end's properties (no name, credentials on every message).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DmaBufError } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { BufferFile } from '../../src/transport/buffer-file.js';
import { fileState, queueCanary, shutDownByHolder } from '../../src/transport/file-liveness.js';
import { openFdCount, runChild } from '../helpers.js';

const c = native.constants;

/** A pair as a buffer's file has it: service end A (with the canary queued), file B and a copy. */
function pair(canary = true): { a: number; b: number; b2: number; close: () => void } {
  const [b, a] = native.socketpair(c.SOCK_SEQPACKET, false);
  if (canary) assert.equal(queueCanary(a), true);
  const b2 = native.dup(b, true);
  const open = new Set([a, b, b2]);
  return {
    a, b, b2,
    close: () => { for (const fd of open) { try { native.close(fd); } catch { /* closed by the test */ } } },
  };
}

test('file-liveness: a holder\'s SHUT_RD, SHUT_WR and SHUT_RDWR read as shut-down or open, never closed; the last close reads closed', () => {
  const fdsBefore = openFdCount();
  for (const [how, expected] of [['SHUT_RD', 'open'], ['SHUT_WR', 'shut-down'], ['SHUT_RDWR', 'shut-down']] as const) {
    for (const canary of [true, false]) {
      const p = pair(canary);
      assert.equal(fileState(p.a, canary), 'open', `${how}: open before`);
      native.shutdown(p.b2, c[how]);
      native.close(p.b2);
      assert.equal(fileState(p.a, canary), expected, `${how} (canary ${canary})`);
      native.close(p.b);
      assert.equal(fileState(p.a, canary), 'closed', `${how} (canary ${canary}): the last close`);
      native.close(p.a);
    }
  }
  assert.equal(openFdCount(), fdsBefore);
});

test('file-liveness: the canary makes the last close certain without socket diagnostics (POLLERR, then ECONNRESET once)', () => {
  const p = pair();
  native.shutdown(p.b, c.SHUT_RDWR);
  assert.equal(native.pollNow(p.a, c.POLLIN) & c.POLLERR, 0, 'a shutdown sets no error');
  assert.ok(native.sockOutq(p.a) > 0, 'the canary is in flight while the file exists');
  assert.equal(fileState(p.a, true, false), 'shut-down', 'told without the diagnostics');
  native.close(p.b);
  native.close(p.b2);
  assert.notEqual(native.pollNow(p.a, c.POLLIN) & c.POLLERR, 0, 'the release of the file with the canary queued sets ECONNRESET');
  assert.equal(native.sockOutq(p.a), 0);
  assert.equal(fileState(p.a, true, false), 'closed', 'told without the diagnostics');
  assert.throws(() => native.recvmsg(p.a, 16, 0, c.MSG_DONTWAIT), (e: unknown) => DmaBufError.is(e, 'ECONNRESET'));
  assert.equal(native.recvmsg(p.a, 16, 0, c.MSG_DONTWAIT).data.length, 0, 'then end-of-file');
  native.close(p.a);
});

test('file-liveness: socket diagnostics show the peer while it exists and 0 after its last close; ENOENT for no socket', () => {
  const p = pair(false);
  const inoA = Number(native.fstat(p.a).ino);
  const inoB = Number(native.fstat(p.b).ino);
  assert.equal(native.unixDiagPeer(inoA), inoB);
  assert.equal(native.unixDiagPeer(inoB), inoA);
  native.shutdown(p.b, c.SHUT_RDWR);
  assert.equal(native.unixDiagPeer(inoA), inoB, 'a shutdown leaves the peer');
  native.close(p.b);
  native.close(p.b2);
  assert.equal(native.unixDiagPeer(inoA), 0, 'the last close leaves no peer');
  native.close(p.a);
  assert.throws(() => native.unixDiagPeer(inoA), (e: unknown) => DmaBufError.is(e, 'ENOENT'));
});

test('file-liveness: an edge-triggered epoll with an empty mask reports a SHUT_RDWR once, nothing for SHUT_WR, and the last close after either', () => {
  for (const how of ['SHUT_WR', 'SHUT_RDWR'] as const) {
    const p = pair();
    const ep = native.hupWatch(p.a);
    try {
      assert.equal(native.hupWatchTake(ep), 0, 'nothing at first');
      native.shutdown(p.b2, c[how]);
      const first = native.hupWatchTake(ep);
      if (how === 'SHUT_WR') assert.equal(first, 0, 'readable for ever, but no report');
      else assert.equal(first, c.POLLHUP, 'one hang-up report');
      assert.equal(native.hupWatchTake(ep), 0, 'edge-triggered: no second report without a wake-up');
      native.close(p.b2);
      native.close(p.b);
      assert.equal(native.hupWatchTake(ep) & (c.POLLHUP | c.POLLERR), c.POLLHUP | c.POLLERR, `${how}: the last close is reported`);
    } finally {
      native.close(ep);
      native.close(p.a);
    }
  }
});

test('file-liveness: after a failed send, an importer tells a holder\'s shutdown (exporter alive) from a gone exporter', () => {
  for (const how of ['SHUT_WR', 'SHUT_RDWR'] as const) {
    const p = pair();
    native.shutdown(p.b2, c[how]);
    assert.throws(() => native.sendmsg(p.b, Buffer.from('x'), [], c.MSG_DONTWAIT), (e: unknown) => DmaBufError.is(e, 'EPIPE'));
    assert.equal(shutDownByHolder(p.b), true, how);
    native.close(p.a);
    assert.equal(shutDownByHolder(p.b), false, `${how}, then the exporter is gone`);
    native.close(p.b);
    native.close(p.b2);
  }
  const [lone] = [native.socket(c.SOCK_SEQPACKET, false)];
  assert.equal(shutDownByHolder(lone), false, 'a socket without a peer');
  native.close(lone);
});

test('BufferFile: the service end has no name (the canary goes out before SO_PASSCRED, which would autobind it) and receives each message with its sender\'s credentials', async () => {
  const file = BufferFile.create();
  const got: unknown[] = [];
  file.watch({ onEof: () => {}, onMessage: (data, fds, _flags, cred) => { got.push({ data: data.toString(), fds: fds.length, cred }); for (const fd of fds) native.close(fd); } });
  const fd = file.dup(false);
  const child = await runChild(`native.sendmsg(3, Buffer.from('hi'), [], 0); out({ pid: process.pid });`, [fd]);
  native.close(fd);
  assert.equal(child.code, 0, child.stderr);
  const until = Date.now() + 5000;
  while (got.length === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 2));
  assert.deepEqual(got, [{ data: 'hi', fds: 0, cred: { pid: child.json[0]!.pid, uid: process.getuid!(), gid: process.getgid!() } }]);
  assert.equal(native.sockName(file.serviceFd), '', 'the service end is not bound to an abstract name');
  file.close();
});
