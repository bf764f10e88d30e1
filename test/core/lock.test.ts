import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AsyncLock } from '../../src/core/lock.js';
import { CpuDevice, DmaBufError, systemHeap } from '../../src/index.js';

test('runNow runs a synchronous fn in the call when the lock is free, and frees the lock', async () => {
  const lock = new AsyncLock();
  let ran = false;
  const p = lock.runNow('op', () => {
    assert.equal(lock.held, true, 'held while fn runs');
    ran = true;
    return 7;
  });
  assert.equal(ran, true, 'fn ran before runNow returned');
  assert.equal(lock.held, false, 'and the lock is free again');
  assert.equal(await p, 7);
});

test('runNow waits in line behind a holder, in FIFO order with run', async () => {
  const lock = new AsyncLock();
  const order: string[] = [];
  let open!: () => void;
  const first = lock.run('first', () => new Promise<void>((resolve) => { open = resolve; }).then(() => { order.push('first'); }));
  await Promise.resolve();
  const second = lock.runNow('second', () => { order.push('second'); });
  const third = lock.run('third', () => { order.push('third'); });
  assert.deepEqual(order, [], 'nothing runs while the holder holds the lock');
  open();
  await Promise.all([first, second, third]);
  assert.deepEqual(order, ['first', 'second', 'third']);
  assert.equal(lock.held, false);
});

test('runNow keeps the lock until an asynchronous fn settles, and frees it on a throw or a rejection', async () => {
  const lock = new AsyncLock();
  let finish!: () => void;
  const slow = lock.runNow('slow', () => new Promise<string>((resolve) => { finish = () => resolve('done'); }));
  assert.equal(lock.held, true, 'held while the promise is pending');
  let after = false;
  const next = lock.runNow('next', () => { after = true; });
  assert.equal(after, false, 'the next one waits');
  finish();
  assert.equal(await slow, 'done');
  await next;
  assert.equal(after, true);

  await assert.rejects(lock.runNow('throws', () => { throw new Error('boom'); }), /boom/);
  assert.equal(lock.held, false, 'freed after a synchronous throw');
  await assert.rejects(lock.runNow('rejects', () => Promise.reject(new Error('late'))), /late/);
  assert.equal(lock.held, false, 'freed after a rejection');
});

test('runNow with an aborted signal rejects with EINTR and runs nothing', async () => {
  const lock = new AsyncLock();
  let ran = false;
  await assert.rejects(lock.runNow('op', () => { ran = true; }, AbortSignal.abort()), (e: unknown) => DmaBufError.is(e, 'EINTR'));
  assert.equal(ran, false);
  assert.equal(lock.held, false);
});

test('map, unmap and detach of a system-heap buffer finish in the call when nothing else holds its lock', async () => {
  using buf = systemHeap.allocate(3 * 4096, { name: 'sync-unmap' });
  const att = await buf.attach(new CpuDevice());
  // The first map allocates the storage, asynchronously: it holds the lock meanwhile, and a
  // detach waits for it, then unmaps what it made.
  const first = att.map('bidirectional');
  const detached = att.detach();
  assert.equal(att.detached, false, 'detach waits while a map holds the lock');
  const made = await first;
  await detached;
  assert.equal(att.detached, true);
  assert.equal(made.segments[0]!.view!.byteLength, 0, 'the map that was in flight was unmapped by detach');
  assert.equal(buf.mapCount, 0);

  // The storage exists now: map, unmap and detach each finish before their promise is awaited.
  const again = await buf.attach(new CpuDevice());
  const mapping = again.map('to-device');
  assert.equal(buf.mapCount, 1, 'mapped in the call');
  const sgt = await mapping;
  const view = sgt.segments[0]!.view!;
  const unmapped = again.unmap(sgt);
  assert.equal(view.byteLength, 0, 'the view is detached before the promise is awaited');
  assert.equal(buf.mapCount, 0);
  await unmapped;
  const last = again.detach();
  assert.equal(again.detached, true, 'detached in the call');
  assert.equal(buf.attachments.length, 0);
  await last;
});
