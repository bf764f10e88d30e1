/**
 * Kernel dma-bufs imported with DmaBuf.get: vgem, udmabuf and dma-heap buffers (size,
 * exporter, name, identity, references), CPU maps through mmap, SYNC brackets, names, and the
 * kernel's own refusals. Runs inside the kernel VM; skips elsewhere, saying why.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readSync, writeSync, closeSync, openSync, readlinkSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { DmaBuf, DmaBufError, CpuDevice, O_RDONLY, describeKernelDescriptor, dmaHeap, dmaHeaps, isKernelBuffer, systemHeap, toKernelDmaBuf } from '../../../src/index.js';
import { native } from '../../../src/native/binding.js';
import { openFdTargets } from '../../helpers.js';
import { Vgem, vgemCard } from './vgem.js';
import { needsDmaHeap, needsUdmabuf, needsVgem } from './needs.js';

const c = () => native.constants;
const execFileAsync = promisify(execFile);
const CLI = fileURLToPath(new URL('../../../cli/dmabuf.js', import.meta.url));
const dmabufFds = (): number => openFdTargets().filter((t) => t.startsWith('/dmabuf:')).length;
const fdinfo = (fd: number): string => readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');

/** A sealed memfd of `size` bytes and a udmabuf over it. */
function udmabufOver(size: number): { memfd: number; fd: number } {
  const memfd = native.memfdCreate('kernel-test', c().MFD_ALLOW_SEALING);
  native.ftruncate(memfd, size);
  native.addSeals(memfd, c().F_SEAL_SHRINK);
  const dev = openSync('/dev/udmabuf', 'r+');
  try {
    return { memfd, fd: native.udmabufCreate(dev, memfd, 0, size, 0) };
  } finally {
    closeSync(dev);
  }
}

test('DmaBuf.get() of a vgem PRIME descriptor: size, exporter, the same object for the same buffer, put closes its own descriptor', { skip: needsVgem() }, async () => {
  const vgem = new Vgem(vgemCard()!);
  const { handle, size } = vgem.createDumb(64, 64);
  const fd = vgem.exportDmaBuf(handle);
  const before = dmabufFds();
  const buf = await DmaBuf.get(fd);
  assert.ok(isKernelBuffer(buf));
  assert.equal(buf.size, size);
  assert.equal(buf.exporter, 'drm');
  assert.equal(buf.name, '');
  assert.equal(buf.readOnly, false);
  assert.equal(dmabufFds(), before + 1, 'get holds one dup of the descriptor');
  const again = await DmaBuf.get(fd);
  assert.equal(again, buf, 'the same kernel buffer gives the same object');
  assert.equal(buf.refs, 2);
  assert.equal(describeKernelDescriptor(fd)!.inode, buf.priv.inode);
  assert.equal(dmabufFds(), before + 1, 'a second get takes no second descriptor');

  // A CPU map is an mmap of the descriptor: another, independent mmap sees the writes.
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('bidirectional');
  const view = sgt.segments[0]!.view!;
  assert.equal(sgt.segments.length, 1);
  assert.equal(view.length, size);
  for (let i = 0; i < view.length; i++) view[i] = i & 0xff;
  const raw = native.mmap(fd, size, 0, c().PROT_READ, c().MAP_SHARED);
  const rawView = new Uint8Array(native.mappingView(raw, 0, size));
  assert.equal(rawView[1000], 1000 & 0xff);
  assert.equal(rawView[size - 1], (size - 1) & 0xff);
  native.detachView(rawView.buffer as ArrayBuffer);
  native.munmap(raw);
  await att.unmap(sgt);
  assert.equal(view.byteLength, 0, 'views are detached on unmap');
  await att.detach();

  buf.put();
  assert.equal(buf.released, false);
  buf.put();
  assert.equal(buf.released, true);
  assert.equal(dmabufFds(), before, 'the last put closes its descriptor');
  closeSync(fd);
  vgem.closeHandle(handle);
  vgem.close();
});

test('udmabuf: bytes written through the memfd are seen through the import, and the other way; SYNC start and end', { skip: needsUdmabuf() }, async () => {
  const size = 64 * 1024;
  const { memfd, fd } = udmabufOver(size);
  writeSync(memfd, Buffer.from('written through the memfd'), 0, 25, 4096);
  const buf = await DmaBuf.get(fd);
  assert.equal(buf.exporter, 'udmabuf');
  assert.equal(buf.size, size);
  assert.match(readlinkSync(`/proc/self/fd/${fd}`), /^\/dmabuf:/);
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('bidirectional');
  const view = sgt.segments[0]!.view!;
  await buf.beginCpuAccess('read');
  assert.equal(Buffer.from(view.subarray(4096, 4096 + 25)).toString(), 'written through the memfd');
  await buf.endCpuAccess('read');
  await buf.beginCpuAccess('read-write');
  view.set(Buffer.from('written through the dma-buf'), 8192);
  await buf.endCpuAccess('read-write');
  await buf.beginCpuAccess('write');
  await buf.endCpuAccess('write');
  const back = Buffer.alloc(27);
  readSync(memfd, back, 0, 27, 8192);
  assert.equal(back.toString(), 'written through the dma-buf');
  await assert.rejects(buf.beginCpuAccess('sideways' as never), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  await att.detach();
  buf.put();
  closeSync(fd);
  closeSync(memfd);
});

test('dma-heap: dmaHeaps() lists "system"; allocate gives a kernel dma-buf whose exporter is the heap; a read-only one maps read-only', { skip: needsDmaHeap() }, async () => {
  assert.ok(dmaHeaps().includes('system'));
  const heap = dmaHeap('system');
  const buf = heap.allocate(5000, { name: 'heap-buffer', contents: new Uint8Array([1, 2, 3]) });
  assert.ok(isKernelBuffer(buf));
  assert.equal(buf.exporter, 'system');
  assert.equal(buf.size, 8192, 'the kernel rounds up to whole pages');
  assert.equal(buf.name, 'heap-buffer');
  const fd = buf.fd();
  assert.match(fdinfo(fd), /^exp_name:\s+system$/m);
  assert.match(fdinfo(fd), /^name:\s+heap-buffer$/m);
  closeSync(fd);
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('to-device');
  assert.deepEqual([...sgt.segments[0]!.view!.subarray(0, 4)], [1, 2, 3, 0]);
  await att.detach();
  buf.put();

  const ro = heap.allocate(4096, { flags: O_RDONLY });
  assert.equal(ro.readOnly, true);
  const roAtt = await ro.attach(new CpuDevice());
  await assert.rejects(roAtt.map('bidirectional'), (e: unknown) => DmaBufError.is(e, 'EACCES'));
  const roSgt = await roAtt.map('to-device');
  const address = roSgt.segments[0]!.address!;
  const line = readFileSync('/proc/self/maps', 'utf8').split('\n').find((l) => BigInt(`0x${l.split('-')[0]}`) === address);
  assert.match(line ?? '', /^\S+ r--s /, 'the mapping of a read-only descriptor is shared and read-only');
  assert.equal(roSgt.segments[0]!.view![100], 0);
  await roAtt.detach();
  ro.put();
  assert.throws(() => dmaHeap('no-such-heap'), (e: unknown) => DmaBufError.is(e, 'ENODEV') && /system/.test((e as Error).message));
});

test('setName uses DMA_BUF_SET_NAME: the name shows in fdinfo and /proc/self/fd; 32 bytes or more is EINVAL', { skip: needsUdmabuf() }, async () => {
  const { memfd, fd } = udmabufOver(4096);
  const buf = await DmaBuf.get(fd);
  buf.setName('camera-frame');
  assert.equal(buf.name, 'camera-frame');
  assert.match(fdinfo(fd), /^name:\s+camera-frame$/m);
  assert.equal(readlinkSync(`/proc/self/fd/${fd}`), '/dmabuf:camera-frame');
  // dmabuf info lists it once, as a kernel dma-buf, with its name and this thread's attachment.
  const att = await buf.attach(new CpuDevice({ name: 'info-check' }));
  const { stdout } = await execFileAsync(process.execPath, ['--no-warnings', CLI, 'info', '--json', '--pid', String(process.pid)]);
  const listed = (JSON.parse(stdout) as { buffers: Array<{ kind: string; key: string; name: string; exporter: string; attachments: Array<{ device: string }> }> }).buffers.filter((b) => b.key === buf.key);
  assert.equal(listed.length, 1, JSON.stringify(listed));
  assert.deepEqual([listed[0]!.kind, listed[0]!.name, listed[0]!.exporter, listed[0]!.attachments.map((a) => a.device)], ['kernel', 'camera-frame', 'udmabuf', ['info-check']]);
  await att.detach();
  const max = 'n'.repeat(31);
  buf.setName(max);
  assert.match(fdinfo(fd), new RegExp(`^name:\\s+${max}$`, 'm'));
  assert.throws(() => buf.setName('n'.repeat(32)), (e: unknown) => DmaBufError.is(e, 'EINVAL') && /at most 31 bytes/.test((e as Error).message));
  assert.equal(buf.name, max, 'a refused name changes nothing');
  // The kernel's own check agrees (the addon lets a 32-byte name through to it).
  assert.throws(() => native.dmaBufSetName(fd, 'n'.repeat(32)), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  buf.put();
  closeSync(fd);
  closeSync(memfd);
});

test('udmabuf refuses with EINVAL: a memfd without the shrink seal, an unaligned size, a descriptor that is not a memfd; toKernelDmaBuf checks first', { skip: needsUdmabuf() }, async () => {
  const dev = openSync('/dev/udmabuf', 'r+');
  const unsealed = native.memfdCreate('unsealed', c().MFD_ALLOW_SEALING);
  native.ftruncate(unsealed, 8192);
  const isEinval = (e: unknown): boolean => DmaBufError.is(e, 'EINVAL') && (e as DmaBufError).syscall === 'ioctl(UDMABUF_CREATE)';
  assert.throws(() => native.udmabufCreate(dev, unsealed, 0, 8192, 0), isEinval);
  native.addSeals(unsealed, c().F_SEAL_SHRINK);
  assert.throws(() => native.udmabufCreate(dev, unsealed, 0, 1000, 0), isEinval);
  const file = openSync('/tmp/not-a-memfd', 'w+');
  writeSync(file, Buffer.alloc(8192));
  assert.throws(() => native.udmabufCreate(dev, file, 0, 4096, 0), isEinval);
  closeSync(file);
  closeSync(unsealed);
  closeSync(dev);

  const sealed = systemHeap.allocate(4096);
  await sealed.seal();
  await assert.rejects(toKernelDmaBuf(sealed), (e: unknown) => DmaBufError.is(e, 'EINVAL') && /F_SEAL_WRITE/.test((e as Error).message));
  sealed.put();
  const huge = systemHeap.allocate(65 * 1024 * 1024);
  await assert.rejects(toKernelDmaBuf(huge), (e: unknown) => DmaBufError.is(e, 'EINVAL') && /limit/.test((e as Error).message));
  assert.equal(huge.attachments.length, 0, 'a refused export leaves no attachment');
  huge.put();
});
