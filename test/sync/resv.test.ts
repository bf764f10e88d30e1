/**
 * DmaResv: usages, pruning, replacement by later fences of a timeline, waits, snapshots and
 * fences imported from fence files.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { DMA_RESV_USAGES, DmaBufError, DmaFence, DmaFenceTimeline, DmaResv, type DmaResvUsage, type Reservation } from '../../src/index.js';
import { INDEX_URL } from '../helpers.js';
import { fdNeutral, checkDescriptorsAfterEach } from './agent.js';

checkDescriptorsAfterEach();

const names = (fs: DmaFence[]): string[] => fs.map((f) => f.name);

/** A reservation object with one fence of each usage, named after it. */
function oneOfEach(): { resv: DmaResv; fence: Record<DmaResvUsage, DmaFence> } {
  const resv = new DmaResv();
  const fence = {} as Record<DmaResvUsage, DmaFence>;
  for (const u of DMA_RESV_USAGES) {
    fence[u] = new DmaFence({ name: u });
    resv.add(fence[u], u);
  }
  return { resv, fence };
}

test('DmaResv.fences() follows the kernel: a reader respects kernel and write fences, a writer read fences too, bookkeep all', () => {
  const { resv } = oneOfEach();
  assert.deepEqual(names(resv.fences('kernel')), ['kernel']);
  assert.deepEqual(names(resv.fences('read')), ['kernel', 'write']);
  assert.deepEqual(names(resv.fences('write')), ['kernel', 'write', 'read']);
  assert.deepEqual(names(resv.fences('bookkeep')), ['kernel', 'write', 'read', 'bookkeep']);
  for (const u of DMA_RESV_USAGES) assert.equal(resv.test(u), false);
});

test('DmaResv prunes signalled fences; test() turns true once what a user respects has signalled', () => {
  const { resv, fence } = oneOfEach();
  fence.write.signal();
  fence.kernel.signal();
  assert.deepEqual(names(resv.fences('bookkeep')), ['read', 'bookkeep']);
  assert.equal(resv.test('read'), true, 'a reader has nothing left to wait for');
  assert.equal(resv.test('write'), false);
  fence.read.signal(new DmaBufError('EIO', 'a failed read still signals'));
  assert.equal(resv.test('write'), true);
  assert.equal(resv.test('bookkeep'), false);
  const done = new DmaFence();
  done.signal();
  resv.add(done, 'kernel');
  assert.equal(resv.test('kernel'), true, 'a signalled fence is not even added');
});

test('DmaResv.add() replaces an older fence of the same timeline, unless fewer users would respect the new one', () => {
  const tl = new DmaFenceTimeline('gpu');
  const resv = new DmaResv();
  const [f1, f2, f3, f4] = [1, 2, 3, 4].map((s) => tl.create(s, { name: `f${s}` }));
  resv.add(f1!, 'read');
  resv.add(f2!, 'write'); // respected by more users: replaces f1
  assert.deepEqual(names(resv.fences('bookkeep')), ['f2']);
  resv.add(f3!, 'bookkeep'); // respected by fewer users: f2 stays
  assert.deepEqual(names(resv.fences('bookkeep')), ['f2', 'f3']);
  resv.add(f4!, 'write'); // replaces f2 (first match)
  assert.deepEqual(names(resv.fences('bookkeep')), ['f4', 'f3']);
  const other = new DmaFenceTimeline('copy engine');
  const older = other.create(5, { name: 'c5' });
  const newer = other.create(6, { name: 'c6' });
  resv.add(newer, 'kernel');
  resv.add(older, 'kernel'); // older than c6 on its timeline: appended, not a replacement
  assert.deepEqual(names(resv.fences('kernel')), ['c6', 'c5']);
});

test('DmaResv: the same fence added twice keeps its strongest usage and is listed once', () => {
  const resv = new DmaResv();
  const f = new DmaFence({ name: 'f' });
  resv.add(f, 'write');
  resv.add(f, 'bookkeep');
  assert.deepEqual(names(resv.fences('read')), ['f']);
  assert.deepEqual(names(resv.fences('bookkeep')), ['f']);
  const g = new DmaFence({ name: 'g' });
  resv.add(g, 'read');
  assert.deepEqual(names(resv.fences('read')), ['f']);
  resv.add(g, 'kernel');
  assert.deepEqual(names(resv.fences('kernel')), ['g']);
});

test('DmaResv.wait() resolves once what the user respects has signalled, including fences added while it waits', async () => {
  const resv = new DmaResv();
  const w1 = new DmaFence({ name: 'w1' });
  const r1 = new DmaFence({ name: 'r1' });
  resv.add(w1, 'write');
  resv.add(r1, 'read');
  assert.equal(await resv.wait('read', { timeout: 0 }), false);
  assert.equal(await resv.wait('read', { timeout: 10 }), false);
  const reader = resv.wait('read');
  const writer = resv.wait('write');
  let writerDone = false;
  void writer.then(() => { writerDone = true; });
  const w2 = new DmaFence({ name: 'w2' });
  resv.add(w2, 'write');
  w1.signal();
  await new Promise((r) => setTimeout(r, 5));
  w2.signal();
  assert.equal(await reader, true);
  assert.equal(writerDone, false, 'the writer still waits for r1');
  r1.signal();
  assert.equal(await writer, true);
  assert.equal(await resv.wait('bookkeep', { timeout: 0 }), true);
});

test('DmaResv.wait() rejects with EINTR when its signal aborts, and bad arguments with EINVAL', async () => {
  const resv = new DmaResv();
  resv.add(new DmaFence(), 'kernel');
  const ac = new AbortController();
  const waiting = resv.wait('kernel', { signal: ac.signal });
  ac.abort();
  await assert.rejects(waiting, (e) => DmaBufError.is(e, 'EINTR'));
  await assert.rejects(resv.wait('sideways' as never), (e) => DmaBufError.is(e, 'EINVAL'));
  await assert.rejects(resv.wait('read', { timeout: -5 }), (e) => DmaBufError.is(e, 'EINVAL'));
});

test('DmaResv.exportFence() is a snapshot: one fence as itself, several merged, none signalled; later fences do not join', async () => {
  const resv = new DmaResv();
  const none = resv.exportFence('write');
  assert.equal(none.signaled, true);
  const w = new DmaFence({ name: 'w' });
  resv.add(w, 'write');
  assert.equal(resv.exportFence('read'), w);
  const r = new DmaFence({ name: 'r' });
  resv.add(r, 'read');
  const forReader = resv.exportFence('read');
  const forWriter = resv.exportFence('write');
  const late = new DmaFence({ name: 'late' });
  resv.add(late, 'write');
  w.signal();
  assert.equal(forReader.signaled, true, 'the reader waited for w only');
  assert.equal(forWriter.signaled, false);
  r.signal(new DmaBufError('EIO', 'reader crashed'));
  assert.equal(forWriter.signaled, true, 'late is not part of the snapshot');
  assert.equal(forWriter.error?.code, 'EIO');
  assert.equal(resv.test('read'), false, 'late still counts for the object itself');
});

test('DmaResv.addFd() adds the fence of a fence file from a worker; a bad usage is refused before anything is imported', async () => {
  await fdNeutral(async () => {
    const worker = new Worker(`
      const { DmaFence } = await import(${JSON.stringify(INDEX_URL)});
      const { parentPort } = await import('node:worker_threads');
      const f = new DmaFence({ name: 'from worker' });
      parentPort.postMessage(f.toFd());
      parentPort.once('message', () => f.signal());
    `, { eval: true });
    const [fd] = (await once(worker, 'message')) as [number];
    const resv: Reservation = new DmaResv();
    await assert.rejects(resv.addFd(fd, 'nope' as never), (e) => DmaBufError.is(e, 'EINVAL'));
    const f = await resv.addFd(fd, 'write');
    closeSync(fd);
    assert.equal(await resv.test('read'), false);
    assert.deepEqual(await resv.fences('read'), [f]);
    worker.postMessage('signal');
    assert.equal(await resv.wait('read', { timeout: 10_000 }), true);
    assert.equal(await resv.test('bookkeep'), true);
    await worker.terminate();
  });
});

test('DmaResv refuses unknown usages and what is not a fence with EINVAL', () => {
  const resv = new DmaResv();
  for (const call of [
    () => resv.add(new DmaFence(), 'shared' as never),
    () => resv.add({} as never, 'read'),
    () => resv.fences('exclusive' as never),
    () => resv.test(undefined as never),
    () => resv.exportFence('toString' as never),
  ]) {
    assert.throws(call, (e) => DmaBufError.is(e, 'EINVAL'));
  }
});
