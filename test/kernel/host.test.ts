/**
 * What of the kernel interfaces can be checked on any Linux machine, without the VM: other
 * descriptors are not taken for kernel dma-bufs, missing devices give ENODEV, names are
 * checked, refused maps and bad arguments give clear errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  DmaBuf, DmaBufError, SyncFile, V4l2Capture, describeKernelDescriptor, dmaHeap, dmaHeaps, fourcc, fourccName, systemHeap, toKernelDmaBuf, O_RDONLY, BufferChannel,
} from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { checkKernelName, mapRefusedError } from '../../src/kernel/kernel-buffer.js';

/** Descriptors of every kind that is not a dma-buf, and a closer. */
function otherDescriptors(): { fds: Array<[string, number]>; close(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), 'dmabuf-kernel-'));
  const c = native.constants;
  const [a, b] = native.socketpair(c.SOCK_STREAM, false);
  const [p0, p1] = native.socketpair(c.SOCK_DGRAM, false);
  const fds: Array<[string, number]> = [
    ['a regular file', openSync(path.join(dir, 'f'), 'w+')],
    ['a memfd', native.memfdCreate('not-a-dmabuf', 0)],
    ['an eventfd', native.eventfd(0, 0)],
    ['a character device', openSync('/dev/null', 'r')],
    ['a directory', openSync(dir, 'r')],
    ['a stream socket', a],
    ['a datagram socket', p0],
  ];
  return {
    fds,
    close() {
      for (const [, fd] of fds) closeSync(fd);
      closeSync(b);
      closeSync(p1);
      rmSync(dir, { recursive: true });
    },
  };
}

test('DmaBuf.get() of descriptors that are neither ours nor kernel dma-bufs still fails with EINVAL', async () => {
  const { fds, close } = otherDescriptors();
  try {
    for (const [what, fd] of fds) {
      assert.equal(describeKernelDescriptor(fd), null, `${what} is not a kernel dma-buf`);
      await assert.rejects(DmaBuf.get(fd, { timeout: 200 }), (e: unknown) => DmaBufError.is(e, 'EINVAL'), what);
    }
  } finally {
    close();
  }
  assert.throws(() => describeKernelDescriptor(100000), (e: unknown) => DmaBufError.is(e, 'EBADF'));
});

test('toKernelDmaBuf: ENODEV without /dev/udmabuf, EINVAL for what is not a writable buffer', { skip: existsSync('/dev/udmabuf') ? 'this machine has /dev/udmabuf (the VM suite covers it)' : false }, async () => {
  const buf = systemHeap.allocate(4096);
  await assert.rejects(toKernelDmaBuf(buf), (e: unknown) => DmaBufError.is(e, 'ENODEV') && /\/dev\/udmabuf/.test((e as Error).message) && /CONFIG_UDMABUF/.test((e as Error).message));
  assert.equal(buf.attachments.length, 0);
  buf.put();
  await assert.rejects(toKernelDmaBuf({} as DmaBuf), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  const ro = systemHeap.allocate(4096, { flags: O_RDONLY });
  await assert.rejects(toKernelDmaBuf(ro), (e: unknown) => DmaBufError.is(e, 'EINVAL') && /read-only or sealed/.test((e as Error).message));
  ro.put();
});

test('dmaHeap: ENODEV where the machine has no such heap (the message lists what it has), EINVAL for a bad name', () => {
  const heaps = dmaHeaps();
  assert.deepEqual(heaps, [...heaps].sort());
  assert.throws(() => dmaHeap('no-such-heap'), (e: unknown) => DmaBufError.is(e, 'ENODEV') && (heaps.length === 0 ? /has none/ : /this machine has/).test((e as Error).message));
  for (const bad of ['', '.', '..', 'a/b', 'x\0y', 3 as unknown as string]) {
    assert.throws(() => dmaHeap(bad), (e: unknown) => DmaBufError.is(e, 'EINVAL'), JSON.stringify(bad));
  }
});

test('a kernel dma-buf name holds at most 31 bytes (32 with the terminator), counted in UTF-8', () => {
  checkKernelName('setName', 'n'.repeat(31));
  checkKernelName('setName', 'é'.repeat(15)); // 30 bytes
  assert.throws(() => checkKernelName('setName', 'n'.repeat(32)), (e: unknown) => DmaBufError.is(e, 'EINVAL') && /at most 31 bytes/.test((e as Error).message));
  assert.throws(() => checkKernelName('setName', 'é'.repeat(16)), (e: unknown) => DmaBufError.is(e, 'EINVAL'), '16 characters, 32 bytes');
});

test('setName, beginCpuAccess and endCpuAccess on a buffer of this package: ENOTTY for the name, no-ops for the brackets, EINVAL for bad arguments', async () => {
  const buf = systemHeap.allocate(4096, { name: 'ours' });
  assert.throws(() => buf.setName('other'), (e: unknown) => DmaBufError.is(e, 'ENOTTY') && /system/.test((e as Error).message));
  assert.throws(() => buf.setName('a\0b'), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  assert.equal(buf.name, 'ours');
  await buf.beginCpuAccess('read');
  await buf.endCpuAccess('read');
  await buf.beginCpuAccess('read-write');
  await buf.endCpuAccess('read-write');
  await assert.rejects(buf.beginCpuAccess('rw' as never), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  buf.put();
  await assert.rejects(buf.beginCpuAccess('read'), (e: unknown) => DmaBufError.is(e, 'EINVAL') && /has been put/.test((e as Error).message));
});

test('a map the exporter refuses names the exporter; NVIDIA\'s ENOTSUPP (errno 524) becomes ENOTSUP', () => {
  const notsupp = new DmaBufError('E524', 'mmap: Unknown error 524 (E524)', { op: 'mmap', syscall: 'mmap', errno: 524 });
  const e = mapRefusedError(notsupp, 'nvidia') as DmaBufError;
  assert.equal(e.code, 'ENOTSUP');
  assert.equal(e.errno, 524);
  assert.match(e.message, /"nvidia"/);
  assert.match(e.message, /ENOTSUPP, errno 524/);
  const einval = mapRefusedError(new DmaBufError('EINVAL', 'mmap: Invalid argument (EINVAL)', { op: 'mmap', syscall: 'mmap', errno: 22 }), 'i915') as DmaBufError;
  assert.equal(einval.code, 'EINVAL');
  assert.match(einval.message, /exporter "i915"/);
  const other = new DmaBufError('ENOMEM', 'x', { op: 'mappingView' });
  assert.equal(mapRefusedError(other, 'x'), other, 'errors of other calls pass through');
});

test('SyncFile.fromFd: EINVAL for a descriptor that is not a sync_file, EBADF for a closed one', () => {
  const [a, b] = BufferChannel.pair();
  try {
    assert.throws(() => SyncFile.fromFd(b), (e: unknown) => DmaBufError.is(e, 'EINVAL') && /not a sync_file/.test((e as Error).message));
    assert.throws(() => SyncFile.fromFd(100000), (e: unknown) => DmaBufError.is(e, 'EBADF'));
    assert.throws(() => SyncFile.fromFd(-1), (e: unknown) => DmaBufError.is(e, 'EBADF'));
  } finally {
    a.close();
    closeSync(b);
  }
});

test('V4l2Capture.open: ENODEV for a missing device node, EINVAL for a file that is not a V4L2 device', async () => {
  await assert.rejects(V4l2Capture.open('/dev/video-none'), (e: unknown) => DmaBufError.is(e, 'ENODEV') && /no such video device/.test((e as Error).message));
  await assert.rejects(V4l2Capture.open('/dev/null'), (e: unknown) => DmaBufError.is(e, 'EINVAL') && /not a V4L2 device/.test((e as Error).message));
});

test('fourcc and fourccName convert V4L2 pixel formats', () => {
  assert.equal(fourcc('YUYV'), 0x56595559);
  assert.equal(fourcc('YUYV'), native.kernelConstants.V4L2_PIX_FMT_YUYV);
  assert.equal(fourccName(native.kernelConstants.V4L2_PIX_FMT_RGB24), 'RGB3');
  assert.throws(() => fourcc('YUV'), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
});
