/**
 * DmaFenceTimeline: fences that signal in seqno order.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DmaBufError, DmaFenceTimeline, type DmaFence } from '../../src/index.js';
import { checkDescriptorsAfterEach } from './agent.js';

checkDescriptorsAfterEach();

/** Records the order in which fences signal. */
function recorder(): { order: string[]; watch(f: DmaFence, label: string): DmaFence } {
  const order: string[] = [];
  return {
    order,
    watch(f, label) {
      f.addCallback(() => order.push(label));
      return f;
    },
  };
}

test('signalling fence n of a timeline first signals every lower seqno, in seqno order, then n', () => {
  const tl = new DmaFenceTimeline('ring');
  const r = recorder();
  // Created out of order on purpose.
  const f5 = r.watch(tl.create(5), '5');
  const f2 = r.watch(tl.create(2), '2');
  const f9 = r.watch(tl.create(9), '9');
  const f3 = r.watch(tl.create(3), '3');
  assert.equal(f5.signal(), true);
  assert.deepEqual(r.order, ['2', '3', '5']);
  assert.equal(tl.value, 5);
  assert.equal(f2.signaled && f3.signaled, true);
  assert.equal(f9.signaled, false);
  assert.equal(f2.signal(), false, 'already signalled by the timeline');
});

test('the fence signalled keeps its error; the lower fences the timeline passed signal without one', () => {
  const tl = new DmaFenceTimeline('decoder');
  const a = tl.create(1);
  const b = tl.create(2);
  b.signal(new DmaBufError('EIO', 'frame 2 failed'));
  assert.equal(a.signaled, true);
  assert.equal(a.error, undefined);
  assert.equal(b.error?.code, 'EIO');
});

test('timeline.signal(seqno) signals every fence up to seqno in order, also where no fence has that seqno', () => {
  const tl = new DmaFenceTimeline('sw_sync');
  const r = recorder();
  r.watch(tl.create(1), '1');
  r.watch(tl.create(4), '4');
  r.watch(tl.create(7), '7');
  assert.equal(tl.signal(5), 2);
  assert.deepEqual(r.order, ['1', '4']);
  assert.equal(tl.value, 5);
  assert.equal(tl.signal(3), 0, 'a timeline never goes back');
  assert.equal(tl.value, 5);
  assert.equal(tl.signal(7), 1);
  assert.deepEqual(r.order, ['1', '4', '7']);
});

test('a fence created at or below the timeline value is already signalled', () => {
  const tl = new DmaFenceTimeline('t');
  assert.equal(tl.value, 0);
  assert.equal(tl.create(0).signaled, true);
  tl.signal(10);
  const old = tl.create(10, { name: 'late' });
  assert.equal(old.signaled, true);
  assert.equal(old.name, 'late');
  assert.equal(old.addCallback(() => {}), false);
  assert.equal(tl.create(11).signaled, false);
});

test('fences with the same seqno signal together, in the order they were created', () => {
  const tl = new DmaFenceTimeline('t');
  const r = recorder();
  const a = r.watch(tl.create(3), 'a');
  r.watch(tl.create(3), 'b');
  r.watch(tl.create(2), 'c');
  r.watch(tl.create(3), 'd');
  a.signal();
  assert.deepEqual(r.order, ['c', 'a', 'b', 'd']);
});

test('a callback that signals a later fence of the same timeline keeps the order', () => {
  const tl = new DmaFenceTimeline('t');
  const r = recorder();
  const f1 = r.watch(tl.create(1), '1');
  const f3 = tl.create(3);
  r.watch(tl.create(2), '2');
  f1.addCallback(() => f3.signal());
  r.watch(f3, '3');
  f1.signal();
  assert.deepEqual(r.order, ['1', '2', '3']);
  assert.equal(tl.value, 3);
});

test('DmaFenceTimeline refuses a bad name or seqno with EINVAL', () => {
  assert.throws(() => new DmaFenceTimeline(5 as never), (e) => DmaBufError.is(e, 'EINVAL'));
  const tl = new DmaFenceTimeline('t');
  for (const bad of [-1, 1.5, NaN, Number.MAX_SAFE_INTEGER + 2, '3']) {
    assert.throws(() => tl.create(bad as never), (e) => DmaBufError.is(e, 'EINVAL'));
    assert.throws(() => tl.signal(bad as never), (e) => DmaBufError.is(e, 'EINVAL'));
  }
  assert.throws(() => tl.create(1, { name: 7 } as never), (e) => DmaBufError.is(e, 'EINVAL'));
  assert.equal(tl.name, 't');
});
