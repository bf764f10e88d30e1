/**
 * Many importers at once, many cycles, migration across processes.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { CpuDevice, HUGE_PAGE_SIZE, systemHeap } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { canManageHugePages, fdCountOf, reapChildren, finish, nextLine, openFdCount, startChild, waitFor, withHugePages } from '../helpers.js';

after(reapChildren);

function keepAlive(): { [Symbol.dispose](): void } {
  const t = setInterval(() => {}, 1000);
  return { [Symbol.dispose]: () => clearInterval(t) };
}

test('concurrent attach/map/unmap/detach from three processes keep the exporter\'s attachment list exact', async () => {
  using _alive = keepAlive();
  using buf = systemHeap.allocate(256 * 1024, { name: 'contended' });
  const fd = buf.fd();
  const children = [0, 1, 2].map((n) => startChild(`
    const b = await m.DmaBuf.get(3);
    const kept = [];
    for (let i = 0; i < 40; i++) {
      const a = await b.attach(new m.CpuDevice({ name: 'p${n}-' + i }));
      const tables = await Promise.all([a.map('bidirectional'), a.map('to-device'), a.map('bidirectional')]);
      tables[0].segments[0].view[${n} * 1000 + i] = ${n} + 1;
      await Promise.all(tables.slice(1).map((t) => a.unmap(t)));
      if (i % 10 === 0) kept.push(a); else await a.detach();
    }
    out({ kept: kept.length, pid: process.pid });
    process.stdin.once('data', async () => { for (const a of kept) await a.detach(); b.put(); out({ done: true }); process.exit(0); });`, [fd]));
  closeSync(fd);
  const ready = await Promise.all(children.map((c) => nextLine(c)));
  assert.deepEqual(ready.map((r) => r.kept), [4, 4, 4]);
  // The last detaches are notifications, which reach the exporter at the end of the child's
  // turn of its event loop: wait for them (never for longer).
  await waitFor(() => buf.attachments.length <= 12, 5000, 'the children\'s detaches');
  // Exactly the kept attachments remain, each with its one outstanding map, per process.
  assert.equal(buf.attachments.length, 12);
  assert.equal(buf.mapCount, 12);
  for (const r of ready) {
    const mine = buf.attachments.filter((a) => a.device.name.endsWith(`@${String(r.pid)}`));
    assert.equal(mine.length, 4);
    assert.ok(mine.every((a) => a.maps.length === 1));
  }
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('to-device');
  for (let n = 0; n < 3; n++) for (let i = 0; i < 40; i++) assert.equal(sgt.segments[0]!.view![n * 1000 + i], n + 1);
  await att.detach();
  for (const c of children) c.stdin!.write('go\n');
  const results = await Promise.all(children.map((c) => finish(c)));
  results.forEach((r) => assert.equal(r.code, 0, r.stderr));
  assert.equal(buf.attachments.length, 0);
  assert.equal(buf.mapCount, 0);
});

test('open-descriptor counts in all processes return to their start after 1,000 share-and-release cycles', async () => {
  using _alive = keepAlive();
  const c = native.constants;
  const [mine, theirs] = native.socketpair(c.SOCK_SEQPACKET, false);
  const child = startChild(`
    const { readdirSync } = await import('node:fs');
    const count = () => readdirSync('/proc/self/fd').length;
    const c = native.constants;
    let before = -1;
    let cycles = 0;
    const take = async () => {
      for (;;) {
        let msg;
        try { msg = native.recvmsg(3, 64, 1, c.MSG_DONTWAIT); } catch (e) { if (e.code === 'EAGAIN') return; throw e; }
        if (msg.data.length === 0) { out({ before, after: count(), cycles }); process.exit(0); }
        const b = await m.DmaBuf.get(msg.fds[0]);
        native.close(msg.fds[0]);
        const a = await b.attach(new m.CpuDevice());
        const t = await a.map('to-device');
        const first = t.segments[0].view[0];
        await a.unmap(t); await a.detach(); b.put();
        cycles += 1;
        if (before < 0) before = count();
        native.sendmsg(3, Buffer.from([first]), [], 0);
      }
    };
    const poll = native.pollStart(3, c.UV_READABLE | c.UV_DISCONNECT, () => { poll && native.pollUpdate(poll, 0); take().then(() => native.pollUpdate(poll, c.UV_READABLE | c.UV_DISCONNECT)); });
    native.pollRef(poll, true);
    out({ ready: true });`, [theirs]);
  closeSync(theirs);
  await nextLine(child);
  const recvAck = async (): Promise<number> => {
    for (;;) {
      try {
        return native.recvmsg(mine, 8, 0, c.MSG_DONTWAIT).data[0]!;
      } catch (e) {
        if ((e as { code?: string }).code !== 'EAGAIN') throw e;
        await sleep(0);
      }
    }
  };
  let before = -1;
  let childBefore = -1;
  for (let i = 0; i < 1000; i++) {
    const buf = systemHeap.allocate(4096, { name: `cycle-${i}` });
    const att = await buf.attach(new CpuDevice());
    const t = await att.map('bidirectional');
    t.segments[0]!.view![0] = i & 0xff;
    await att.detach();
    const fd = buf.fd();
    native.sendmsg(mine, Buffer.from('b'), [fd], 0);
    closeSync(fd);
    buf.put();
    assert.equal(await recvAck(), i & 0xff);
    await waitFor(() => buf.released, 5000, 'release');
    if (i === 0) { before = openFdCount(); childBefore = fdCountOf(child.pid!); }
  }
  assert.equal(openFdCount(), before, 'exporter');
  assert.equal(fdCountOf(child.pid!), childBefore, 'importer');
  native.sendmsg(mine, Buffer.alloc(0), [], 0);
  closeSync(mine);
  const r = await finish(child);
  assert.equal(r.code, 0, r.stderr);
  const last = r.json[r.json.length - 1] as { before: number; after: number; cycles: number };
  assert.equal(last.cycles, 1000);
  assert.equal(last.after, last.before, 'the importer counted the same');
});

test('migration across processes: a remote map waits for a local unmap, and a local map for a remote unmap', async (t) => {
  if (!canManageHugePages()) {
    t.skip('needs root to grow /proc/sys/vm/nr_hugepages');
    return;
  }
  const ran = await withHugePages(6, async () => {
    using _alive = keepAlive();
    // 1. Storage exists with base pages; a remote device needing 2 MiB pages attaches and maps.
    using buf = systemHeap.allocate(2 << 20, { name: 'migrate-remote' });
    const local = await buf.attach(new CpuDevice({ name: 'local' }));
    const held = await local.map('bidirectional');
    held.segments[0]!.view![12345] = 99;
    const fd = buf.fd();
    const child = startChild(`
      const b = await m.DmaBuf.get(3);
      const a = await b.attach(new m.CpuDevice({ name: 'huge', pageSize: ${HUGE_PAGE_SIZE} }));
      out({ attached: true });
      const t = await a.map('bidirectional');
      const value = t.segments[0].view[12345];
      t.segments[0].view[54321] = 77;
      out({ mapped: true, value });
      process.stdin.once('data', async () => { await a.unmap(t); out({ unmapped: true }); process.stdin.once('data', async () => { await a.detach(); b.put(); process.exit(0); }); });`, [fd]);
    closeSync(fd);
    await nextLine(child, (v) => v.attached === true);
    let mapped = false;
    const mappedLine = nextLine(child, (v) => v.mapped === true).then((v) => { mapped = true; return v; });
    await sleep(100);
    assert.equal(mapped, false, 'the remote map waits for the local map of the old storage');
    await local.unmap(held);
    const line = await mappedLine;
    assert.equal(line.value, 99, 'contents moved');
    assert.equal(systemHeap.storage(buf).hugetlb, true);
    // 2. Now the other way: a local map with the remote map outstanding is fine (same
    //    storage); a local device needing a migration cannot arise (storage is already huge),
    //    so check that a local map sees the remote write and proceeds at once.
    const again = await local.map('to-device');
    assert.equal(again.segments[0]!.view![54321], 77);
    await local.unmap(again);
    child.stdin!.write('unmap\n');
    await nextLine(child, (v) => v.unmapped === true);
    child.stdin!.write('exit\n');
    const r = await finish(child);
    assert.equal(r.code, 0, r.stderr);
    await local.detach();
    return true;
  });
  if (ran === null) t.skip('the huge page pool could not be grown');
});

test('migration across processes: a local map waits for a remote unmap', async (t) => {
  if (!canManageHugePages()) {
    t.skip('needs root to grow /proc/sys/vm/nr_hugepages');
    return;
  }
  const ran = await withHugePages(6, async () => {
    using _alive = keepAlive();
    using buf = systemHeap.allocate(2 << 20, { name: 'migrate-local' });
    const fd = buf.fd();
    const child = startChild(`
      const b = await m.DmaBuf.get(3);
      const a = await b.attach(new m.CpuDevice({ name: 'plain' }));
      const t = await a.map('bidirectional');
      t.segments[0].view[4242] = 42;
      out({ mapped: true });
      process.stdin.once('data', async () => { await a.unmap(t); await a.detach(); b.put(); process.exit(0); });`, [fd]);
    closeSync(fd);
    await nextLine(child, (v) => v.mapped === true);
    const huge = await buf.attach(new CpuDevice({ name: 'huge', pageSize: HUGE_PAGE_SIZE }));
    let done = false;
    const pending = huge.map('to-device').then((s) => { done = true; return s; });
    await sleep(100);
    assert.equal(done, false, 'the local map waits for the remote map of the old storage');
    child.stdin!.write('go\n');
    const sgt = await pending;
    assert.equal(sgt.segments[0]!.view![4242], 42);
    assert.equal(systemHeap.storage(buf).hugetlb, true);
    await huge.detach();
    const r = await finish(child);
    assert.equal(r.code, 0, r.stderr);
    return true;
  });
  if (ran === null) t.skip('the huge page pool could not be grown');
});
