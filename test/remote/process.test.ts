/**
 * Sharing with other processes: real child processes import, map and write buffers exported
 * here, and the exporter stays in charge of them.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { CpuDevice, DmaBuf, DmaBufError, O_RDONLY, systemHeap, type DmaBuf as Buf } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { INDEX_URL, finish, reapChildren, nextLine, runChild, startChild, waitFor } from '../helpers.js';

after(reapChildren);

/** Fills a buffer of the system heap through a CPU map. */
async function fill(buf: Buf, fn: (view: Uint8Array) => void): Promise<void> {
  const att = await buf.attach(new CpuDevice({ name: 'filler' }));
  const sgt = await att.map('bidirectional');
  fn(sgt.segments[0]!.view!);
  await att.detach();
}

async function read(buf: Buf, at: number[]): Promise<number[]> {
  const att = await buf.attach(new CpuDevice({ name: 'reader' }));
  const sgt = await att.map('to-device');
  const v = sgt.segments[0]!.view!;
  const out = at.map((i) => v[i]!);
  await att.detach();
  return out;
}

/** Keeps the event loop alive while the exporter waits for children. */
function keepAlive(): { [Symbol.dispose](): void } {
  const t = setInterval(() => {}, 1000);
  return { [Symbol.dispose]: () => clearInterval(t) };
}

test('get() in a child process reaches the exporter through the file; size, name, exporter and flags match', async () => {
  using _alive = keepAlive();
  using buf = systemHeap.allocate(12345, { name: 'described' });
  const fd = buf.fd();
  const r = await runChild(`const b = await m.DmaBuf.get(3); out({ size: b.size, name: b.name, exporter: b.exporter, flags: b.flags, readOnly: b.readOnly, same: b === await m.DmaBuf.get(3), refs: b.refs }); b.put(); b.put();`, [fd]);
  closeSync(fd);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json[0], { size: 12345, name: 'described', exporter: 'system', flags: buf.flags, readOnly: false, same: true, refs: 2 });
});

test('a child reads what the exporter wrote, and the exporter reads what the child wrote (zero copy)', async () => {
  using _alive = keepAlive();
  using buf = systemHeap.allocate(4 << 20, { name: 'two-way' });
  await fill(buf, (v) => { v[0] = 11; v[buf.size - 1] = 22; });
  const fd = buf.fd();
  const r = await runChild(`
    const b = await m.DmaBuf.get(3);
    const a = await b.attach(new m.CpuDevice({ name: 'child' }));
    const t = await a.map('bidirectional');
    const v = t.segments[0].view;
    out({ first: v[0], last: v[b.size - 1], length: v.byteLength });
    v[1] = 33; v[b.size - 2] = 44;
    await a.unmap(t);
    out({ stale: v.byteLength });
    await a.detach(); b.put();`, [fd]);
  closeSync(fd);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json, [{ first: 11, last: 22, length: 4 << 20 }, { stale: 0 }]);
  assert.deepEqual(await read(buf, [1, buf.size - 2]), [33, 44]);
});

test('remote attach and map run the exporter\'s ops here, with the importer\'s device constraints', async () => {
  using _alive = keepAlive();
  using buf = systemHeap.allocate(1 << 20, { name: 'constrained' });
  const fd = buf.fd();
  const child = startChild(`
    const b = await m.DmaBuf.get(3);
    const a = await b.attach(new m.CpuDevice({ name: 'dsp', maxSegmentSize: 65536, maxSegments: 64 }));
    const t = await a.map('bidirectional');
    out({ nents: t.nents, lengths: [...new Set(t.segments.map((s) => s.length))] });
    process.stdin.once('data', async () => { await a.unmap(t); await a.detach(); b.put(); out({ done: true }); process.exit(0); });`, [fd]);
  closeSync(fd);
  const mapped = await nextLine(child);
  assert.deepEqual(mapped, { nents: 16, lengths: [65536] });
  assert.equal(buf.attachments.length, 1);
  const remote = buf.attachments[0]!;
  assert.equal(remote.device.kind, 'remote-cpu');
  assert.equal(remote.device.constraints.maxSegmentSize, 65536);
  assert.match(remote.device.name, new RegExp(`^dsp@${child.pid}$`));
  assert.equal(remote.maps.length, 1);
  assert.equal(buf.mapCount, 1);
  assert.equal(systemHeap.storage(buf).allocated, true, 'the remote map allocated the storage here');
  child.stdin!.write('go\n');
  const r = await finish(child);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(buf.attachments.length, 0);
  assert.equal(buf.mapCount, 0);
});

test('read-only and sealed buffers refuse writable maps remotely with EACCES', async () => {
  using _alive = keepAlive();
  using ro = systemHeap.allocate(4096, { name: 'ro', flags: O_RDONLY, contents: Buffer.from('ro!') });
  using sealed = systemHeap.allocate(4096, { name: 'sealed' });
  await fill(sealed, (v) => v.set(Buffer.from('sealed!')));
  await sealed.seal();
  const fds = [ro.fd(), sealed.fd()];
  const r = await runChild(`
    for (const fd of [3, 4]) {
      const b = await m.DmaBuf.get(fd);
      const a = await b.attach(new m.CpuDevice());
      const codes = [];
      for (const dir of ['bidirectional', 'from-device']) {
        try { await a.map(dir); codes.push('mapped'); } catch (e) { codes.push(e.code); }
      }
      const t = await a.map('to-device');
      const v = t.segments[0].view;
      const text = Buffer.from(v.subarray(0, 7)).toString('latin1');
      v[0] = 0; // a stray write through a read view: private, never reaches the buffer
      await a.unmap(t); await a.detach();
      out({ readOnly: b.readOnly, sealed: b.sealed, codes, text });
      b.put();
    }`, fds);
  fds.forEach((fd) => closeSync(fd));
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json, [
    { readOnly: true, sealed: false, codes: ['EACCES', 'EACCES'], text: 'ro!\0\0\0\0' },
    { readOnly: true, sealed: true, codes: ['EACCES', 'EACCES'], text: 'sealed!' },
  ]);
  assert.deepEqual(await read(sealed, [0]), ['s'.charCodeAt(0)]);
  assert.deepEqual(await read(ro, [0]), ['r'.charCodeAt(0)]);
});

test('release runs exactly once, in the exporter, after the last reference in every process is gone', async () => {
  using _alive = keepAlive();
  const buf = systemHeap.allocate(8192, { name: 'lifetime' });
  const fd = buf.fd();
  const child = startChild(`
    const b = await m.DmaBuf.get(3);
    const a = await b.attach(new m.CpuDevice());
    await a.unmap(await a.map('bidirectional'));
    await a.detach();
    b.put();
    out({ put: true });
    process.stdin.once('data', () => process.exit(0));`, [fd]);
  closeSync(fd);
  await nextLine(child);
  buf.put();
  await sleep(30);
  assert.equal(buf.released, false, 'the child still holds its inherited descriptor');
  child.stdin!.write('exit\n');
  await once(child, 'exit');
  await waitFor(() => buf.released, 5000, 'release after the child exited');
  assert.equal(systemHeap.storage(buf).allocated, false, 'release freed the storage');
});

test('an importer that crashes with live attachments and maps: the exporter undoes them and still releases', async () => {
  using _alive = keepAlive();
  const buf = systemHeap.allocate(1 << 20, { name: 'crash-importer' });
  const fd = buf.fd();
  const child = startChild(`
    const b = await m.DmaBuf.get(3);
    const a1 = await b.attach(new m.CpuDevice({ name: 'a1' }));
    const a2 = await b.attach(new m.CpuDevice({ name: 'a2' }));
    await a1.map('bidirectional'); await a1.map('to-device'); await a2.map('bidirectional');
    out({ ready: true });`, [fd]);
  closeSync(fd);
  await nextLine(child);
  assert.equal(buf.attachments.length, 2);
  assert.equal(buf.mapCount, 3);
  child.kill('SIGKILL');
  await once(child, 'exit');
  await waitFor(() => buf.attachments.length === 0 && buf.mapCount === 0, 5000, 'cleanup after the importer died');
  buf.put();
  await waitFor(() => buf.released, 5000, 'release');
});

test('an exporter that crashes: mappings made stay valid with their contents; new operations fail with EPIPE; nothing hangs', async () => {
  const c = native.constants;
  const [mine, theirs] = native.socketpair(c.SOCK_SEQPACKET, false);
  const exporter = startChild(`
    const buf = m.systemHeap.allocate(1 << 20, { name: 'doomed' });
    const a = await buf.attach(new m.CpuDevice());
    const t = await a.map('bidirectional');
    t.segments[0].view.fill(0x5c);
    await a.unmap(t);
    const fd = buf.fd();
    native.sendmsg(3, Buffer.from('buffer'), [fd], 0);
    setInterval(() => {}, 1000);`, [theirs]);
  closeSync(theirs);
  try {
    await waitFor(() => { try { native.pollNow(mine, c.POLLIN); } catch { return false; } return (native.pollNow(mine, c.POLLIN) & c.POLLIN) !== 0; }, 10000, 'the exporter\'s descriptor');
    const msg = native.recvmsg(mine, 64, 1, c.MSG_DONTWAIT);
    const fd = msg.fds[0]!;
    const buf = await DmaBuf.get(fd);
    closeSync(fd);
    const att = await buf.attach(new CpuDevice());
    const sgt = await att.map('bidirectional');
    const view = sgt.segments[0]!.view!;
    exporter.kill('SIGKILL');
    await once(exporter, 'exit');
    await sleep(20);
    assert.equal(view[0], 0x5c, 'the mapping outlives its exporter');
    assert.equal(view[buf.size - 1], 0x5c);
    view[7] = 1; // and stays writable
    assert.equal(view[7], 1);
    await assert.rejects(att.map('to-device'), (e: unknown) => DmaBufError.is(e, 'EPIPE') && /exporter/.test((e as Error).message));
    await assert.rejects(buf.attach(new CpuDevice()), (e: unknown) => DmaBufError.is(e, 'EPIPE'));
    await att.unmap(sgt); // local: the views go, nothing to tell
    assert.equal(view.byteLength, 0);
    await att.detach();
    buf.put();
  } finally {
    closeSync(mine);
    if (exporter.exitCode === null && exporter.signalCode === null) exporter.kill('SIGKILL');
  }
});

test('a descriptor passed through two hops (A to B to C) still reaches the exporter', async () => {
  using _alive = keepAlive();
  using buf = systemHeap.allocate(65536, { name: 'hops' });
  await fill(buf, (v) => { v[100] = 1; });
  const cScript = `import * as m from ${JSON.stringify(INDEX_URL)};
    const b = await m.DmaBuf.get(3);
    const a = await b.attach(new m.CpuDevice({ name: 'C' }));
    const t = await a.map('bidirectional');
    t.segments[0].view[200] = t.segments[0].view[100] + 41;
    await a.detach(); b.put();
    console.log(JSON.stringify({ c: 'done' }));`;
  const fd = buf.fd();
  // B does not import the buffer: it only hands its inherited descriptor on to C.
  const r = await runChild(`
    const { spawn } = await import('node:child_process');
    const { once } = await import('node:events');
    const c = spawn(process.execPath, ['--no-warnings', '--input-type=module', '-e', ${JSON.stringify(cScript)}], { stdio: ['ignore', 'inherit', 'inherit', 3] });
    await once(c, 'exit');`, [fd]);
  closeSync(fd);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json, [{ c: 'done' }]);
  assert.deepEqual(await read(buf, [200]), [42]);
});

test('getMapped() imports, attaches and maps in one round trip, with the same result as get, attach and map', async () => {
  using _alive = keepAlive();
  using buf = systemHeap.allocate(3 << 20, { name: 'one-trip' });
  await fill(buf, (v) => { v[0] = 5; v[buf.size - 1] = 6; });
  const fds = [buf.fd(), buf.fd()];
  const r = await runChild(`
    const c = native.constants;
    const { buffer, attachment, sgt } = await m.DmaBuf.getMapped(3, new m.CpuDevice({ name: 'fast', maxSegmentSize: 1 << 20 }), 'to-device');
    const v0 = sgt.segments[0].view, vl = sgt.segments[sgt.nents - 1].view;
    out({ nents: sgt.nents, first: v0[0], last: vl[vl.length - 1], attachments: buffer.attachments.length, maps: attachment.maps.length });
    // a second get of the same file reuses the object; its attach and map go one by one
    const again = await m.DmaBuf.getMapped(4, new m.CpuDevice({ name: 'slow' }), 'bidirectional');
    again.sgt.segments[0].view[1] = 7;
    out({ same: again.buffer === buffer, attachments: buffer.attachments.length });
    await again.attachment.detach(); again.buffer.put();
    await attachment.detach(); buffer.put();`, fds);
  fds.forEach((fd) => closeSync(fd));
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json, [{ nents: 3, first: 5, last: 6, attachments: 1, maps: 1 }, { same: true, attachments: 2 }]);
  assert.deepEqual(await read(buf, [1]), [7]);
  assert.equal(buf.attachments.length, 0, 'every remote attachment was detached');
});

test('getMapped() in the exporter\'s own thread is get, attach and map', async () => {
  using buf = systemHeap.allocate(4096, { name: 'local-one-trip' });
  const fd = buf.fd();
  const { buffer, attachment, sgt } = await DmaBuf.getMapped(fd, new CpuDevice(), 'bidirectional');
  closeSync(fd);
  assert.equal(buffer, buf);
  sgt.segments[0]!.view![0] = 9;
  assert.deepEqual(await read(buf, [0]), [9]);
  await attachment.detach();
  buffer.put();
  await assert.rejects(DmaBuf.getMapped(0, new CpuDevice(), 'none'), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
});
