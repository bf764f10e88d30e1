/**
 * A buffer's reservation object, CPU access and sync files in the exporter's own thread
 * (issue 9, phase 2): what `beginCpuAccess` waits for, the exporter's ops and their range,
 * timeouts and aborts, sync-file snapshots and imports, and the arguments refused.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { DmaBuf, DmaBufError, DmaFence, DmaResv, systemHeap, type CpuAccess } from '../../src/index.js';
import { recordingExport } from '../helpers.js';
import { checkDescriptorsAfterEach } from '../sync/agent.js';

checkDescriptorsAfterEach();

/** Whether `p` is still pending after the event loop has turned a few times. */
async function pending(p: Promise<unknown>, ms = 20): Promise<boolean> {
  let settled = false;
  p.then(() => { settled = true; }, () => { settled = true; });
  await sleep(ms);
  return !settled;
}

const is = (code: string, pattern?: RegExp) => (e: unknown): boolean => DmaBufError.is(e, code) && (!pattern || pattern.test((e as Error).message));

test('buf.resv is the buffer\'s one DmaResv in the exporter\'s thread, the same after get(); an exporter may share one between buffers', async () => {
  using buf = systemHeap.allocate(4096, { name: 'resv' });
  assert.ok(buf.resv instanceof DmaResv);
  assert.equal(buf.resv, buf.resv);
  const fd = buf.fd();
  const again = await DmaBuf.get(fd);
  closeSync(fd);
  assert.equal(again.resv, buf.resv);
  again.put();
  const shared = new DmaResv();
  const a = recordingExport(4096, {}, 'a');
  const b = DmaBuf.export({ ops: a.buf.ops, size: 4096, priv: a.log, resv: shared });
  assert.equal(b.resv, shared);
  assert.throws(() => DmaBuf.export({ ops: a.buf.ops, size: 4096, priv: a.log, resv: {} as DmaResv }), is('EINVAL', /resv must be a reservation object/));
  a.buf.put();
  b.put();
});

test('beginCpuAccess: a reader waits for write fences only, a writer for read fences too; endCpuAccess waits for nothing', async () => {
  using buf = systemHeap.allocate(4096);
  const reading = new DmaFence({ name: 'reading' });
  buf.resv.add(reading, 'read');
  await buf.beginCpuAccess('read');
  await buf.endCpuAccess('read');
  for (const access of ['write', 'read-write'] as CpuAccess[]) {
    assert.equal(await pending(buf.beginCpuAccess(access, { timeout: 5000 })), true, `${access} waits for the reader`);
  }
  const writing = buf.beginCpuAccess('write');
  reading.signal();
  await writing;
  await buf.endCpuAccess('write');
  const painting = new DmaFence({ name: 'painting' });
  buf.resv.add(painting, 'write');
  const r = buf.beginCpuAccess('read', { offset: 100, length: 10 });
  assert.equal(await pending(r), true, 'a reader waits for the writer');
  const bookkeeping = new DmaFence({ name: 'bookkeeping' });
  buf.resv.add(bookkeeping, 'bookkeep');
  painting.signal();
  await r;
  await buf.beginCpuAccess('write');
  assert.equal(bookkeeping.signaled, false, 'bookkeeping fences are never waited for implicitly');
  bookkeeping.signal();
});

test('beginCpuAccess with its own fence: added after the fences it waits for, so that later users wait for it; a writer does not wait for itself', async () => {
  using buf = systemHeap.allocate(4096);
  const r1 = new DmaFence({ name: 'r1' });
  buf.resv.add(r1, 'read');
  const w = new DmaFence({ name: 'w' });
  const writing = buf.beginCpuAccess('write', { fence: w });
  assert.equal(await pending(writing), true, 'the writer waits for the reader before it');
  assert.deepEqual(buf.resv.fences('write'), [r1, w], 'its fence is in already');
  const later = buf.beginCpuAccess('read', { fence: new DmaFence({ name: 'r2' }) });
  r1.signal();
  await writing;
  assert.equal(await pending(later), true, 'a reader that came later waits for the writer\'s fence');
  w.signal();
  await later;
  for (const f of await buf.resv.fences('bookkeep')) f.signal();
  await assert.rejects(buf.beginCpuAccess('read', { fence: {} as DmaFence }), is('EINVAL', /fence must be a DmaFence/));
  const stuck = new DmaFence({ name: 'stuck' });
  buf.resv.add(stuck, 'write');
  const mine = new DmaFence({ name: 'mine' });
  await assert.rejects(buf.beginCpuAccess('read', { fence: mine, timeout: 10 }), is('ETIMEDOUT'));
  assert.ok((await buf.resv.fences('write')).includes(mine), 'on a timeout the fence stays added: its owner signals it');
  mine.signal(new DmaBufError('ETIMEDOUT', 'gave up'));
  stuck.signal();
});

test('beginCpuAccess calls the exporter\'s beginCpuAccess with the range before it waits for the fences; endCpuAccess calls endCpuAccess', async () => {
  const order: string[] = [];
  const fence = new DmaFence({ name: 'f' });
  const { buf } = recordingExport(8192, {
    beginCpuAccess: (_b, access, ctx) => { order.push(`begin:${access}:${ctx.offset}+${ctx.length}:${fence.signaled}`); },
    endCpuAccess: (_b, access, ctx) => { order.push(`end:${access}:${ctx.offset}+${ctx.length}`); },
  });
  buf.resv.add(fence, 'write');
  const began = buf.beginCpuAccess('read', { offset: 4096 });
  await sleep(5);
  fence.signal();
  await began;
  await buf.endCpuAccess('read', { offset: 4096 });
  await buf.beginCpuAccess('read-write', { offset: 8, length: 16 });
  await buf.endCpuAccess('read-write', { offset: 8, length: 16 });
  assert.deepEqual(order, ['begin:read:4096+4096:false', 'end:read:4096+4096', 'begin:read-write:8+16:true', 'end:read-write:8+16']);
  buf.put();
});

test('beginCpuAccess: ETIMEDOUT after its timeout and EINTR on abort, also while the exporter\'s op waits; the error of an op keeps its code', async () => {
  using buf = systemHeap.allocate(4096);
  const never = new DmaFence({ name: 'never' });
  buf.resv.add(never, 'write');
  await assert.rejects(buf.beginCpuAccess('read', { timeout: 10 }), is('ETIMEDOUT', /did not signal within 10 ms/));
  await assert.rejects(buf.beginCpuAccess('read', { timeout: 0 }), is('ETIMEDOUT'));
  await assert.rejects(buf.beginCpuAccess('read', { signal: AbortSignal.abort() }), is('EINTR'));
  const controller = new AbortController();
  const waiting = buf.beginCpuAccess('read', { signal: controller.signal, timeout: 60_000 });
  controller.abort();
  await assert.rejects(waiting, is('EINTR'));
  never.signal();

  const { buf: slow } = recordingExport(4096, {
    beginCpuAccess: (_b, _a, ctx) => new Promise<void>((_resolve, reject) => {
      ctx.signal!.addEventListener('abort', () => reject(new DmaBufError('EINTR', 'op interrupted')), { once: true });
    }),
  });
  await assert.rejects(slow.beginCpuAccess('write', { timeout: 10 }), is('ETIMEDOUT'));
  const { buf: failing } = recordingExport(4096, { beginCpuAccess: () => { throw new DmaBufError('EIO', 'cache flush failed'); }, endCpuAccess: () => { throw new Error('plain'); } });
  await assert.rejects(failing.beginCpuAccess('read'), is('EIO', /cache flush failed/));
  await assert.rejects(failing.endCpuAccess('read'), is('EIO', /ops.endCpuAccess failed: plain/));
  slow.put();
  failing.put();
});

test('beginCpuAccess and endCpuAccess refuse a bad access, a range outside the buffer, bad options, and a buffer that was put (EINVAL)', async () => {
  const buf = systemHeap.allocate(4096);
  for (const bad of ['rw', 'READ', undefined, 1]) {
    await assert.rejects(buf.beginCpuAccess(bad as never), is('EINVAL', /access must be/));
    await assert.rejects(buf.endCpuAccess(bad as never), is('EINVAL', /access must be/));
  }
  for (const range of [{ offset: -1 }, { offset: 4096 }, { offset: 1.5 }, { length: 0 }, { offset: 4000, length: 97 }, { length: 2 ** 60 }]) {
    await assert.rejects(buf.beginCpuAccess('read', range), is('EINVAL'), JSON.stringify(range));
    await assert.rejects(buf.endCpuAccess('read', range), is('EINVAL'), JSON.stringify(range));
  }
  await assert.rejects(buf.beginCpuAccess('read', { timeout: -1 }), is('EINVAL', /timeout/));
  await assert.rejects(buf.beginCpuAccess('read', { signal: {} as AbortSignal }), is('EINVAL', /AbortSignal/));
  await assert.rejects(buf.beginCpuAccess('read', 5 as never), is('EINVAL', /options must be an object/));
  buf.put();
  await assert.rejects(buf.beginCpuAccess('read'), is('EINVAL', /has been put/));
  await assert.rejects(buf.endCpuAccess('read'), is('EINVAL', /has been put/));
  await assert.rejects(buf.exportSyncFile('read'), is('EINVAL', /has been put/));
});

test('exportSyncFile snapshots what a reader or a writer must wait for now; fences added later do not join it', async () => {
  using buf = systemHeap.allocate(4096);
  const idle = await buf.exportSyncFile('write');
  const idleFence = await DmaFence.fromFd(idle);
  closeSync(idle);
  assert.equal(idleFence.signaled, true, 'nothing to wait for: a signalled fence file');
  const reading = new DmaFence({ name: 'reading' });
  buf.resv.add(reading, 'read');
  const forReaders = await DmaFence.fromFd(await closing(buf.exportSyncFile('read')));
  const forWriters = await DmaFence.fromFd(await closing(buf.exportSyncFile('write')));
  assert.equal(forReaders.signaled, true, 'readers do not wait for readers');
  assert.equal(forWriters, reading, 'one fence: its own fence file, so the very fence in this thread');
  const later = new DmaFence({ name: 'later' });
  buf.resv.add(later, 'read');
  const both = await DmaFence.fromFd(await closing(buf.exportSyncFile('write')));
  reading.signal();
  assert.equal(forWriters.signaled, true);
  assert.equal(both.signaled, false, 'a snapshot of two fences waits for both');
  later.signal();
  assert.equal(await both.wait({ timeout: 5000 }), true);
  await assert.rejects(buf.exportSyncFile('read-write' as never), is('EINVAL', /'read' or 'write'/));
});

/** The descriptor a promise gives, closed after the next turn (once imported). */
async function closing(p: Promise<number>): Promise<number> {
  const fd = await p;
  setImmediate(() => closeSync(fd));
  return fd;
}

test('importSyncFile: a read fence blocks writers only, a write fence everyone; the caller keeps its descriptor; what is not a fence is refused', async () => {
  using buf = systemHeap.allocate(4096);
  const r = new DmaFence({ name: 'r' });
  const rfd = r.toFd();
  await buf.importSyncFile(rfd, 'read');
  closeSync(rfd);
  assert.equal(buf.resv.test('read'), true);
  assert.equal(buf.resv.test('write'), false);
  const w = new DmaFence({ name: 'w' });
  const wfd = w.toFd();
  await buf.importSyncFile(wfd, 'write');
  closeSync(wfd);
  assert.equal(buf.resv.test('read'), false);
  assert.deepEqual(buf.resv.fences('write'), [r, w]);
  r.signal();
  w.signal();
  assert.equal(buf.resv.test('write'), true);
  const file = openSync('/dev/null', 'r');
  try {
    await assert.rejects(buf.importSyncFile(file, 'read'), is('EINVAL', /not a fence file/));
    await assert.rejects(buf.importSyncFile(file, 'kernel' as never), is('EINVAL', /'read' or 'write'/));
  } finally {
    closeSync(file);
  }
  await assert.rejects(buf.importSyncFile(file, 'read'), is('EBADF'));
});
