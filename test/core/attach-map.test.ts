import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { CpuDevice, DmaBufError, SgTable, systemHeap, type DmaBufAttachment } from '../../src/index.js';
import { recordingExport, type CallLog } from '../helpers.js';

const isCode = (code: string) => (e: unknown): boolean => DmaBufError.is(e, code);

test('attach() fails with the exporter\'s EBUSY and adds no attachment', async () => {
  const { buf, log } = recordingExport(4096, {
    attach: () => { throw new DmaBufError('EBUSY', 'attach: storage cannot be shared with this device'); },
  });
  await assert.rejects(buf.attach(new CpuDevice()), isCode('EBUSY'));
  assert.equal(buf.attachments.length, 0);
  buf.put();
  assert.equal(log.released, 1, 'a failed attach leaves nothing that delays release');
});

test('attach() of something that is not a Device fails with EINVAL', async () => {
  const { buf } = recordingExport();
  await assert.rejects(buf.attach({ name: 'fake' } as unknown as CpuDevice), isCode('EINVAL'));
  buf.put();
});

test('attach() lists live attachments and detach() removes them, calling the optional ops', async () => {
  const { buf, log } = recordingExport();
  const a = await buf.attach(new CpuDevice({ name: 'a' }));
  const b = await buf.attach(new CpuDevice({ name: 'b' }));
  assert.deepEqual(buf.attachments, [a, b]);
  await a.detach();
  assert.deepEqual(buf.attachments, [b]);
  await assert.rejects(a.detach(), isCode('EINVAL'));
  await b[Symbol.asyncDispose]();
  await b[Symbol.asyncDispose]();
  assert.deepEqual(log.calls, ['attach:a', 'attach:b', 'detach:a', 'detach:b']);
  buf.put();
});

test('map() after detach fails with EINVAL', async () => {
  const { buf } = recordingExport();
  const att = await buf.attach(new CpuDevice());
  await att.detach();
  await assert.rejects(att.map('bidirectional'), isCode('EINVAL'));
  buf.put();
});

test('map() rejects unknown directions and \'none\' with EINVAL', async () => {
  const { buf } = recordingExport();
  const att = await buf.attach(new CpuDevice());
  await assert.rejects(att.map('sideways' as 'none'), isCode('EINVAL'));
  await assert.rejects(att.map('none'), isCode('EINVAL'));
  await att.detach();
  buf.put();
});

test('concurrent maps never interleave inside the exporter\'s ops', async () => {
  let inside = 0;
  let maxInside = 0;
  const enter = async (): Promise<void> => {
    inside += 1;
    maxInside = Math.max(maxInside, inside);
    await sleep(2);
    await Promise.resolve();
    inside -= 1;
  };
  const { buf } = recordingExport(4096, {
    mapDmaBuf: async (a) => { await enter(); return new SgTable([{ offset: 0, length: a.dmabuf.size }]); },
    unmapDmaBuf: async () => { await enter(); },
    attach: async () => { await enter(); },
    detach: async () => { await enter(); },
  });
  const atts = await Promise.all([1, 2, 3].map((i) => buf.attach(new CpuDevice({ name: `d${i}` }))));
  const work = atts.map(async (att: DmaBufAttachment<CallLog>) => {
    for (let i = 0; i < 10; i++) {
      const tables = await Promise.all([att.map('to-device'), att.map('bidirectional')]);
      await Promise.all(tables.map((t) => att.unmap(t)));
    }
    await att.detach();
  });
  await Promise.all(work);
  assert.equal(maxInside, 1, 'ops ran one at a time');
  assert.equal(buf.mapCount, 0);
  buf.put();
});

test('a map whose signal is already aborted fails with EINTR and calls no op', async () => {
  const { buf, log } = recordingExport();
  const att = await buf.attach(new CpuDevice({ name: 'd' }));
  await assert.rejects(att.map('bidirectional', { signal: AbortSignal.abort() }), isCode('EINTR'));
  assert.ok(!log.calls.some((c) => c.startsWith('map')));
  await att.detach();
  buf.put();
});

test('a map aborted while it waits for the lock fails with EINTR', async () => {
  let unblock!: () => void;
  const blocked = new Promise<void>((resolve) => { unblock = resolve; });
  let first = true;
  const { buf } = recordingExport(4096, {
    mapDmaBuf: async (a) => {
      if (first) { first = false; await blocked; }
      return new SgTable([{ offset: 0, length: a.dmabuf.size }]);
    },
  });
  const att = await buf.attach(new CpuDevice());
  const slow = att.map('bidirectional');
  const ac = new AbortController();
  const waiting = att.map('bidirectional', { signal: ac.signal });
  await sleep(5);
  ac.abort();
  await assert.rejects(waiting, isCode('EINTR'));
  unblock();
  const sgt = await slow;
  assert.equal(att.maps.length, 1);
  await att.unmap(sgt);
  await att.detach();
  buf.put();
});

test('unmap() of a foreign or already unmapped table fails with EINVAL', async () => {
  const { buf } = recordingExport();
  const a = await buf.attach(new CpuDevice({ name: 'a' }));
  const b = await buf.attach(new CpuDevice({ name: 'b' }));
  const sgt = await a.map('bidirectional');
  await assert.rejects(b.unmap(sgt), isCode('EINVAL'));
  await assert.rejects(a.unmap(new SgTable([{ offset: 0, length: 1 }])), isCode('EINVAL'));
  await a.unmap(sgt);
  await assert.rejects(a.unmap(sgt), isCode('EINVAL'));
  const twice = await a.map('to-device');
  const results = await Promise.allSettled([a.unmap(twice), a.unmap(twice)]);
  assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
  await a.detach();
  await b.detach();
  buf.put();
});

test('detach() unmaps what the attachment still has mapped', async () => {
  const { buf, log } = recordingExport();
  const att = await buf.attach(new CpuDevice({ name: 'd' }));
  await att.map('bidirectional');
  await att.map('to-device');
  assert.equal(buf.mapCount, 2);
  await att.detach();
  assert.equal(buf.mapCount, 0);
  assert.deepEqual(log.calls.filter((c) => c.startsWith('unmap')), ['unmap:d', 'unmap:d']);
  buf.put();
});

test('an exporter returning something that is not an SgTable fails the map with EIO', async () => {
  const { buf } = recordingExport(4096, { mapDmaBuf: () => ({ segments: [] }) as unknown as SgTable });
  const att = await buf.attach(new CpuDevice());
  await assert.rejects(att.map('bidirectional'), isCode('EIO'));
  assert.equal(buf.mapCount, 0);
  await att.detach();
  buf.put();
});

test('new SgTable() validates its segments', () => {
  assert.throws(() => new SgTable([]), isCode('EINVAL'));
  assert.throws(() => new SgTable([{ offset: -1, length: 1 }]), isCode('EINVAL'));
  assert.throws(() => new SgTable([{ offset: 0, length: 0 }]), isCode('EINVAL'));
  assert.throws(() => new SgTable([{ offset: 0, length: 8 }, { offset: 4, length: 8 }]), isCode('EINVAL'));
  assert.throws(() => new SgTable([{ offset: 0, length: 2, view: new Uint8Array(3) }]), isCode('EINVAL'));
  const t = new SgTable([{ offset: 0, length: 8, address: 4096n }, { offset: 8, length: 8 }]);
  assert.equal(t.nents, 2);
  assert.equal(t.length, 16);
  assert.ok(Object.isFrozen(t.segments));
});

test('SgTable.views() gives a CPU map\'s views in segment order, and EINVAL for a table without views', async () => {
  const buf = systemHeap.allocate(3 << 12);
  const att = await buf.attach(new CpuDevice({ maxSegmentSize: 1 << 12 }));
  const sgt = await att.map('bidirectional');
  const views: Uint8Array[] = sgt.views();
  assert.equal(views.length, 3);
  views.forEach((v, i) => { assert.equal(v, sgt.segments[i]!.view); v.fill(i + 1); });
  assert.deepEqual(views.map((v) => v[0]), [1, 2, 3]);
  await att.unmap(sgt);
  assert.deepEqual(sgt.views().map((v) => v.byteLength), [0, 0, 0], 'detached after unmap');
  await att.detach();
  buf.put();
  const bare = new SgTable([{ offset: 0, length: 8, view: new Uint8Array(8) }, { offset: 8, length: 8, address: 4096n }]);
  assert.throws(() => bare.views(), (e: unknown) => isCode('EINVAL')(e) && /segment 1 has no CPU view/.test((e as Error).message));
});
