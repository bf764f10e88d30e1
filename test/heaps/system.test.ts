import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuDevice, DmaBufError, HUGE_PAGE_SIZE, O_RDONLY, systemHeap, hugePagesAvailable } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { openFdTargets, canManageHugePages, withHugePages } from '../helpers.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { readFileSync } from 'node:fs';

const isCode = (code: string) => (e: unknown): boolean => DmaBufError.is(e, code);
const memfdsNamed = (name: string): number => openFdTargets().filter((t) => t.startsWith(`/memfd:dmabuf:${name} `)).length;

test('two CPU attachments see each other\'s writes (zero copy)', async () => {
  using buf = systemHeap.allocate(3 * 4096 + 100, { name: 'share' });
  const a = await buf.attach(new CpuDevice({ name: 'writer' }));
  const b = await buf.attach(new CpuDevice({ name: 'reader' }));
  const ta = await a.map('bidirectional');
  const tb = await b.map('bidirectional');
  const va = ta.segments[0]!.view!;
  const vb = tb.segments[0]!.view!;
  assert.equal(va.byteLength, buf.size);
  assert.notEqual(va.buffer, vb.buffer, 'two different mappings');
  va[0] = 0x5a;
  va[buf.size - 1] = 0xa5;
  assert.equal(vb[0], 0x5a);
  assert.equal(vb[buf.size - 1], 0xa5);
  vb[4096] = 7;
  assert.equal(va[4096], 7);
  assert.equal(ta.segments[0]!.address! % 4096n, 0n);
  await a.unmap(ta);
  await b.unmap(tb);
  await a.detach();
  await b.detach();
});

test('a view is detached by unmap: byteLength 0, reads undefined, no crash', async () => {
  using buf = systemHeap.allocate(8192, { name: 'stale' });
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('bidirectional');
  const view = sgt.segments[0]!.view!;
  view.fill(3);
  await att.unmap(sgt);
  assert.equal(view.byteLength, 0);
  assert.equal(view[0], undefined);
  view[1] = 9; // a stale write goes nowhere
  const again = await att.map('to-device');
  assert.equal(again.segments[0]!.view![0], 3, 'contents survive unmap');
  assert.equal(again.segments[0]!.view![1], 3);
  await att.unmap(again);
  await att.detach();
});

test('a CPU device keeps its shared mapping while attached, and lets it go when its last attachment detaches', async () => {
  const name = `forget-${process.pid}`;
  const mapped = (): number => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`/memfd:dmabuf:${name} `)).length;
  using buf = systemHeap.allocate(64 * 4096, { name });
  const cpu = new CpuDevice({ name: 'producer' });
  const a = await buf.attach(cpu);
  const b = await buf.attach(cpu);
  let sgt = await a.map('bidirectional');
  sgt.segments[0]!.view![0] = 9;
  await a.unmap(sgt);
  assert.equal(cpu.cachedMappings, 1, 'kept for the next map while attached');
  assert.equal(mapped(), 1);
  sgt = await a.map('bidirectional');
  assert.equal(sgt.segments[0]!.view![0], 9);
  await a.detach();
  assert.equal(cpu.cachedMappings, 1, 'the same device is still attached through b');
  const tb = await b.map('bidirectional');
  assert.equal(tb.segments[0]!.view![0], 9);
  await b.detach();
  assert.equal(cpu.cachedMappings, 0, 'the last attachment detached: the mapping goes');
  assert.equal(tb.segments[0]!.view!.byteLength, 0, 'the views were detached first');
  // The munmap itself waits for V8 to let go of the detached views' stores (maybe a moment).
  for (let i = 0; mapped() > 0 && i < 100; i++) await sleep(20);
  assert.equal(mapped(), 0, 'no mapping of the storage is left in the process');
  // Attaching again maps again, with the contents intact.
  const c = await buf.attach(cpu);
  const tc = await c.map('to-device');
  assert.equal(tc.segments[0]!.view![0], 9);
  await c.detach();
});

test('late allocation: no storage before the first map', async () => {
  const buf = systemHeap.allocate(1 << 20, { name: 'late' });
  const att = await buf.attach(new CpuDevice());
  assert.equal(systemHeap.storage(buf).allocated, false);
  assert.equal(memfdsNamed('late'), 0, 'no memfd exists yet');
  const sgt = await att.map('bidirectional');
  const info = systemHeap.storage(buf);
  assert.equal(info.allocated, true);
  assert.equal(info.generation, 1);
  assert.equal(info.pageSize, 4096);
  assert.equal(memfdsNamed('late'), 1, '/proc/self/fd shows the memfd named after the buffer');
  const c = native.constants;
  assert.equal(info.seals & (c.F_SEAL_SHRINK | c.F_SEAL_GROW), c.F_SEAL_SHRINK | c.F_SEAL_GROW, 'sealed against shrink and grow');
  assert.throws(() => native.ftruncate(info.fd, 4096), isCode('EPERM'));
  await att.unmap(sgt);
  await att.detach();
  buf.put();
  assert.equal(memfdsNamed('late'), 0, 'release freed the storage');
});

test('segments honour the limits of the attachment\'s device', async () => {
  using buf = systemHeap.allocate(1_000_000, { name: 'segments' });
  const small = await buf.attach(new CpuDevice({ name: 'small', maxSegmentSize: 65536 + 100, segmentAlignment: 65536, maxSegments: 64 }));
  const big = await buf.attach(new CpuDevice({ name: 'big' }));
  const ts = await small.map('bidirectional');
  assert.equal(ts.nents, Math.ceil(1_000_000 / 65536));
  let expected = 0;
  for (const s of ts.segments) {
    assert.equal(s.offset, expected);
    assert.equal(s.offset % 65536, 0);
    assert.ok(s.length <= 65536 + 100);
    assert.equal(s.view!.byteLength, s.length);
    assert.equal(s.address! - ts.segments[0]!.address!, BigInt(s.offset));
    expected += s.length;
  }
  assert.equal(expected, 1_000_000);
  ts.segments[3]!.view![5] = 42;
  const tb = await big.map('to-device');
  assert.equal(tb.nents, 1);
  assert.equal(tb.segments[0]!.view![3 * 65536 + 5], 42);
  await assert.rejects(buf.attach(new CpuDevice({ maxSegmentSize: 4096, maxSegments: 2 })), isCode('EINVAL'));
  // A device that needs 2 MiB pages would make the storage unaddressable for 'small'.
  await assert.rejects(buf.attach(new CpuDevice({ pageSize: HUGE_PAGE_SIZE })), (e: unknown) => DmaBufError.is(e, 'EINVAL') || DmaBufError.is(e, 'EBUSY'));
  assert.equal(buf.attachments.length, 2);
  await small.detach();
  await big.detach();
});

test('a to-device view cannot change the buffer, and a write through it never crashes', async () => {
  using buf = systemHeap.allocate(4096, { name: 'ro-view' });
  const w = await buf.attach(new CpuDevice({ name: 'w' }));
  const r = await buf.attach(new CpuDevice({ name: 'r' }));
  const tw = await w.map('bidirectional');
  tw.segments[0]!.view!.fill(1);
  const tr = await r.map('to-device');
  const rv = tr.segments[0]!.view!;
  assert.equal(rv[10], 1, 'reads see the contents');
  tw.segments[0]!.view![20] = 2;
  assert.equal(rv[20], 2, 'reads follow later writes on pages the view has not written');
  rv[10] = 99;
  assert.equal(tw.segments[0]!.view![10], 1, 'the stray write did not reach the buffer');
  await r.unmap(tr);
  await w.unmap(tw);
  await r.detach();
  await w.detach();
});

test('an O_RDONLY buffer refuses writable maps with EACCES; its storage is sealed against writes', async () => {
  using buf = systemHeap.allocate(4096, { name: 'rdonly', flags: O_RDONLY, contents: Buffer.from('fixed') });
  const att = await buf.attach(new CpuDevice());
  await assert.rejects(att.map('bidirectional'), isCode('EACCES'));
  await assert.rejects(att.map('from-device'), isCode('EACCES'));
  const sgt = await att.map('to-device');
  assert.equal(Buffer.from(sgt.segments[0]!.view!.subarray(0, 6)).toString('latin1'), 'fixed\0');
  assert.ok(systemHeap.storage(buf).seals & native.constants.F_SEAL_WRITE);
  await att.unmap(sgt);
  await att.detach();
});

test('seal(): writable maps fail with EACCES and nothing can change the contents', async () => {
  using buf = systemHeap.allocate(2 * 4096, { name: 'sealed' });
  const att = await buf.attach(new CpuDevice());
  const t = await att.map('bidirectional');
  t.segments[0]!.view!.fill(0x11);
  // seal waits for the writable map to go
  let sealed = false;
  const sealing = buf.seal().then(() => { sealed = true; });
  await sleep(20);
  assert.equal(sealed, false, 'seal waits for writable maps');
  await att.unmap(t);
  await sealing;
  assert.equal(buf.sealed, true);
  assert.equal(buf.readOnly, true);
  const c = native.constants;
  const info = systemHeap.storage(buf);
  assert.ok(info.seals & c.F_SEAL_WRITE, 'the memfd is sealed against writes');
  assert.throws(() => native.mmap(info.fd, info.size, 0, c.PROT_READ | c.PROT_WRITE, c.MAP_SHARED), isCode('EPERM'));
  await assert.rejects(att.map('bidirectional'), isCode('EACCES'));
  await assert.rejects(att.map('from-device'), isCode('EACCES'));
  const other = await buf.attach(new CpuDevice({ name: 'late-reader' }));
  const r = await other.map('to-device');
  const v = r.segments[0]!.view!;
  v[0] = 0x22; // private copy-on-write: never reaches the buffer, never crashes
  assert.equal(v[0], 0x22);
  const r2 = await att.map('to-device');
  assert.equal(r2.segments[0]!.view![0], 0x11);
  await other.unmap(r);
  await att.unmap(r2);
  await other.detach();
  await att.detach();
});

test('seal() of a buffer never mapped allocates zeroed storage and seals it', async () => {
  using buf = systemHeap.allocate(4096, { name: 'seal-empty' });
  await buf.seal();
  await buf.seal(); // idempotent
  const att = await buf.attach(new CpuDevice());
  const r = await att.map('to-device');
  assert.equal(r.segments[0]!.view!.every((b) => b === 0), true);
  await att.detach();
});

test('migration is refused with EBUSY when huge pages are unavailable', async (t) => {
  if (hugePagesAvailable() >= HUGE_PAGE_SIZE) {
    t.skip('huge pages are available on this machine; the refusal cannot be observed');
    return;
  }
  using buf = systemHeap.allocate(4096, { name: 'no-huge' });
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('bidirectional');
  await assert.rejects(buf.attach(new CpuDevice({ name: 'huge', pageSize: HUGE_PAGE_SIZE })), isCode('EBUSY'));
  assert.equal(buf.attachments.length, 1);
  await assert.rejects(buf.attach(new CpuDevice({ name: 'odd', pageSize: 65536 })), isCode('EBUSY'));
  await att.unmap(sgt);
  await att.detach();
});

test('late allocation honours every attachment: a 2 MiB-page device gives hugetlb storage', async (t) => {
  if (!canManageHugePages()) {
    t.skip('needs root to grow /proc/sys/vm/nr_hugepages');
    return;
  }
  const ran = await withHugePages(4, async () => {
    using buf = systemHeap.allocate(3 * 1024 * 1024, { name: 'huge-late' });
    const plain = await buf.attach(new CpuDevice({ name: 'plain' }));
    const huge = await buf.attach(new CpuDevice({ name: 'huge', pageSize: HUGE_PAGE_SIZE }));
    const sgt = await plain.map('bidirectional');
    const info = systemHeap.storage(buf);
    assert.equal(info.hugetlb, true, 'the memfd lives on hugetlbfs');
    assert.equal(info.pageSize, HUGE_PAGE_SIZE);
    assert.equal(info.size, 4 * 1024 * 1024);
    assert.equal(info.generation, 1);
    sgt.segments[0]!.view![buf.size - 1] = 9;
    await plain.unmap(sgt);
    await plain.detach();
    await huge.detach();
    return true;
  });
  if (ran === null) t.skip('the huge page pool could not be grown');
});

test('migration: a stricter device attaches after storage exists; maps wait for unmaps; contents move', async (t) => {
  if (!canManageHugePages()) {
    t.skip('needs root to grow /proc/sys/vm/nr_hugepages');
    return;
  }
  const ran = await withHugePages(4, async () => {
    using buf = systemHeap.allocate(2 * 1024 * 1024 + 4096, { name: 'migrate' });
    const plain = await buf.attach(new CpuDevice({ name: 'plain' }));
    const first = await plain.map('bidirectional');
    const v = first.segments[0]!.view!;
    for (let i = 0; i < buf.size; i += 4096) v[i] = (i / 4096) & 0xff;
    v[buf.size - 1] = 0xee;
    assert.equal(systemHeap.storage(buf).hugetlb, false);
    const huge = await buf.attach(new CpuDevice({ name: 'huge', pageSize: HUGE_PAGE_SIZE }));
    let mapped = false;
    const pending = huge.map('bidirectional').then((sgt) => { mapped = true; return sgt; });
    await sleep(30);
    assert.equal(mapped, false, 'the map waits while a map of the old storage is outstanding');
    assert.equal(systemHeap.storage(buf).generation, 1);
    await plain.unmap(first);
    const moved = await pending;
    const info = systemHeap.storage(buf);
    assert.equal(info.hugetlb, true);
    assert.equal(info.generation, 2);
    const mv = moved.segments[0]!.view!;
    for (let i = 0; i < buf.size; i += 4096) assert.equal(mv[i], (i / 4096) & 0xff);
    assert.equal(mv[buf.size - 1], 0xee, 'contents preserved');
    const again = await plain.map('to-device');
    assert.equal(again.segments[0]!.view![buf.size - 1], 0xee);
    mv[0] = 0x77;
    assert.equal(again.segments[0]!.view![0], 0x77, 'both devices see the new storage');
    await plain.unmap(again);
    await huge.unmap(moved);
    await plain.detach();
    await huge.detach();
    return true;
  });
  if (ran === null) t.skip('the huge page pool could not be grown');
});
