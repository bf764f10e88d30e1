/**
 * Fence files across processes, after the kernel's sync_file selftests: export in one process
 * and wait in two others, merges of fences from several processes, signal order, error
 * propagation, and the signaller's death. Fence files travel over SCM_RIGHTS (a
 * BufferChannel per child) and as a child's stdio.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { DmaBufError, DmaFence } from '../../src/index.js';
import { finish, nextLine, reapChildren, startChild } from '../helpers.js';
import { Agent, fdNeutral, checkDescriptorsAfterEach } from './agent.js';

checkDescriptorsAfterEach();

after(reapChildren);

/** What an agent's fence `id` says now. */
async function state(agent: Agent, id: string): Promise<{ signaled: unknown; code: unknown }> {
  const { signaled, code } = await agent.call('state', { id });
  return { signaled, code };
}

/** Runs `fn` with `n` agents, stopping them afterwards whatever happens. */
async function withAgents<T>(n: number, fn: (...agents: Agent[]) => Promise<T>): Promise<T> {
  const agents: Agent[] = [];
  try {
    for (let i = 0; i < n; i++) agents.push(await Agent.start());
    return await fn(...agents);
  } finally {
    for (const a of agents) await a.stop();
  }
}

test('a fence exported by one process and waited for in two others signals in both, with its error code', async () => {
  await fdNeutral(() => withAgents(2, async (producer, consumer) => {
    const consumerFds = (await consumer.call('fds')).fds;
    await producer.call('create', { id: 'frame' });
    const here = await producer.take('frame');
    await consumer.give(here, 'frame'); // a copy of the producer's fence file, relayed
    await consumer.call('watch', { id: 'frame' });
    assert.deepEqual(await state(consumer, 'frame'), { signaled: false, code: null });
    const signaled = consumer.signaled('frame');
    await producer.call('signal', { id: 'frame', code: 'EIO' });
    assert.equal(await here.wait(), true);
    assert.equal(here.error?.code, 'EIO');
    assert.equal((await signaled).code, 'EIO');
    // The consumer's import let go of its descriptor when it signalled.
    assert.equal((await consumer.call('fds')).fds, consumerFds);
  }));
});

test('a merge of fences from two processes signals when both have, with the first error in list order', async () => {
  await fdNeutral(() => withAgents(3, async (a, b, c) => {
    await a.call('create', { id: 'a' });
    await b.call('create', { id: 'b' });
    const fa = await a.take('a');
    const fb = await b.take('b');
    // Merged in two places: here (its fence file is then written by this process), and in c.
    const here = DmaFence.merge([fa, fb], { name: 'a+b' });
    await c.give(fa, 'a');
    await c.give(fb, 'b');
    await c.give(here, 'merged elsewhere');
    await c.call('merge', { id: 'ab', of: ['a', 'b'] });
    await c.call('watch', { id: 'ab' });
    await c.call('watch', { id: 'merged elsewhere' });
    const ab = c.signaled('ab');
    const elsewhere = c.signaled('merged elsewhere');

    await b.call('signal', { id: 'b', code: 'EIO' });
    assert.equal(await fb.wait(), true);
    assert.equal(here.signaled, false);
    assert.deepEqual(await state(c, 'ab'), { signaled: false, code: null });

    await a.call('signal', { id: 'a', code: 'ENOSPC' });
    assert.equal(await here.wait(), true);
    assert.equal(here.error?.code, 'ENOSPC', 'a comes first in the list, though b failed first');
    assert.equal((await ab).code, 'ENOSPC');
    assert.equal((await elsewhere).code, 'ENOSPC');
  }));
});

test('a timeline in one process, watched in another: a fence seen signalled implies every lower seqno is', async () => {
  await fdNeutral(() => withAgents(2, async (producer, consumer) => {
    await producer.call('timeline', { id: 'ring' });
    const ids = ['s1', 's2', 's3', 's4'];
    for (const [i, id] of ids.entries()) await producer.call('at', { id, timeline: 'ring', seqno: i + 1 });
    for (const id of [...ids].reverse()) await consumer.give(await producer.take(id), id);
    for (const id of ids) await consumer.call('watch', { id });
    const events = ids.map((id) => consumer.signaled(id));
    await producer.call('signal', { id: 's3' });
    for (const [i, event] of events.slice(0, 3).entries()) {
      const e = await event;
      assert.equal(e.code, null);
      for (const lower of ids.slice(0, i)) assert.equal((e.others as Record<string, boolean>)[lower], true, `${lower} is signalled when ${ids[i]} is`);
    }
    assert.deepEqual(await state(consumer, 's4'), { signaled: false, code: null });
    await producer.call('signal', { id: 's4' });
    assert.equal((await events[3]!).code, null);
  }));
});

test('a signaller killed with SIGKILL: its waiters in this process and in a third one get EPIPE within a second', async () => {
  await fdNeutral(() => withAgents(2, async (signaller, waiter) => {
    await signaller.call('create', { id: 'doomed' });
    const here = await signaller.take('doomed');
    await waiter.give(here, 'doomed');
    await waiter.call('watch', { id: 'doomed' });
    const seen = waiter.signaled('doomed');
    const waiting = here.wait();
    const killedAt = process.hrtime.bigint();
    signaller.child.kill('SIGKILL');
    assert.equal(await waiting, true);
    const hereMs = Number(process.hrtime.bigint() - killedAt) / 1e6;
    assert.equal(here.error?.code, 'EPIPE');
    const event = await seen;
    assert.equal(event.code, 'EPIPE');
    const thereMs = Number(BigInt(event.at as string) - killedAt) / 1e6; // CLOCK_MONOTONIC in both
    assert.ok(hereMs < 1000, `this process saw EPIPE after ${hereMs} ms`);
    assert.ok(thereMs < 1000, `the third process saw EPIPE after ${thereMs} ms`);
  }));
});

test('a fence file given to a child as stdio (fd 3) works there, and the child cannot signal it (EPERM)', async () => {
  await fdNeutral(async () => {
    const f = new DmaFence({ name: 'inherited' });
    const fd = f.toFd();
    const child = startChild(`
      const f = await m.DmaFence.fromFd(3);
      let eperm = false;
      try { f.signal(); } catch (e) { eperm = e.code === 'EPERM'; }
      out({ ready: true, eperm });
      await f.wait();
      out({ code: f.error?.code ?? null });
    `, [fd]);
    closeSync(fd);
    const ready = await nextLine(child, (l) => l.ready === true);
    assert.equal(ready.eperm, true);
    f.signal(new DmaBufError('ECANCELED', 'the frame was dropped'));
    const r = await finish(child);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.json.at(-1), { code: 'ECANCELED' });
  });
});

test('a process that exits normally without signalling: waiters get EPIPE', async () => {
  await fdNeutral(() => withAgents(1, async (quitter) => {
    await quitter.call('create', { id: 'unfinished' });
    const here = await quitter.take('unfinished');
    await quitter.stop();
    assert.equal(await here.wait({ timeout: 10_000 }), true);
    assert.equal(here.error?.code, 'EPIPE');
  }));
});
