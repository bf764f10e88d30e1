/**
 * DmaFence in one thread: signalling once, callbacks, waits, errors and merges.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { DmaBufError, DmaFence } from '../../src/index.js';
import { reapChildren, runChild } from '../helpers.js';
import { checkDescriptorsAfterEach } from './agent.js';

checkDescriptorsAfterEach();

after(reapChildren);

/** The error `fn` throws (or the promise rejects with), which must be a DmaBufError. */
async function failure(fn: () => unknown): Promise<DmaBufError> {
  try {
    await fn();
  } catch (err) {
    assert.ok(err instanceof DmaBufError, `a DmaBufError, not ${String(err)}`);
    return err;
  }
  assert.fail('expected a failure');
}

test('DmaFence.signal() returns true the first time and false afterwards; the fence keeps its first outcome', () => {
  const f = new DmaFence({ name: 'once' });
  assert.equal(f.name, 'once');
  assert.equal(f.signaled, false);
  assert.equal(f.error, undefined);
  assert.equal(f.signal(), true);
  assert.equal(f.signaled, true);
  assert.equal(f.signal(new DmaBufError('EIO', 'too late')), false);
  assert.equal(f.signal(), false);
  assert.equal(f.error, undefined, 'still signalled without an error');

  const g = new DmaFence();
  assert.equal(g.signal(new DmaBufError('ENOSPC', 'first')), true);
  assert.equal(g.signal(), false);
  assert.equal(g.error?.code, 'ENOSPC');
  assert.equal(g.error?.message, 'first');
});

test('DmaFence.signal(error) keeps a DmaBufError as it is and wraps any other Error (its errno code, else EIO)', () => {
  const own = new DmaBufError('EBUSY', 'busy');
  const a = new DmaFence();
  a.signal(own);
  assert.equal(a.error, own);

  const sys = Object.assign(new Error('no space left'), { code: 'ENOSPC' });
  const b = new DmaFence({ name: 'b' });
  b.signal(sys);
  assert.ok(b.error instanceof DmaBufError);
  assert.equal(b.error.code, 'ENOSPC');
  assert.equal(b.error.cause, sys);
  assert.match(b.error.message, /fence "b".*no space left/);

  const plain = new TypeError('bad frame');
  const c = new DmaFence();
  c.signal(plain);
  assert.equal(c.error?.code, 'EIO');
  assert.equal(c.error?.cause, plain);
});

test('DmaFence.signal() refuses an error that is not an Error with EINVAL, and the fence stays unsignalled', async () => {
  const f = new DmaFence();
  for (const bad of ['EIO', 5, null, { code: 'EIO' }]) {
    const e = await failure(() => f.signal(bad as unknown as Error));
    assert.equal(e.code, 'EINVAL');
  }
  assert.equal(f.signaled, false);
});

test('new DmaFence() refuses bad options with EINVAL', async () => {
  for (const bad of [null, 5, { name: 5 }, { name: 'x'.repeat(256) }]) {
    assert.equal((await failure(() => new DmaFence(bad as never))).code, 'EINVAL');
  }
  assert.equal(new DmaFence().name, 'fence');
});

test('DmaFence.addCallback() calls each callback once, in the order added, with the fence', () => {
  const f = new DmaFence();
  const calls: string[] = [];
  assert.equal(f.addCallback((x) => { assert.equal(x, f); calls.push('a'); }), true);
  assert.equal(f.addCallback(() => calls.push('b')), true);
  f.signal();
  f.signal();
  assert.deepEqual(calls, ['a', 'b']);
});

test('DmaFence.addCallback() on a signalled fence returns false and never calls fn', async () => {
  const f = new DmaFence();
  f.signal();
  let called = false;
  assert.equal(f.addCallback(() => { called = true; }), false);
  await new Promise((r) => setImmediate(r));
  assert.equal(called, false);
  assert.equal((await failure(() => f.addCallback('no' as never))).code, 'EINVAL');
});

test('DmaFence.removeCallback() returns whether fn was still pending; a removed callback is not called', async () => {
  const f = new DmaFence();
  const calls: string[] = [];
  const a = (): void => { calls.push('a'); };
  const b = (): void => { calls.push('b'); };
  f.addCallback(a);
  f.addCallback(b);
  f.addCallback(a);
  assert.equal(f.removeCallback(a), true, 'one registration of a');
  assert.equal(f.removeCallback(() => {}), false);
  f.signal();
  assert.deepEqual(calls, ['b', 'a']);
  assert.equal(f.removeCallback(b), false, 'nothing is pending once signalled');
  assert.equal((await failure(() => f.removeCallback(undefined as never))).code, 'EINVAL');
});

test('a callback that throws does not stop the others; its exception is rethrown as uncaught', async () => {
  const r = await runChild(`
    const errors = [];
    process.on('uncaughtException', (e) => errors.push(e.message));
    const f = new m.DmaFence();
    const calls = [];
    f.addCallback(() => { calls.push(1); throw new Error('boom'); });
    f.addCallback(() => calls.push(2));
    const first = f.signal();
    await new Promise((r) => setTimeout(r, 10));
    out({ first, calls, errors, signaled: f.signaled });
  `);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json[0], { first: true, calls: [1, 2], errors: ['boom'], signaled: true });
});

test('DmaFence.wait() with timeout 0 only tests', async () => {
  const f = new DmaFence();
  assert.equal(await f.wait({ timeout: 0 }), false);
  f.signal();
  assert.equal(await f.wait({ timeout: 0 }), true);
});

test('DmaFence.wait() resolves false when the timeout runs out first, and true when the fence signals first', async () => {
  const f = new DmaFence();
  assert.equal(await f.wait({ timeout: 20 }), false);
  assert.equal(f.signaled, false);
  const waiting = f.wait({ timeout: 60_000 });
  setTimeout(() => f.signal(new DmaBufError('EIO', 'failed')), 5);
  assert.equal(await waiting, true, 'signalled with an error still resolves true');
  assert.equal(f.error?.code, 'EIO');
});

test('DmaFence.wait() with an aborted signal rejects with EINTR, also when it aborts during the wait', async () => {
  const f = new DmaFence();
  const ac = new AbortController();
  ac.abort(new Error('stop'));
  const early = await failure(() => f.wait({ signal: ac.signal }));
  assert.equal(early.code, 'EINTR');

  const later = new AbortController();
  const waiting = f.wait({ signal: later.signal });
  setTimeout(() => later.abort('enough'), 5);
  const e = await failure(() => waiting);
  assert.equal(e.code, 'EINTR');
  assert.equal(e.cause, 'enough');
  assert.equal(f.signaled, false);
  f.signal();
  assert.equal(await f.wait({ signal: ac.signal }), true, 'a signalled fence answers true even with an aborted signal');
});

test('DmaFence.wait() rejects bad options with EINVAL', async () => {
  const f = new DmaFence();
  for (const bad of [{ timeout: -1 }, { timeout: NaN }, { timeout: '5' }, { signal: {} }, 7]) {
    assert.equal((await failure(() => f.wait(bad as never))).code, 'EINVAL');
  }
});

test('DmaFence.merge() signals once all its fences have, with the first error in list order', async () => {
  const a = new DmaFence({ name: 'a' });
  const b = new DmaFence({ name: 'b' });
  const c = new DmaFence({ name: 'c' });
  const m = DmaFence.merge([a, b, c], { name: 'abc' });
  assert.equal(m.name, 'abc');
  const order: string[] = [];
  m.addCallback(() => order.push('merged'));
  c.signal(new DmaBufError('ETIMEDOUT', 'c timed out'));
  a.signal();
  assert.equal(m.signaled, false);
  b.signal(new DmaBufError('EIO', 'b failed'));
  assert.equal(m.signaled, true);
  assert.deepEqual(order, ['merged']);
  assert.equal(m.error?.code, 'EIO', 'b comes before c in the list, though c failed first');
  assert.equal(await m.wait({ timeout: 0 }), true);
});

test('DmaFence.merge([]) is already signalled; a merge of signalled fences too; duplicates count once', () => {
  const empty = DmaFence.merge([]);
  assert.equal(empty.signaled, true);
  assert.equal(empty.error, undefined);

  const done = new DmaFence();
  done.signal(new DmaBufError('EPIPE', 'gone'));
  const m = DmaFence.merge([done, done]);
  assert.equal(m.signaled, true);
  assert.equal(m.error?.code, 'EPIPE');

  const x = new DmaFence();
  const twice = DmaFence.merge([x, x]);
  x.signal();
  assert.equal(twice.signaled, true);
});

test('DmaFence.merge() of merges signals when the innermost fences have', () => {
  const fs = Array.from({ length: 4 }, () => new DmaFence());
  const outer = DmaFence.merge([DmaFence.merge(fs.slice(0, 2)), DmaFence.merge(fs.slice(2)), fs[0]!]);
  for (const f of fs.slice(0, 3)) f.signal();
  assert.equal(outer.signaled, false);
  fs[3]!.signal();
  assert.equal(outer.signaled, true);
});

test('DmaFence.merge() refuses what is not an array of fences with EINVAL; signal() on a merged fence is EPERM', async () => {
  for (const bad of [undefined, 'a', [new DmaFence(), {}]]) {
    assert.equal((await failure(() => DmaFence.merge(bad as never))).code, 'EINVAL');
  }
  const m = DmaFence.merge([new DmaFence()]);
  const e = await failure(() => m.signal());
  assert.equal(e.code, 'EPERM');
  assert.equal(m.signaled, false);
});
