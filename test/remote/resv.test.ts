/**
 * A buffer's reservation object across processes (issue 9, phase 2): one object for the
 * exporter and every importer. The export/import cases follow IGT's dmabuf_sync_file tests
 * (export-basic, export-multiwait, import-basic, import-existing), with three processes: this
 * one exports, two agents import. Then usage ordering seen from every process (also as a
 * property against a model), CPU access waiting for a writer in another process, and the
 * hostile cases: a holder adding endless fences, a signaller that dies, an exporter that dies.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { CpuDevice, DMA_RESV_USAGES, DmaBuf, DmaBufError, DmaFence, DEFAULT_SERVICE_LIMITS, setServiceLimits, systemHeap, type DmaResvUsage } from '../../src/index.js';
import { usageFor } from '../../src/remote/limits.js';
import { importedFenceCount } from '../../src/remote/resv-service.js';
import { serviceChannels } from '../../src/remote/service.js';
import { openFdCount, reapChildren, waitFor } from '../helpers.js';
import { fdNeutral, checkDescriptorsAfterEach, type Agent } from '../sync/agent.js';
import { fenceKey, withBufferAgents } from './resv-agent.js';

checkDescriptorsAfterEach();
after(reapChildren);
after(() => setServiceLimits(DEFAULT_SERVICE_LIMITS));

/** Hands `buf` to `agent` (one message; the agent maps it), as its buffer `id`. */
async function give(agent: Agent, buf: DmaBuf, id = 'buf'): Promise<void> {
  await Promise.all([agent.channel.send(buf), agent.call('receiveBuffer', { id })]);
}

/** Hands `buf`'s descriptor to `agent`, which gets the buffer through its file (a HELLO). */
async function giveFile(agent: Agent, buf: DmaBuf, id: string): Promise<void> {
  const fd = buf.fd();
  try {
    await Promise.all([agent.channel.sendFd(fd), agent.call('getBuffer', { id })]);
  } finally {
    closeSync(fd);
  }
}

/** What an agent's fence `id` says now. */
async function state(agent: Agent, id: string): Promise<{ signaled: unknown; code: unknown }> {
  const { signaled, code } = await agent.call('state', { id });
  return { signaled, code };
}

/** Whether `p` is still pending after the event loop has turned for a while. */
async function pending(p: Promise<unknown>, ms = 50): Promise<boolean> {
  let settled = false;
  p.then(() => { settled = true; }, () => { settled = true; });
  await sleep(ms);
  return !settled;
}

/** Runs `fn` with a buffer of this process given to every agent. */
async function shared<T>(n: number, name: string, fn: (buf: DmaBuf, ...agents: Agent[]) => Promise<T>): Promise<T> {
  return fdNeutral(() => withBufferAgents(n, async (...agents) => {
    const buf = systemHeap.allocate(4096, { name });
    try {
      for (const a of agents) await give(a, buf);
      const r = await fn(buf, ...agents);
      for (const a of agents) await a.call('put', { buf: 'buf' });
      return r;
    } finally {
      buf.put();
    }
  }));
}

test('export-basic across processes: a read fence added in one importer blocks writers only, a write fence everyone, in the other importer and the exporter', async () => {
  await shared(2, 'export-basic', async (buf, a, b) => {
    await b.call('exportSync', { buf: 'buf', access: 'read', id: 'idle-r' });
    await b.call('exportSync', { buf: 'buf', access: 'write', id: 'idle-w' });
    assert.deepEqual(await state(b, 'idle-r'), { signaled: true, code: null }, 'nothing to wait for: a signalled sync file');
    assert.deepEqual(await state(b, 'idle-w'), { signaled: true, code: null });

    await a.call('create', { id: 'reading' });
    await a.call('add', { buf: 'buf', id: 'reading', usage: 'read' });
    await b.call('exportSync', { buf: 'buf', access: 'read', id: 'r1' });
    await b.call('exportSync', { buf: 'buf', access: 'write', id: 'w1' });
    assert.deepEqual(await state(b, 'r1'), { signaled: true, code: null }, 'readers do not wait for readers');
    assert.deepEqual(await state(b, 'w1'), { signaled: false, code: null }, 'writers wait for readers');
    assert.equal((await b.call('test', { buf: 'buf', usage: 'read' })).result, true);
    assert.equal((await b.call('test', { buf: 'buf', usage: 'write' })).result, false);
    assert.equal(await buf.resv.test('read'), true);
    assert.equal(await buf.resv.test('write'), false);
    await b.call('watch', { id: 'w1' });
    const w1 = b.signaled('w1');
    await a.call('signal', { id: 'reading' });
    assert.equal((await w1).code, null);
    assert.equal(await buf.resv.test('write'), true);

    await a.call('create', { id: 'writing' });
    await a.call('add', { buf: 'buf', id: 'writing', usage: 'write' });
    await b.call('exportSync', { buf: 'buf', access: 'read', id: 'r2' });
    assert.deepEqual(await state(b, 'r2'), { signaled: false, code: null }, 'readers wait for writers');
    assert.equal(await buf.resv.test('read'), false);
    await b.call('watch', { id: 'r2' });
    const r2 = b.signaled('r2');
    await a.call('signal', { id: 'writing', code: 'EIO' });
    assert.equal((await r2).code, 'EIO', 'the snapshot carries the error of the fence it waited for');
    assert.equal(await buf.resv.test('read'), true);
  });
});

test('a sync file exported in one process is a snapshot: fences added later, by another process, do not join it; it signals in two processes', async () => {
  await shared(2, 'export-multiwait', async (buf, a, b) => {
    await a.call('create', { id: 'first' });
    await a.call('add', { buf: 'buf', id: 'first', usage: 'read' });
    await b.call('exportSync', { buf: 'buf', access: 'write', id: 'snapshot' });
    const here = await b.take('snapshot');
    await a.call('create', { id: 'second' });
    await a.call('add', { buf: 'buf', id: 'second', usage: 'read' });
    await b.call('watch', { id: 'snapshot' });
    const there = b.signaled('snapshot');
    assert.equal(here.signaled, false);
    await a.call('signal', { id: 'first' });
    assert.equal(await here.wait(), true);
    assert.equal((await there).code, null);
    assert.equal(await buf.resv.test('write'), false, 'the second fence still holds writers back');
    assert.equal((await b.call('test', { buf: 'buf', usage: 'write' })).result, false);
    await a.call('signal', { id: 'second' });
    assert.equal(await buf.resv.wait('write', { timeout: 10_000 }), true);
  });
});

test('import-basic and import-existing across processes: a read import blocks writers only, a write import everyone, and earlier fences stay', async () => {
  await shared(2, 'import', async (buf, a, b) => {
    await a.call('create', { id: 'existing' });
    await a.call('add', { buf: 'buf', id: 'existing', usage: 'write' });
    const existing = (await a.call('key', { id: 'existing' })).key;
    await b.call('create', { id: 'ro' });
    await b.call('importSync', { buf: 'buf', id: 'ro', access: 'read' });
    const ro = (await b.call('key', { id: 'ro' })).key;
    assert.deepEqual((await buf.resv.fences('write')).map(fenceKey), [existing, ro], 'the existing write fence stays, the read import joins it');
    assert.deepEqual((await buf.resv.fences('read')).map(fenceKey), [existing]);
    await a.call('signal', { id: 'existing' });
    assert.equal(await buf.resv.test('read'), true, 'a read import does not block readers');
    assert.equal(await buf.resv.test('write'), false, 'it blocks writers');
    await b.call('create', { id: 'rw' });
    await b.call('importSync', { buf: 'buf', id: 'rw', access: 'write' });
    assert.equal((await a.call('test', { buf: 'buf', usage: 'read' })).result, false, 'a write import blocks readers in every process');
    await b.call('signal', { id: 'ro' });
    await b.call('signal', { id: 'rw' });
    assert.equal(await buf.resv.wait('write', { timeout: 10_000 }), true);
    assert.equal((await a.call('test', { buf: 'buf', usage: 'write' })).result, true);
  });
});

test('usage ordering across processes: every process sees kernel, write, read and bookkeep fences added by three as the kernel orders them', async () => {
  await shared(2, 'ordering', async (buf, a, b) => {
    const k = new DmaFence({ name: 'kernel' });
    buf.resv.add(k, 'kernel');
    await a.call('create', { id: 'w' });
    await a.call('add', { buf: 'buf', id: 'w', usage: 'write' });
    await b.call('create', { id: 'r' });
    await b.call('add', { buf: 'buf', id: 'r', usage: 'read' });
    await a.call('create', { id: 'bk' });
    await a.call('add', { buf: 'buf', id: 'bk', usage: 'bookkeep' });
    const key = { k: fenceKey(k), w: (await a.call('key', { id: 'w' })).key, r: (await b.call('key', { id: 'r' })).key, bk: (await a.call('key', { id: 'bk' })).key };
    const expected: Record<DmaResvUsage, unknown[]> = {
      kernel: [key.k],
      read: [key.k, key.w],
      write: [key.k, key.w, key.r],
      bookkeep: [key.k, key.w, key.r, key.bk],
    };
    for (const usage of DMA_RESV_USAGES) {
      assert.deepEqual((await buf.resv.fences(usage)).map(fenceKey), expected[usage], `the exporter, ${usage}`);
      assert.deepEqual((await a.call('fences', { buf: 'buf', usage })).keys, expected[usage], `importer a, ${usage}`);
      assert.deepEqual((await b.call('fences', { buf: 'buf', usage })).keys, expected[usage], `importer b, ${usage}`);
    }
    k.signal();
    await a.call('signal', { id: 'w' });
    await b.call('signal', { id: 'r' });
    await a.call('signal', { id: 'bk' });
    assert.equal(await buf.resv.wait('bookkeep', { timeout: 10_000 }), true);
    assert.deepEqual((await b.call('fences', { buf: 'buf', usage: 'bookkeep' })).keys, [], 'signalled fences are pruned');
  });
});

test('property: fences added and signalled by three processes, queried from any of them, match a simple model of usage ordering', async () => {
  await shared(2, 'model', async (buf, a, b) => {
    const owners = ['here', 'a', 'b'] as const;
    type Owner = (typeof owners)[number];
    const agents: Record<Exclude<Owner, 'here'>, Agent> = { a, b };
    const respects: Record<DmaResvUsage, number> = { kernel: 0, read: 1, write: 2, bookkeep: 3 };
    const level: Record<DmaResvUsage, number> = { kernel: 0, write: 1, read: 2, bookkeep: 3 };
    type Cmd = { kind: 'add'; fence: number; usage: DmaResvUsage } | { kind: 'signal'; fence: number } | { kind: 'query'; who: Owner; usage: DmaResvUsage };
    const usage = fc.constantFrom(...DMA_RESV_USAGES);
    const fenceIndex = fc.integer({ min: 0, max: 5 }); // fence i belongs to owners[i % 3]
    const cmd: fc.Arbitrary<Cmd> = fc.oneof(
      { weight: 4, arbitrary: fc.record({ kind: fc.constant('add' as const), fence: fenceIndex, usage }) },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('signal' as const), fence: fenceIndex }) },
      { weight: 3, arbitrary: fc.record({ kind: fc.constant('query' as const), who: fc.constantFrom(...owners), usage }) },
    );
    let run = 0;
    await fc.assert(fc.asyncProperty(fc.array(cmd, { minLength: 1, maxLength: 10 }), async (cmds) => {
      run += 1;
      const here = new Map<number, DmaFence>();
      const keys: string[] = [];
      for (let i = 0; i < 6; i++) {
        const owner = owners[i % 3]!;
        const id = `f${run}.${i}`;
        if (owner === 'here') {
          const f = new DmaFence({ name: id });
          here.set(i, f);
          keys.push(fenceKey(f));
        } else {
          await agents[owner].call('create', { id });
          keys.push((await agents[owner].call('key', { id })).key as string);
        }
      }
      // The model: the first add of each fence, its strongest usage, and what has signalled.
      const firstAdd: number[] = [];
      const strongest = new Map<number, number>();
      const signaled = new Set<number>();
      const expected = (u: DmaResvUsage): string[] => firstAdd.filter((i) => !signaled.has(i) && strongest.get(i)! <= respects[u]).map((i) => keys[i]!);
      try {
        for (const c of cmds) {
          const owner = c.kind === 'query' ? 'here' : owners[c.fence % 3]!;
          const id = c.kind === 'query' ? '' : `f${run}.${c.fence}`;
          if (c.kind === 'add') {
            if (owner === 'here') buf.resv.add(here.get(c.fence)!, c.usage);
            else await agents[owner].call('add', { buf: 'buf', id, usage: c.usage });
            if (!signaled.has(c.fence)) {
              if (!strongest.has(c.fence)) firstAdd.push(c.fence);
              strongest.set(c.fence, Math.min(strongest.get(c.fence) ?? 3, level[c.usage]));
            }
          } else if (c.kind === 'signal') {
            if (owner === 'here') here.get(c.fence)!.signal();
            else await agents[owner].call('signal', { id });
            signaled.add(c.fence);
          } else {
            const got = c.who === 'here' ? (await buf.resv.fences(c.usage)).map(fenceKey) : (await agents[c.who].call('fences', { buf: 'buf', usage: c.usage })).keys;
            assert.deepEqual(got, expected(c.usage), `${c.who} fences(${c.usage})`);
          }
        }
      } finally {
        for (let i = 0; i < 6; i++) {
          if (signaled.has(i)) continue;
          const owner = owners[i % 3]!;
          if (owner === 'here') here.get(i)!.signal();
          else await agents[owner].call('signal', { id: `f${run}.${i}` });
        }
        assert.equal(await buf.resv.wait('bookkeep', { timeout: 10_000 }), true);
      }
    }), { numRuns: 12 });
  });
});

test('CPU access: a reader in another process and the exporter wait for a writer in a third; the writer waits for the reader', async () => {
  await shared(2, 'cpu-access', async (buf, a, b) => {
    const att = await buf.attach(new CpuDevice({ name: 'exporter' }));
    const view = (await att.map('bidirectional')).views()[0]!;
    try {
      await a.call('begin', { buf: 'buf', access: 'write', tag: 'a-write' });
      await a.next((l) => l.event === 'began' && l.tag === 'a-write');
      await a.call('create', { id: 'painting' });
      await a.call('add', { buf: 'buf', id: 'painting', usage: 'write' });
      await b.call('begin', { buf: 'buf', access: 'read', tag: 'b-read' });
      const bRead = b.next((l) => l.event === 'began' && l.tag === 'b-read');
      const hereRead = buf.beginCpuAccess('read');
      assert.equal(await pending(hereRead), true, 'the exporter\'s read waits for the writer');
      assert.equal(await pending(bRead), true, 'the other importer\'s read waits for the writer');
      await a.call('poke', { buf: 'buf', at: 7, value: 42 });
      await a.call('end', { buf: 'buf', access: 'write' });
      await a.call('signal', { id: 'painting' });
      await hereRead;
      assert.equal((await bRead).code, undefined);
      assert.equal(view[7], 42);
      assert.equal((await b.call('peek', { buf: 'buf', at: 7 })).value, 42);
      await buf.endCpuAccess('read');

      await b.call('create', { id: 'reading' });
      await b.call('add', { buf: 'buf', id: 'reading', usage: 'read' });
      const hereWrite = buf.beginCpuAccess('write');
      await a.call('begin', { buf: 'buf', access: 'read-write', tag: 'a-rw' });
      const aWrite = a.next((l) => l.event === 'began' && l.tag === 'a-rw');
      assert.equal(await pending(hereWrite), true, 'the exporter\'s write waits for the reader');
      assert.equal(await pending(aWrite), true, 'a writer in another process waits for the reader');
      await b.call('signal', { id: 'reading' });
      await hereWrite;
      assert.equal((await aWrite).code, undefined);

      // A timeout and an abort end the wait; the exporter forgets it (CANCEL).
      await a.call('create', { id: 'late' });
      await a.call('add', { buf: 'buf', id: 'late', usage: 'write' });
      await b.call('begin', { buf: 'buf', access: 'read', tag: 'b-timeout', timeout: 30 });
      assert.equal((await b.next((l) => l.event === 'began' && l.tag === 'b-timeout')).code, 'ETIMEDOUT');
      await waitFor(() => usageFor(b.pid).waits === 0, 5000, 'the exporter to drop the cancelled wait');
      await assert.rejects(buf.beginCpuAccess('read', { signal: AbortSignal.abort() }), (e: unknown) => DmaBufError.is(e, 'EINTR'));
      await assert.rejects(buf.beginCpuAccess('read', { timeout: 20 }), (e: unknown) => DmaBufError.is(e, 'ETIMEDOUT') && /did not signal within 20 ms/.test((e as Error).message));
      await a.call('signal', { id: 'late' });
      await buf.beginCpuAccess('read');
    } finally {
      await att.detach();
    }
  });
});

test('beginCpuAccess with its own fence, in another process: one round trip adds the reader\'s fence after the writer\'s and waits for that; the next writer waits for the reader', async () => {
  await shared(1, 'cpu-access-fence', async (buf, reader) => {
    const painting = new DmaFence({ name: 'painting' });
    await buf.beginCpuAccess('write', { fence: painting });
    await reader.call('create', { id: 'reading' });
    const requestsBefore = serviceRequests();
    await reader.call('begin', { buf: 'buf', access: 'read', tag: 'r', fence: 'reading' });
    const began = reader.next((l) => l.event === 'began' && l.tag === 'r');
    const readingKey = (await reader.call('key', { id: 'reading' })).key;
    await waitFor(() => serviceRequests() > requestsBefore, 5000, 'the request to reach the exporter');
    assert.equal(serviceRequests() - requestsBefore, 1, 'one request: the fence and the wait together');
    assert.deepEqual((await buf.resv.fences('write')).map(fenceKey), [fenceKey(painting), readingKey], 'the reader\'s fence is in, after the writer\'s');
    assert.equal(await pending(began), true, 'the reader waits for the writer');
    const repainting = new DmaFence({ name: 'repainting' });
    const again = buf.beginCpuAccess('write', { fence: repainting });
    painting.signal();
    assert.equal((await began).code, undefined);
    assert.equal(await pending(again), true, 'the next writer waits for the reader');
    await reader.call('signal', { id: 'reading' });
    await again;
    repainting.signal();
  });
});

/** Requests answered by this thread's service channels so far. */
function serviceRequests(): number {
  return serviceChannels().reduce((n, c) => n + c.requests, 0);
}

test('hostile: a holder adding endless fences is refused with ENOSPC past the per-buffer and per-process limits, others are served, and its fences go when it dies', async () => {
  setServiceLimits({ maxFencesPerBuffer: 16, maxFencesPerProcess: 24 });
  try {
    await fdNeutral(() => withBufferAgents(2, async (hostile, honest) => {
      const one = systemHeap.allocate(4096, { name: 'flooded' });
      const two = systemHeap.allocate(4096, { name: 'second' });
      try {
        await giveFile(hostile, one, 'one');
        await giveFile(hostile, two, 'two');
        await give(honest, one, 'one');
        await give(honest, two, 'two');
        const fdsBefore = openFdCount();
        const first = await hostile.call('flood', { buf: 'one', usage: 'read', max: 1000 });
        assert.deepEqual({ added: first.added, code: first.code }, { added: 16, code: 'ENOSPC' }, 'the buffer\'s limit');
        const second = await hostile.call('flood', { buf: 'two', usage: 'read', max: 1000 });
        assert.deepEqual({ added: second.added, code: second.code }, { added: 8, code: 'ENOSPC' }, 'the process\'s limit (24 in all)');
        assert.equal(usageFor(hostile.pid).fences, 24);
        assert.equal(importedFenceCount(one), 16);
        assert.ok(openFdCount() - fdsBefore <= 24, `the exporter holds one descriptor per fence it kept, no more (${openFdCount() - fdsBefore})`);
        // Another process: refused on the full buffer, served on the other.
        await honest.call('create', { id: 'h1' });
        const refused = await honest.try('add', { buf: 'one', id: 'h1', usage: 'read' });
        assert.equal(refused.code, 'ENOSPC');
        await honest.call('add', { buf: 'two', id: 'h1', usage: 'read' });
        assert.equal(importedFenceCount(two), 9);
        await honest.call('signal', { id: 'h1' });
        // The holder dies: its fences signal (EPIPE) and leave; the counts and descriptors come back.
        const [oneOfTheirs] = await one.resv.fences('write');
        hostile.child.kill('SIGKILL');
        assert.equal(await one.resv.wait('write', { timeout: 10_000 }), true);
        assert.equal(oneOfTheirs!.error?.code, 'EPIPE');
        assert.equal(await two.resv.wait('write', { timeout: 10_000 }), true);
        await waitFor(() => usageFor(hostile.pid).fences === 0 && importedFenceCount(one) === 0 && importedFenceCount(two) === 0, 5000, 'the fences to be counted out');
        await waitFor(() => openFdCount() <= fdsBefore, 5000, 'the exporter\'s descriptors to come back');
        await honest.call('put', { buf: 'one' });
        await honest.call('put', { buf: 'two' });
      } finally {
        one.put();
        two.put();
      }
    }));
  } finally {
    setServiceLimits(DEFAULT_SERVICE_LIMITS);
  }
});

test('hostile: a holder\'s read fence whose signaller is killed signals EPIPE within a second, and the writers waiting for it in two processes go on', async () => {
  await fdNeutral(() => withBufferAgents(2, async (doomed, other) => {
    const buf = systemHeap.allocate(4096, { name: 'doomed-reader' });
    try {
      await give(doomed, buf);
      await give(other, buf);
      await doomed.call('create', { id: 'reading' });
      await doomed.call('add', { buf: 'buf', id: 'reading', usage: 'read' });
      const [theirs] = await buf.resv.fences('write');
      const writing = buf.beginCpuAccess('write');
      await other.call('waitResv', { buf: 'buf', usage: 'write', tag: 'w' });
      const otherWaited = other.next((l) => l.event === 'waited' && l.tag === 'w');
      assert.equal(await pending(writing), true);
      const killedAt = process.hrtime.bigint();
      doomed.child.kill('SIGKILL');
      await writing;
      const ms = Number(process.hrtime.bigint() - killedAt) / 1e6;
      assert.ok(ms < 1000, `the exporter's writer went on after ${ms} ms`);
      assert.equal(theirs!.error?.code, 'EPIPE');
      assert.equal((await otherWaited).result, true, 'the other importer\'s wait ends too');
      await buf.endCpuAccess('write');
      await other.call('put', { buf: 'buf' });
    } finally {
      buf.put();
    }
  }));
});

test('the exporter\'s death: an importer\'s pending wait and CPU access fail with EPIPE instead of hanging; its mapping stays valid', async () => {
  await fdNeutral(() => withBufferAgents(1, async (exporter) => {
    await exporter.call('allocate', { id: 'theirs', size: 4096 });
    await exporter.call('create', { id: 'never' });
    await exporter.call('add', { buf: 'theirs', id: 'never', usage: 'write' });
    const [, received] = await Promise.all([exporter.call('giveBuffer', { buf: 'theirs' }), exporter.channel.receive({ map: { device: new CpuDevice({ name: 'importer' }), direction: 'to-device' } })]);
    const buf = received.buffer;
    const view = received.sgt!.views()[0]!;
    try {
      assert.equal(await buf.resv.test('read'), false);
      const waiting = buf.resv.wait('read');
      const reading = buf.beginCpuAccess('read');
      assert.equal(await pending(waiting), true);
      exporter.child.kill('SIGKILL');
      await assert.rejects(waiting, (e: unknown) => DmaBufError.is(e, 'EPIPE'));
      await assert.rejects(reading, (e: unknown) => DmaBufError.is(e, 'EPIPE'));
      await assert.rejects(Promise.resolve().then(() => buf.resv.add(new DmaFence(), 'read')), (e: unknown) => DmaBufError.is(e, 'EPIPE'));
      assert.equal(view.byteLength, 4096);
      assert.equal(view[0], 0, 'the mapping made before the death still reads');
    } finally {
      await received.attachment!.detach();
      buf.put();
    }
  }));
});
