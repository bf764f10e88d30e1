/**
 * Fence files in one process: toFd/fromFd, worker threads, what fromFd refuses, what a hostile
 * holder can do, and descriptors.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { once } from 'node:events';
import { DmaBufError, DmaFence, DmaFenceTimeline } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { syncNative } from '../../src/native/sync-binding.js';
import { INDEX_URL, openFdCount, reapChildren, runChild, waitFor } from '../helpers.js';
import { fdNeutral, checkDescriptorsAfterEach } from './agent.js';

checkDescriptorsAfterEach();

after(reapChildren);

async function rejection(p: Promise<unknown>): Promise<DmaBufError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof DmaBufError, `a DmaBufError, not ${String(err)}`);
    return err;
  }
  assert.fail('expected a rejection');
}

/**
 * A worker that creates a fence, posts its fence file's number, then obeys one message; and
 * the fence imported here. The caller closes `fd`.
 */
async function workerFence(): Promise<{ worker: Worker; fd: number; fence: DmaFence }> {
  const worker = new Worker(`
    const { DmaFence, DmaBufError } = await import(${JSON.stringify(INDEX_URL)});
    const { parentPort } = await import('node:worker_threads');
    const fence = new DmaFence({ name: 'worker fence' });
    parentPort.postMessage(fence.toFd());
    parentPort.once('message', (m) => {
      if (m === 'signal') fence.signal();
      else if (m === 'error') fence.signal(new DmaBufError('ENOSPC', 'the disk is full'));
      parentPort.postMessage('done');
      if (m === 'end') process.exit(0);
    });
  `, { eval: true });
  const [fd] = (await once(worker, 'message')) as [number];
  return { worker, fd, fence: await DmaFence.fromFd(fd) };
}

test('fromFd() in the thread that created the fence returns that very fence', async () => {
  await fdNeutral(async () => {
    const f = new DmaFence({ name: 'mine' });
    const fd = f.toFd();
    const fd2 = f.toFd();
    assert.notEqual(fd, fd2);
    assert.equal(await DmaFence.fromFd(fd), f);
    assert.equal(await DmaFence.fromFd(fd2), f);
    f.signal();
    closeSync(fd);
    closeSync(fd2);
  });
});

test('the fence file of a signalled fence imports as a signalled fence with the same error code', async () => {
  await fdNeutral(async () => {
    const ok = new DmaFence();
    ok.signal();
    const failed = new DmaFence();
    failed.signal(new DmaBufError('ETIMEDOUT', 'the GPU hung'));
    const odd = new DmaFence();
    odd.signal(new DmaBufError('EWHATEVER', 'not an errno name'));
    const codes = [];
    for (const f of [ok, failed, odd]) {
      const fd = f.toFd();
      const g = await DmaFence.fromFd(fd, { name: 'copy' });
      closeSync(fd);
      assert.notEqual(g, f);
      assert.equal(g.signaled, true);
      assert.equal(g.name, 'copy');
      codes.push(g.error?.code ?? null);
    }
    assert.deepEqual(codes, [null, 'ETIMEDOUT', 'EIO']);
  });
});

test('a fence created in a worker signals its import in the main thread, with its error code', async () => {
  await fdNeutral(async () => {
    for (const how of ['signal', 'error'] as const) {
      const { worker, fd, fence: f } = await workerFence();
      closeSync(fd);
      assert.equal(await f.wait({ timeout: 0 }), false);
      const order: string[] = [];
      f.addCallback(() => order.push('callback'));
      worker.postMessage(how);
      assert.equal(await f.wait(), true);
      assert.deepEqual(order, ['callback']);
      assert.equal(f.error?.code ?? null, how === 'error' ? 'ENOSPC' : null);
      assert.equal(f.error?.op ?? 'fence', 'fence');
      await worker.terminate();
    }
  });
});

test('signal() on an imported fence is EPERM', async () => {
  await fdNeutral(async () => {
    const { worker, fd, fence: f } = await workerFence();
    closeSync(fd);
    assert.throws(() => f.signal(), (e) => DmaBufError.is(e, 'EPERM') && /only the thread that created it/.test(e.message));
    assert.equal(f.signaled, false);
    worker.postMessage('signal');
    await f.wait();
    assert.throws(() => f.signal(), (e) => DmaBufError.is(e, 'EPERM'), 'also once signalled');
    await worker.terminate();
  });
});

test('a worker thread that ends without signalling: its imported fences signal with EPIPE', async () => {
  await fdNeutral(async () => {
    const { worker, fd: fenceFd, fence: f } = await workerFence();
    worker.postMessage('end');
    await once(worker, 'exit');
    assert.equal(await f.wait({ timeout: 10_000 }), true);
    assert.equal(f.error?.code, 'EPIPE');
    assert.match(f.error!.message, /ended without signalling/);
    // A later import of the same file says the same.
    const again = await DmaFence.fromFd(fenceFd);
    assert.equal(again.error?.code, 'EPIPE');
    closeSync(fenceFd);
  });
});

test('a wait on an imported fence keeps the event loop alive until the fence signals', async () => {
  const r = await runChild(`
    const { Worker } = await import('node:worker_threads');
    const w = new Worker(\`
      const { DmaFence } = await import(${JSON.stringify(JSON.stringify(INDEX_URL)).slice(1, -1)});
      const { parentPort } = await import('node:worker_threads');
      const f = new DmaFence();
      parentPort.postMessage(f.toFd());
      parentPort.once('message', () => setTimeout(() => f.signal(), 50));
    \`, { eval: true });
    w.unref();
    const fd = await new Promise((r) => w.once('message', r));
    const f = await m.DmaFence.fromFd(fd);
    w.postMessage('go');
    // Nothing else holds the loop: the wait must.
    const ok = await f.wait();
    out({ ok, code: f.error?.code ?? null });
  `);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json[0], { ok: true, code: null });
});

test('fromFd() refuses what is not a fence file: EBADF for a closed or bad descriptor, EINVAL for other files', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'dmabuf-sync-'));
  try {
    await fdNeutral(async () => {
      const regular = path.join(dir, 'file');
      writeFileSync(regular, 'x');
      const fifo = path.join(dir, 'fifo');
      execFileSync('mkfifo', [fifo]);
      const c = native.constants;
      const [s1, s2] = native.socketpair(c.SOCK_SEQPACKET, false);
      const [r1, w1] = syncNative.pipe();
      const [r2, w2] = syncNative.pipe();
      syncNative.write(w2, new Uint8Array(1000)); // a count no fence writes
      const files = { regular: openSync(regular, 'r'), fifo: openSync(fifo, 'r+'), socket: s1, writeEnd: w1, garbage: r2 };
      try {
        const closed = openSync(regular, 'r');
        closeSync(closed);
        assert.equal((await rejection(DmaFence.fromFd(closed))).code, 'EBADF');
        for (const bad of [-1, 1.5, 2 ** 31, '3']) {
          assert.equal((await rejection(DmaFence.fromFd(bad as never))).code, 'EBADF');
        }
        const why: Record<string, string> = {};
        for (const [what, fd] of Object.entries(files)) {
          const e = await rejection(DmaFence.fromFd(fd));
          assert.equal(e.code, 'EINVAL', what);
          why[what] = e.message.replace(/^.*is not a fence file: /, '').replace(/; pass.*$/, '');
        }
        assert.deepEqual(why, {
          regular: 'it is not a pipe',
          fifo: 'it is a named FIFO, not an anonymous pipe',
          socket: 'it is not a pipe',
          writeEnd: 'it is the write end of a pipe',
          garbage: 'the pipe holds 1000 bytes, a count no fence writes',
        });
        assert.equal((await rejection(DmaFence.fromFd(r1, 5 as never))).code, 'EINVAL');
      } finally {
        for (const fd of [files.regular, files.fifo, s1, s2, r1, w1, r2, w2]) closeSync(fd);
      }
    });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a hostile holder of a fence file can neither signal it early nor turn an error into success', async () => {
  await fdNeutral(async () => {
    const f = new DmaFence({ name: 'guarded' });
    const honest = f.toFd();
    const hostile = f.toFd();
    const watcher = f.toFd();
    // Before the signal: reading finds nothing, closing its copy changes nothing.
    assert.throws(() => readSync(hostile, Buffer.alloc(512)), /EAGAIN/);
    closeSync(hostile);
    assert.equal(native.pollNow(honest, native.constants.POLLIN), 0, 'nothing to read, no hang-up: not signalled');
    // After the signal: a hostile read of any size takes the whole packet; later observers
    // see EPIPE (once the signaller's end has closed), never success.
    f.signal(new DmaBufError('EIO', 'failed'));
    const early = await DmaFence.fromFd(watcher);
    assert.equal(early.error?.code, 'EIO', 'an observer before the attack sees the truth');
    const taken = readSync(honest, Buffer.alloc(1));
    assert.equal(taken, 1);
    const late = await DmaFence.fromFd(honest);
    assert.equal(await late.wait({ timeout: 10_000 }), true);
    assert.equal(late.error?.code, 'EPIPE');
    closeSync(honest);
    closeSync(watcher);
  });
});

test('timeline and merged fences cross as fence files; a merged fence file is written by the merging thread', async () => {
  await fdNeutral(async () => {
    const tl = new DmaFenceTimeline('tl');
    const f1 = tl.create(1);
    const f2 = tl.create(2);
    const fd1 = f1.toFd();
    const w = new Worker(`
      const { DmaFence } = await import(${JSON.stringify(INDEX_URL)});
      const { parentPort, workerData } = await import('node:worker_threads');
      const f = await DmaFence.fromFd(workerData.fd);
      const m = DmaFence.merge([f]);
      parentPort.postMessage(m.toFd());
      await f.wait();
      parentPort.postMessage(f.error?.code ?? null);
      await new Promise((r) => parentPort.once('message', r));
    `, { eval: true, workerData: { fd: fd1 } });
    const [mergedFd] = (await once(w, 'message')) as [number];
    const merged = await DmaFence.fromFd(mergedFd);
    closeSync(mergedFd);
    f2.signal(); // signals 1 first
    assert.deepEqual(await once(w, 'message'), [null]);
    assert.equal(await merged.wait(), true);
    assert.equal(merged.error, undefined);
    w.postMessage('end');
    await once(w, 'exit');
    closeSync(fd1);
  });
});

test('a fence dropped without being signalled closes its fence file: holders see EPIPE', async () => {
  const r = await runChild(`
    const fd = (() => new m.DmaFence({ name: 'dropped' }).toFd())();
    const hup = () => (native.pollNow(fd, native.constants.POLLIN) & native.constants.POLLHUP) !== 0;
    for (let i = 0; i < 200 && !hup(); i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 5)); }
    const g = await m.DmaFence.fromFd(fd);
    out({ signaled: g.signaled, code: g.error?.code ?? null });
  `, [], { nodeArgs: ['--expose-gc'] });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json[0], { signaled: true, code: 'EPIPE' });
});

test('many fence files: descriptors come back to their count, also after failures', async () => {
  const start = openFdCount();
  const fences = Array.from({ length: 50 }, (_, i) => new DmaFence({ name: `f${i}` }));
  const fds = fences.map((f) => f.toFd());
  assert.equal(openFdCount(), start + 50 * 3, 'each unsignalled exported fence: its two ends, plus the caller\'s copy');
  for (const f of fences) f.signal();
  await waitFor(() => openFdCount() === start + 50, 5000, 'signalling to close both ends (a millisecond later)');
  for (const fd of fds) closeSync(fd);
  assert.equal(openFdCount(), start);
  await rejection(DmaFence.fromFd(0x7ffffff0));
  assert.equal(openFdCount(), start);
});
