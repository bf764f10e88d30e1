/**
 * Sharing with worker threads: a worker is another JavaScript realm; it reaches the exporter
 * through the buffer's file exactly as another process does.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import { CpuDevice, systemHeap } from '../../src/index.js';
import { INDEX_URL, runChild, waitFor } from '../helpers.js';

/** Runs `body` in a worker (the package is `m`; `fd` is the descriptor sent), returns what it posts. */
async function inWorker(body: string, fd: number): Promise<unknown[]> {
  const src = `
    const { parentPort, workerData } = require('node:worker_threads');
    (async () => {
      const m = await import(${JSON.stringify(INDEX_URL)});
      const fd = workerData.fd;
      const out = (v) => parentPort.postMessage(v);
      ${body}
    })().catch((e) => parentPort.postMessage({ error: e.code ?? String(e), message: e.message }));`;
  const worker = new Worker(src, { eval: true, workerData: { fd } });
  const messages: unknown[] = [];
  worker.on('message', (m) => messages.push(m));
  await once(worker, 'exit');
  return messages;
}

test('a worker gets a buffer from a descriptor number and maps the same memory, zero copy', async () => {
  using buf = systemHeap.allocate(1 << 20, { name: 'to-worker' });
  const att = await buf.attach(new CpuDevice({ name: 'main' }));
  const sgt = await att.map('bidirectional');
  const view = sgt.segments[0]!.view!;
  view[0] = 1;
  const fd = buf.fd();
  const messages = await inWorker(`
    const b = await m.DmaBuf.get(fd);
    const a = await b.attach(new m.CpuDevice({ name: 'worker' }));
    const t = await a.map('bidirectional');
    const v = t.segments[0].view;
    out({ size: b.size, name: b.name, first: v[0], same: b === await m.DmaBuf.get(fd) });
    v[1] = 2; v[b.size - 1] = 3;
    await a.unmap(t); await a.detach(); b.put(); b.put();`, fd);
  closeSync(fd);
  assert.deepEqual(messages, [{ size: 1 << 20, name: 'to-worker', first: 1, same: true }]);
  assert.equal(view[1], 2, 'the worker wrote into the very memory the exporter has mapped');
  assert.equal(view[buf.size - 1], 3);
  await att.detach();
});

test('the same contents are seen by the exporter, a worker and a child process; release waits for both', async () => {
  const buf = systemHeap.allocate(65536, { name: 'everyone' });
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('bidirectional');
  const view = sgt.segments[0]!.view!;
  for (let i = 0; i < view.length; i += 4096) view[i] = (i >> 12) + 1;
  const checksum = (): number => { let s = 0; for (let i = 0; i < view.length; i++) s = (s * 31 + view[i]!) >>> 0; return s; };
  const expected = checksum();
  const script = (post: string): string => `
    const b = await m.DmaBuf.get(FD);
    const a = await b.attach(new m.CpuDevice());
    const t = await a.map('to-device');
    const v = t.segments[0].view;
    let s = 0; for (let i = 0; i < v.length; i++) s = (s * 31 + v[i]) >>> 0;
    ${post}
    await a.detach(); b.put();`;
  const fd = buf.fd();
  const [workerMessages, child] = await Promise.all([
    inWorker(script('out({ sum: s });').replace('FD', 'fd'), fd),
    runChild(script('out({ sum: s });').replace('FD', '3'), [fd]),
  ]);
  closeSync(fd);
  assert.deepEqual(workerMessages, [{ sum: expected }]);
  assert.equal(child.code, 0, child.stderr);
  assert.deepEqual(child.json, [{ sum: expected }]);
  await att.detach();
  buf.put();
  await waitFor(() => buf.released, 5000, 'release');
});

test('a worker that exits with live attachments and maps is cleaned up by the exporter', async () => {
  const buf = systemHeap.allocate(8192, { name: 'worker-exit' });
  const fd = buf.fd();
  const keep = setInterval(() => {}, 1000);
  try {
    const messages = await inWorker(`
      const b = await m.DmaBuf.get(fd);
      const a = await b.attach(new m.CpuDevice());
      await a.map('bidirectional');
      out({ mapped: true });
      process.exit(0); // the worker ends with its attachment and map live`, fd);
    assert.deepEqual(messages, [{ mapped: true }]);
    await waitFor(() => buf.attachments.length === 0 && buf.mapCount === 0, 5000, 'cleanup after the worker exited');
    closeSync(fd);
    buf.put();
    await waitFor(() => buf.released, 5000, 'release');
  } finally {
    clearInterval(keep);
  }
});
