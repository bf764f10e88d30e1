/**
 * Issue 8, item 1: a holder's `shutdown(2)` of its descriptor of a buffer's file must not
 * release the buffer early. Real processes: a holder that maps (H), a holder that shuts the
 * file down and exits (S), a third process that gets the buffer afterwards (T). The exporter is
 * this process; release runs once, after H, the last holder, is gone.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { setTimeout as sleep } from 'node:timers/promises';
import { BufferChannel, CpuDevice, DmaBuf, systemHeap, type DmaBufOps } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { finish, nextLine, openFdCount, reapChildren, runChild, startChild, waitFor } from '../helpers.js';

after(reapChildren);

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const PATTERN = [0x5a, 0xa5, 0x3c];

/** A system-heap buffer whose release is counted, filled with PATTERN. */
async function countedBuffer(name: string): Promise<{ buf: DmaBuf; releases: () => number }> {
  // The system heap's own ops, with release counted.
  const model = systemHeap.allocate(4096);
  const ops = model.ops as DmaBufOps<unknown>;
  model.put();
  let releases = 0;
  const buf = DmaBuf.export({
    ops: { ...ops, release: (b) => { releases += 1; return ops.release(b); } },
    size: 65536,
    priv: { storage: null, generation: 0, mappings: new Map(), released: false, contents: Uint8Array.from(PATTERN) },
    name,
    exporter: 'system',
  });
  return { buf, releases: () => releases };
}

/**
 * H: gets, maps, reads, and lets go of everything but the buffer itself (no attachment keeps
 * the exporter's buffer alive: only H's descriptor of the file does); on a line on stdin
 * attaches and maps again, reads, writes, and exits.
 */
const HOLDER = `
  const b = await m.DmaBuf.get(3);
  const first = await b.attach(new m.CpuDevice({ name: 'holder' }));
  const t = await first.map('bidirectional');
  out({ ready: [...t.segments[0].view.subarray(0, 3)] });
  await first.detach();
  process.stdin.once('data', async () => {
    try {
      const a = await b.attach(new m.CpuDevice({ name: 'holder' }));
      const t2 = await a.map('bidirectional');
      const seen = [...t2.segments[0].view.subarray(0, 3)];
      t2.segments[0].view[3] = 0x77;
      await a.unmap(t2); await a.detach(); b.put();
      out({ again: seen });
    } catch (e) { out({ error: e.code, message: e.message }); }
    process.exit(0);
  });`;

/** S: a holder that gets the buffer, shuts its descriptor down with \`how\`, puts and exits. */
function shutter(how: string, readCanary = false): string {
  return `
    const b = await m.DmaBuf.get(3);
    ${readCanary ? 'const canary = native.recvmsg(3, 16, 0, native.constants.MSG_DONTWAIT); out({ canary: canary.data.length });' : ''}
    ${how === 'none' ? '' : `native.shutdown(3, native.constants.${how});`}
    b.put();
    out({ shut: ${JSON.stringify(how)} });`;
}

/** T: a third process's get after the shutdown: its outcome. */
const THIRD = `
  try {
    const b = await m.DmaBuf.get(3, { timeout: 3000 });
    const a = await b.attach(new m.CpuDevice());
    const t = await a.map('to-device');
    out({ got: [...t.segments[0].view.subarray(0, 3)] });
    await a.detach(); b.put();
  } catch (e) { out({ error: e.code, message: e.message }); }`;

/** Keeps the event loop alive while the exporter waits for children. */
function keepAlive(): { [Symbol.dispose](): void } {
  const t = setInterval(() => {}, 1000);
  return { [Symbol.dispose]: () => clearInterval(t) };
}

async function scenario(how: 'none' | 'SHUT_WR' | 'SHUT_RD' | 'SHUT_RDWR', options: { readCanary?: boolean } = {}): Promise<void> {
  using _alive = keepAlive();
  gc();
  const fdsBefore = openFdCount();
  const heapBefore = process.memoryUsage().heapUsed;
  const { buf, releases } = await countedBuffer(`shutdown-${how}`);
  const fd = buf.fd();

  const holder = startChild(HOLDER, [fd]);
  assert.deepEqual(await nextLine(holder), { ready: PATTERN }, 'the holder mapped the buffer');

  const s = await runChild(shutter(how, options.readCanary), [fd]);
  assert.equal(s.code, 0, s.stderr);
  if (options.readCanary) assert.deepEqual(s.json[0], { canary: 1 }, 'the hostile holder read the canary');
  await sleep(50);
  assert.equal(releases(), 0, `${how}: the exporter did not release after the shutting holder left`);

  const t = await runChild(THIRD, [fd]);
  assert.equal(t.code, 0, t.stderr);
  const third = t.json[0]!;
  if (how === 'SHUT_WR' || how === 'SHUT_RDWR') {
    assert.equal(third.error, 'ESHUTDOWN', JSON.stringify(third));
    assert.match(String(third.message), /a holder of this buffer shut its file down/);
  } else {
    assert.deepEqual(third, { got: PATTERN }, `${how}: a new importer still gets the buffer`);
  }

  // The exporter lets go; the holder still holds the buffer.
  closeSync(fd);
  buf.put();
  await sleep(50);
  assert.equal(releases(), 0, `${how}: not released while a holder remains`);
  assert.equal(buf.released, false);

  holder.stdin!.write('go\n');
  const h = await finish(holder);
  assert.equal(h.code, 0, h.stderr);
  assert.deepEqual(h.json.at(-1), { again: PATTERN }, `${how}: the remaining holder kept mapping the buffer`);

  await waitFor(() => releases() > 0, 5000, `${how}: the release after the last holder left`);
  await sleep(50);
  assert.equal(releases(), 1, `${how}: release ran exactly once`);
  await waitFor(() => openFdCount() === fdsBefore, 5000, `${how}: descriptors back to ${fdsBefore} (now ${openFdCount()})`);
  gc();
  const grown = process.memoryUsage().heapUsed - heapBefore;
  assert.ok(grown < 8 << 20, `${how}: the heap grew by ${grown} bytes`);
}

test('shutdown: control: holders that exit without shutting down; release after the last one', async () => {
  await scenario('none');
});

test('shutdown: a holder\'s SHUT_WR and exit releases nothing; a holder keeps mapping; a new get fails with ESHUTDOWN; release once after the last holder', async () => {
  await scenario('SHUT_WR');
});

test('shutdown: a holder\'s SHUT_RDWR and exit releases nothing; a holder keeps mapping; a new get fails with ESHUTDOWN; release once after the last holder', async () => {
  await scenario('SHUT_RDWR');
});

test('shutdown: a holder\'s SHUT_RD and exit harms nobody: holders and new importers keep working; release once after the last holder', async () => {
  await scenario('SHUT_RD');
});

test('shutdown: a holder that reads the file\'s canary, then shuts it down (SHUT_RDWR): the socket diagnostics still tell; release once after the last holder', async () => {
  await scenario('SHUT_RDWR', { readCanary: true });
});

test('shutdown: a holder that reads the file\'s canary, then shuts it down (SHUT_WR): release once after the last holder', async () => {
  await scenario('SHUT_WR', { readCanary: true });
});

test('shutdown: a holder that reads the file\'s canary without shutting down: release once after the last holder', async () => {
  await scenario('none', { readCanary: true });
});

test('shutdown: the exporter\'s own thread still gets a shut-down buffer (the same object) and releases it at its last put', async () => {
  const { buf, releases } = await countedBuffer('shutdown-local');
  const fd = buf.fd();
  native.shutdown(fd, native.constants.SHUT_RDWR);
  await sleep(20);
  const again = await DmaBuf.get(fd);
  assert.equal(again, buf);
  const att = await again.attach(new CpuDevice());
  const sgt = await att.map('to-device');
  assert.deepEqual([...sgt.segments[0]!.view!.subarray(0, 3)], PATTERN);
  await att.detach();
  again.put();
  buf.put();
  await sleep(20);
  assert.equal(releases(), 0, 'a descriptor is still open');
  closeSync(fd);
  await waitFor(() => releases() === 1, 5000, 'the release after the last close');
});

test('shutdown: the exporter\'s thread still hands a shut-down buffer to a new process over a BufferChannel (its offer needs nothing through the file)', async () => {
  using _alive = keepAlive();
  const fdsBefore = openFdCount();
  const { buf, releases } = await countedBuffer('shutdown-handoff');
  const fd = buf.fd();
  native.shutdown(fd, native.constants.SHUT_RDWR);
  const refused = await runChild(THIRD, [fd]);
  assert.equal(refused.json[0]!.error, 'ESHUTDOWN', JSON.stringify(refused.json[0]));
  closeSync(fd);
  const [channel, theirs] = BufferChannel.pair();
  const child = startChild(`
    const ch = m.BufferChannel.fromFd(3);
    const { buffer } = await ch.receive();
    const a = await buffer.attach(new m.CpuDevice());
    const t = await a.map('to-device');
    out({ got: [...t.segments[0].view.subarray(0, 3)] });
    await a.detach(); buffer.put(); ch.close();`, [theirs]);
  closeSync(theirs);
  await channel.send(buf);
  const r = await finish(child);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json[0], { got: PATTERN });
  channel.close();
  buf.put();
  await waitFor(() => releases() === 1, 5000, 'the release after the last holder');
  await waitFor(() => openFdCount() === fdsBefore, 5000, `descriptors back to ${fdsBefore} (now ${openFdCount()})`);
});
