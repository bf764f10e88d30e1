/**
 * Fences of kernel dma-bufs: sync_files exported while a vgem write fence is pending and
 * imported into another buffer, waited for without blocking the event loop; kernel sync_files
 * as DmaFences, merged with this package's; a kernel dma-buf's reservation object
 * (`buf.resv`, `buf.exportSyncFile`, `buf.importSyncFile`). Runs inside the kernel VM; skips
 * elsewhere, saying why.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { DmaBuf, DmaBufError, DmaFence, SyncFile, dmaHeap, exportSyncFile, importSyncFile } from '../../../src/index.js';
import { Vgem, vgemCard } from './vgem.js';
import { needsAll, needsDmaHeap, needsVgem } from './needs.js';

/** Whether `p` is still pending after the event loop has turned for `ms`. */
async function pending(p: Promise<unknown>, ms = 50): Promise<boolean> {
  let settled = false;
  p.then(() => { settled = true; }, () => { settled = true; });
  await sleep(ms);
  return !settled;
}

/** A vgem buffer with an unsignalled write fence, imported. */
async function fencedVgemBuffer(vgem: Vgem): Promise<{ buf: DmaBuf; fence: number; handle: number }> {
  const { handle } = vgem.createDumb(32, 32);
  const fence = vgem.attachWriteFence(handle);
  const fd = vgem.exportDmaBuf(handle);
  const buf = await DmaBuf.get(fd);
  closeSync(fd);
  return { buf, fence, handle };
}

test('exportSyncFile while a vgem write fence is pending: active, then signalled after VGEM_FENCE_SIGNAL', { skip: needsVgem() }, async () => {
  const vgem = new Vgem(vgemCard()!);
  const { buf, fence, handle } = await fencedVgemBuffer(vgem);
  using reader = exportSyncFile(buf, 'read');
  assert.equal(reader.status, 'active');
  assert.equal(reader.info().fences, 1);
  await assert.rejects(reader.wait({ timeout: 20 }), (e: unknown) => DmaBufError.is(e, 'ETIMEDOUT'));
  await assert.rejects(reader.wait({ signal: AbortSignal.abort() }), (e: unknown) => DmaBufError.is(e, 'EINTR'));
  const waited = reader.wait();
  assert.equal(await pending(waited), true, 'the wait does not end before the fence signals, and the event loop keeps turning');
  vgem.signal(fence);
  await waited;
  assert.equal(reader.status, 'signaled');
  // A descriptor of the same sync_file, taken by another holder.
  const again = SyncFile.fromFd(reader.fd);
  assert.equal(again.status, 'signaled');
  again.close();
  assert.throws(() => again.info(), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  assert.throws(() => SyncFile.fromFd(0), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  buf.put();
  vgem.closeHandle(handle);
  vgem.close();
});

test('importSyncFile as a write fence: a reader\'s beginCpuAccess waits for it, then proceeds', { skip: needsAll(needsVgem(), needsDmaHeap()) }, async () => {
  const vgem = new Vgem(vgemCard()!);
  const { buf: producer, fence, handle } = await fencedVgemBuffer(vgem);
  const target = dmaHeap('system').allocate(4096);
  using done = exportSyncFile(producer, 'read');
  importSyncFile(target, done, 'write');
  using targetFences = exportSyncFile(target, 'read');
  assert.equal(targetFences.status, 'active', 'readers of the target now wait for the producer');
  const reading = target.beginCpuAccess('read');
  assert.equal(await pending(reading, 100), true, 'CPU read access waits for the imported write fence');
  const aborted = new AbortController();
  const second = target.beginCpuAccess('write', { signal: aborted.signal });
  aborted.abort();
  await assert.rejects(second, (e: unknown) => DmaBufError.is(e, 'EINTR'));
  vgem.signal(fence);
  await reading;
  await target.endCpuAccess('read');
  assert.equal(targetFences.status, 'signaled');
  assert.throws(() => importSyncFile(target, done, 'sideways' as never), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  target.put();
  producer.put();
  vgem.closeHandle(handle);
  vgem.close();
});

const kind = (fd: number): string => readlinkSync(`/proc/self/fd/${fd}`);

test('a kernel sync_file is a DmaFence: buf.exportSyncFile of a vgem buffer, merged with a fence of this package, signals after both', { skip: needsVgem() }, async () => {
  const vgem = new Vgem(vgemCard()!);
  const { buf, fence, handle } = await fencedVgemBuffer(vgem);
  assert.equal(await buf.resv.test('read'), false, 'the kernel\'s write fence holds readers');
  const fd = await buf.exportSyncFile('read');
  assert.equal(kind(fd), 'anon_inode:sync_file', 'the kernel\'s own sync_file');
  const rendered = await DmaFence.fromFd(fd);
  closeSync(fd);
  assert.equal(rendered.signaled, false);
  const again = rendered.toFd();
  assert.equal(kind(again), 'anon_inode:sync_file', 'its toFd is a sync_file a driver takes');
  closeSync(again);
  const ours = new DmaFence({ name: 'ours' });
  const both = DmaFence.merge([rendered, ours]);
  assert.equal(await pending(both.wait()), true);
  vgem.signal(fence);
  assert.equal(await rendered.wait({ timeout: 10_000 }), true);
  assert.equal(rendered.error, undefined);
  assert.equal(both.signaled, false, 'the merge waits for ours too');
  ours.signal();
  assert.equal(await both.wait({ timeout: 10_000 }), true);
  assert.equal(await buf.resv.wait('write', { timeout: 10_000 }), true);
  buf.put();
  vgem.closeHandle(handle);
  vgem.close();
});

test('a kernel dma-buf\'s buf.resv: a sync_file goes into the kernel, a fence of this package stays in this thread; beginCpuAccess waits for both', { skip: needsAll(needsVgem(), needsDmaHeap()) }, async () => {
  const vgem = new Vgem(vgemCard()!);
  const { buf: producer, fence, handle } = await fencedVgemBuffer(vgem);
  const target = dmaHeap('system').allocate(4096);
  const syncFd = await producer.exportSyncFile('read');
  await target.importSyncFile(syncFd, 'write');
  closeSync(syncFd);
  assert.equal(await target.resv.test('read'), false, 'readers of the target wait for the producer, in the kernel');
  const kernelOnly = await target.exportSyncFile('read');
  assert.equal(kind(kernelOnly), 'anon_inode:sync_file', 'only kernel fences: the kernel\'s sync_file');
  closeSync(kernelOnly);
  const ours = new DmaFence({ name: 'ours' });
  await target.resv.add(ours, 'read');
  const mixed = await target.exportSyncFile('write');
  assert.match(kind(mixed), /^pipe:/, 'a fence of this package too: a fence file of them all');
  closeSync(mixed);
  const writing = target.beginCpuAccess('write');
  assert.equal(await pending(writing, 100), true);
  vgem.signal(fence);
  assert.equal(await pending(writing, 100), true, 'the kernel\'s fence signalled, ours not yet');
  ours.signal();
  await writing;
  await target.endCpuAccess('write');
  target.put();
  producer.put();
  vgem.closeHandle(handle);
  vgem.close();
});
