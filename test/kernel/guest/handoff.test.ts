/**
 * Kernel dma-bufs between processes: our buffer exported through udmabuf and imported back
 * in a child, and a vivid camera frame handed zero-copy to a child that checks the test
 * pattern. Runs inside the kernel VM (with -M vivid); skips elsewhere, saying why.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';
import { BufferChannel, CpuDevice, V4l2Capture, systemHeap, toKernelDmaBuf, isKernelBuffer } from '../../../src/index.js';
import { runChild, startChild, finish, reapChildren, waitFor } from '../../helpers.js';
import { fnv1a, looksLikeBars } from './vivid.js';
import { needsUdmabuf, needsVivid } from './needs.js';

after(reapChildren);
const VIVID_URL = pathToFileURL(path.join(path.dirname(new URL(import.meta.url).pathname), 'vivid.js')).href;

test('our buffer, exported through udmabuf, imported by DmaBuf.get in another process: the same bytes, both ways', { skip: needsUdmabuf() }, async () => {
  const size = 256 * 1024;
  const buf = systemHeap.allocate(size, { name: 'to-kernel' });
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('bidirectional');
  const view = sgt.segments[0]!.view!;
  for (let i = 0; i < size; i += 4096) view[i] = (i / 4096) & 0xff;
  const kbuf = await toKernelDmaBuf(buf);
  assert.ok(isKernelBuffer(kbuf));
  assert.equal(kbuf.exporter, 'udmabuf');
  assert.equal(kbuf.name, 'to-kernel');
  assert.equal(kbuf.size, size);
  const fd = kbuf.fd();
  const result = await runChild(`
    const buf = await m.DmaBuf.get(3);
    const att = await buf.attach(new m.CpuDevice());
    const sgt = await att.map('bidirectional');
    const v = sgt.segments[0].view;
    let sum = 0;
    for (let i = 0; i < v.length; i += 4096) sum += v[i];
    v.set(Buffer.from('from the child'), 100);
    out({ exporter: buf.exporter, size: buf.size, name: buf.name, sum });
  `, [fd]);
  closeSync(fd);
  assert.equal(result.code, 0, result.stderr);
  let expected = 0;
  for (let i = 0; i < size; i += 4096) expected += (i / 4096) & 0xff;
  assert.deepEqual(result.json[0], { exporter: 'udmabuf', size, name: 'to-kernel', sum: expected });
  assert.equal(Buffer.from(view.subarray(100, 114)).toString(), 'from the child', 'the pages are shared, not copied');
  kbuf.put();
  await waitFor(() => buf.attachments.length === 1, 5000, 'the kernel\'s attachment to go with the kernel buffer');
  await att.detach();
  buf.put();
  assert.equal(buf.released, true);
});

test('V4L2 capture from vivid: a frame handed zero-copy to another process shows the test pattern there', { skip: needsVivid() }, async () => {
  await using cam = await V4l2Capture.open('/dev/video0', { width: 640, height: 360, pixelFormat: 'YUYV', buffers: 3 });
  assert.equal(cam.driver, 'vivid');
  assert.deepEqual(cam.format, { width: 640, height: 360, pixelFormat: 'YUYV', bytesPerLine: 1280, sizeImage: 460800 });
  assert.equal(cam.buffers.length, 3);
  assert.equal(cam.buffers[0]!.exporter, 'videobuf2_vmalloc');
  const [channel, theirs] = BufferChannel.pair();
  const child = startChild(`
    const { sampleBars, fnv1a } = await import(${JSON.stringify(VIVID_URL)});
    const ch = m.BufferChannel.fromFd(3);
    const { buffer, meta } = await ch.receive();
    const att = await buffer.attach(new m.CpuDevice());
    const sgt = await att.map('to-device');
    await buffer.beginCpuAccess('read');
    const v = sgt.segments[0].view.subarray(0, meta.bytesUsed);
    out({ exporter: buffer.exporter, name: buffer.name, bars: sampleBars(v, meta.width, meta.height, meta.bytesPerLine), hash: fnv1a(v) });
    await buffer.endCpuAccess('read');
    await att.detach();
    buffer.put();
    ch.close();
  `, [theirs]);
  closeSync(theirs);
  const frame = await cam.next({ timeout: 20_000 });
  assert.equal(frame.bytesUsed, 460800);
  assert.equal(frame.damaged, false);
  await channel.send(frame.buffer, { bytesUsed: frame.bytesUsed, ...cam.format });
  const result = await finish(child);
  assert.equal(result.code, 0, result.stderr);
  const seen = result.json[0] as { exporter: string; name: string; bars: number[][]; hash: number };
  assert.equal(seen.exporter, 'videobuf2_vmalloc');
  assert.equal(seen.name, `v4l2:video0:${frame.index}`);
  assert.ok(looksLikeBars(seen.bars), `vivid's colour bars in the child: ${JSON.stringify(seen.bars)}`);
  // The parent maps the same driver buffer and reads the same bytes.
  const att = await frame.buffer.attach(new CpuDevice());
  const sgt = await att.map('to-device');
  assert.equal(fnv1a(sgt.segments[0]!.view!.subarray(0, frame.bytesUsed)), seen.hash);
  await att.detach();
  frame.requeue();
  const next = await cam.next({ timeout: 20_000 });
  assert.ok(next.sequence > frame.sequence);
  next.requeue();
  channel.close();
});

test('examples/camera: every frame is mapped in the child process and shows the bars', { skip: needsVivid() }, () => {
  const file = fileURLToPath(new URL('../../../examples/camera.js', import.meta.url));
  const r = spawnSync(process.execPath, ['--no-warnings', file, '/dev/video0', '3'], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  const seen = [...r.stdout.matchAll(/mapped "v4l2:video0:\d+" in pid \d+, middle line luma by eighths: ((?:\d+ ?){8})/g)];
  assert.equal(seen.length, 3, r.stdout);
  for (const [, lumas] of seen) {
    const y = lumas!.trim().split(' ').map(Number);
    assert.ok(y.every((v, i) => i === 0 || v < y[i - 1]!), `the bars darken from left to right: ${lumas}`);
  }
  assert.match(r.stdout, /\[parent\] done/);
});
