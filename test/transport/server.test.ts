/**
 * Buffer servers: listen/accept/connect by path and by abstract name, stale and foreign files,
 * close, abort, a client in another process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { BufferChannel, BufferServer } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { recordingExport } from '../helpers.js';
import { settleFds, finish, isCode, openFds, runChild, startChild } from './util.js';

const K = native.constants;

function abstractName(tag: string): string {
  return `@dmabuf-test-${tag}-${process.pid}-${Math.random().toString(36).slice(2)}`;
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(path.join(tmpdir(), 'dmabuf-srv-'));
  try {
    await fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Accept + connect; sends a buffer client -> server and back; closes both. */
async function roundTrip(server: BufferServer, address: string): Promise<void> {
  const { buf } = recordingExport(4096, {}, 'srv');
  try {
    const [serverSide, client] = await Promise.all([server.accept(), BufferChannel.connect(address)]);
    try {
      assert.equal(serverSide.peer.pid, process.pid);
      assert.equal(client.peer.pid, process.pid);
      await client.send(buf, { dir: 'up' });
      const up = await serverSide.receive();
      assert.equal(up.buffer, buf);
      assert.deepEqual(up.meta, { dir: 'up' });
      await serverSide.send(up.buffer, { dir: 'down' });
      up.buffer.put();
      const down = await client.receive();
      assert.equal(down.buffer, buf);
      down.buffer.put();
    } finally {
      serverSide.close();
      client.close();
    }
  } finally {
    buf.put();
  }
}

test('listen/accept/connect on an abstract name ("@name" and "\\0name" are the same)', async () => {
  const before = openFds();
  const name = abstractName('abstract');
  const server = BufferServer.listen(name);
  try {
    assert.equal(server.address, '\0' + name.slice(1));
    await roundTrip(server, name);
    await roundTrip(server, '\0' + name.slice(1));
    // The same name cannot be taken twice.
    assert.throws(() => BufferServer.listen(name), isCode('EADDRINUSE', /taken/));
  } finally {
    server.close();
    server.close();
  }
  // Gone with the socket.
  await assert.rejects(BufferChannel.connect(name), isCode('ECONNREFUSED', /nobody listens/));
  await settleFds(before);
});

test('listen/accept/connect on a path; close removes the socket file', async () => {
  await withDir(async (dir) => {
    const before = openFds();
    const file = path.join(dir, 'buffers.sock');
    const server = BufferServer.listen(file, { backlog: 4 });
    try {
      assert.equal(server.address, file);
      assert.ok(statSync(file).isSocket());
      await roundTrip(server, file);
    } finally {
      server.close();
    }
    assert.equal(existsSync(file), false, 'close unlinks the path it created');
    await assert.rejects(BufferChannel.connect(file), isCode('ENOENT', /does not exist/));
    await settleFds(before);
  });
});

test('a stale socket file (nobody listening) is replaced; a live one or a non-socket file is refused', async () => {
  await withDir(async (dir) => {
    const before = openFds();
    // A stale socket: bound, never listened, closed (like a crashed server's).
    const stale = path.join(dir, 'stale.sock');
    const fd = native.socket(K.SOCK_SEQPACKET, false);
    native.bind(fd, stale);
    native.close(fd);
    assert.ok(statSync(stale).isSocket());
    const server = BufferServer.listen(stale);
    try {
      await roundTrip(server, stale);
      // Live: refused, and the live server's file stays. The live server sees the probe as
      // a connection that closes at once.
      assert.throws(() => BufferServer.listen(stale), isCode('EADDRINUSE', /already listens/));
      assert.ok(statSync(stale).isSocket());
      const probe = await server.accept();
      await assert.rejects(probe.receiveFd(), isCode('EPIPE', /peer closed/));
      probe.close();
      await roundTrip(server, stale);
    } finally {
      server.close();
    }
    // A regular file is never replaced.
    const regular = path.join(dir, 'important.txt');
    writeFileSync(regular, 'keep me');
    assert.throws(() => BufferServer.listen(regular), isCode('EEXIST', /regular file, not a socket; refusing/));
    assert.equal(statSync(regular).size, 7);
    // A live socket of another type (a stream server) is refused too.
    const streamPath = path.join(dir, 'stream.sock');
    const st = native.socket(K.SOCK_STREAM, false);
    native.bind(st, streamPath);
    native.listen(st, 1);
    try {
      assert.throws(() => BufferServer.listen(streamPath), isCode('EADDRINUSE'));
      await assert.rejects(BufferChannel.connect(streamPath), isCode('EPROTOTYPE', /not a SOCK_SEQPACKET/));
    } finally {
      native.close(st);
    }
    // A directory that does not exist.
    assert.throws(() => BufferServer.listen(path.join(dir, 'no', 'such', 'dir.sock')), isCode('ENOENT'));
    await settleFds(before);
  });
});

test('close does not remove a socket file that someone else replaced', async () => {
  await withDir(async (dir) => {
    const file = path.join(dir, 'replaced.sock');
    const server = BufferServer.listen(file);
    rmSync(file);
    const other = BufferServer.listen(file);
    server.close();
    assert.ok(existsSync(file), 'the new server\'s file stays');
    other.close();
    assert.equal(existsSync(file), false);
  });
});

test('bad addresses and options', () => {
  assert.throws(() => BufferServer.listen(''), isCode('EINVAL', /empty/));
  assert.throws(() => BufferServer.listen('@'), isCode('EINVAL', /abstract name is empty/));
  assert.throws(() => BufferServer.listen('/tmp/a\0b'), isCode('EINVAL', /NUL/));
  assert.throws(() => BufferServer.listen(42 as unknown as string), isCode('EINVAL', /must be a string/));
  assert.throws(() => BufferServer.listen('/tmp/' + 'x'.repeat(120)), isCode('ENAMETOOLONG', /at most 107/));
  assert.throws(() => BufferServer.listen(abstractName('bl'), { backlog: 0 }), isCode('EINVAL', /backlog/));
  assert.throws(() => new (BufferServer as unknown as new (t: symbol) => unknown)(Symbol('x')), isCode('EINVAL'));
});

test('accept: FIFO waiters, abort with EINTR, close rejects waiting accepts with EPIPE, the iterator ends', async () => {
  const before = openFds();
  const name = abstractName('accept');
  const server = BufferServer.listen(name);
  const ac = new AbortController();
  const aborted = server.accept({ signal: ac.signal });
  const first = server.accept();
  ac.abort();
  await assert.rejects(aborted, isCode('EINTR', /none was consumed/));
  const client = await BufferChannel.connect(name);
  const accepted = await first;
  assert.equal(accepted.peer.pid, process.pid);
  accepted.close();
  client.close();
  // Iterate: two connections, then close ends the loop.
  const seen: number[] = [];
  const loop = (async () => {
    for await (const ch of server) {
      seen.push(ch.peer.pid);
      ch.close();
      if (seen.length === 2) setImmediate(() => server.close());
    }
  })();
  const c1 = await BufferChannel.connect(name);
  const c2 = await BufferChannel.connect(name);
  await loop;
  c1.close();
  c2.close();
  assert.deepEqual(seen, [process.pid, process.pid]);
  await assert.rejects(server.accept(), isCode('EPIPE', /was closed/));
  const waiting = BufferServer.listen(abstractName('accept2'));
  const pending = waiting.accept();
  waiting.close();
  await assert.rejects(pending, isCode('EPIPE'));
  await settleFds(before);
});

test('connect waits while the backlog is full and can be aborted; await using closes', async () => {
  const before = openFds();
  const name = abstractName('backlog');
  {
    await using server = BufferServer.listen(name, { backlog: 1 });
    // Fill the backlog with connections nobody accepts.
    const queued: BufferChannel[] = [];
    for (;;) {
      const ac = new AbortController();
      const t = setTimeout(() => ac.abort(), 50);
      try {
        queued.push(await BufferChannel.connect(name, { signal: ac.signal }));
      } catch (e) {
        isCode('EINTR', /waiting for the server/)(e);
        break;
      } finally {
        clearTimeout(t);
      }
      assert.ok(queued.length < 100);
    }
    assert.ok(queued.length >= 1);
    // A waiting connect gets in once the server accepts.
    const late = BufferChannel.connect(name);
    await sleep(20);
    const accepted: BufferChannel[] = [];
    for (let i = 0; i <= queued.length; i++) accepted.push(await server.accept());
    (await late).close();
    for (const ch of [...queued, ...accepted]) ch.close();
    await assert.rejects(BufferChannel.connect(name, { signal: AbortSignal.abort() }), isCode('EINTR'));
  }
  await assert.rejects(BufferChannel.connect(name), isCode('ECONNREFUSED'));
  await settleFds(before);
});

test('an idle server does not keep the process alive; a waiting accept does', async () => {
  const r = await runChild(`
    const s = m.BufferServer.listen('@dmabuf-idle-' + process.pid);
    setTimeout(() => out({ idle: true }), 10);
  `);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json, [{ idle: true }]);
  const r2 = await runChild(`
    const name = '@dmabuf-wait-' + process.pid;
    const s = m.BufferServer.listen(name);
    setTimeout(() => m.BufferChannel.connect(name).then((c) => c.close()), 50).unref();
    const ch = await s.accept();
    out({ accepted: ch.peer.pid === process.pid });
    ch.close();
    s.close();
  `);
  assert.equal(r2.code, 0, r2.stderr);
  assert.deepEqual(r2.json, [{ accepted: true }]);
});

test('a client in another process connects by path and exchanges buffers with the server', async () => {
  await withDir(async (dir) => {
    const before = openFds();
    const file = path.join(dir, 's.sock');
    const server = BufferServer.listen(file);
    const { buf } = recordingExport(4096, {}, 'cross');
    const child = startChild(`
      const ch = await m.BufferChannel.connect(${JSON.stringify(file)});
      const { fd, meta } = await ch.receiveFd();
      out({ ino: native.fstat(fd).ino, meta, pid: ch.peer.pid });
      await ch.sendFd(fd, { echo: meta });
      native.close(fd);
      ch.close();
    `);
    const done = finish(child);
    try {
      const ch = await server.accept();
      try {
        assert.equal(ch.peer.pid, child.pid);
        await ch.send(buf, { n: 1 });
        const back = await ch.receive();
        assert.equal(back.buffer, buf, 'the same file came back: the same object');
        assert.deepEqual(back.meta, { echo: { n: 1 } });
        back.buffer.put();
      } finally {
        ch.close();
      }
      const r = await done;
      assert.equal(r.code, 0, r.stderr);
      const fd = buf.fd();
      const ino = String(native.fstat(fd).ino);
      native.close(fd);
      assert.deepEqual(r.json, [{ ino, meta: { n: 1 }, pid: process.pid }]);
    } finally {
      server.close();
      buf.put();
    }
    await settleFds(before);
  });
});
