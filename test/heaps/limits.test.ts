/**
 * The system heap's size limits (issue 8, smaller findings): a size nothing can back fails at
 * allocate with EINVAL naming the limit; at map, the file size limit gives EFBIG and the
 * address space ENOMEM, each saying which limit was hit.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { CpuDevice, DmaBufError, systemHeap } from '../../src/index.js';
import { SYSTEM_HEAP_MAX_SIZE } from '../../src/heaps/system.js';
import { openFdCount, reapChildren, runChild } from '../helpers.js';

after(reapChildren);

test('system heap: Number.MAX_SAFE_INTEGER bytes fails at allocate with EINVAL naming the largest size', () => {
  const fds = openFdCount();
  for (const size of [Number.MAX_SAFE_INTEGER, SYSTEM_HEAP_MAX_SIZE + 1]) {
    assert.throws(() => systemHeap.allocate(size), (e: unknown) => {
      assert.ok(DmaBufError.is(e, 'EINVAL'), String(e));
      assert.equal(e.op, 'allocate');
      assert.match(e.message, new RegExp(`at most ${SYSTEM_HEAP_MAX_SIZE} bytes`));
      return true;
    });
  }
  assert.equal(openFdCount(), fds, 'nothing was created');
  systemHeap.allocate(SYSTEM_HEAP_MAX_SIZE).put(); // the largest is exported (sparse until mapped)
});

test('system heap: a buffer larger than the address space fails at map with ENOMEM naming the address space, and nothing is left mapped', async () => {
  const fds = openFdCount();
  const buf = systemHeap.allocate(2 ** 52, { name: 'too-big-to-map' });
  const att = await buf.attach(new CpuDevice());
  await assert.rejects(att.map('bidirectional'), (e: unknown) => {
    assert.ok(DmaBufError.is(e, 'ENOMEM'), String(e));
    assert.equal(e.op, 'map');
    assert.equal(e.syscall, 'mmap');
    assert.match(e.message, /cannot map 4503599627370496 bytes into this process.*address space/);
    return true;
  });
  assert.equal(buf.mapCount, 0);
  await att.detach();
  buf.put();
  assert.equal(buf.released, true);
  assert.equal(openFdCount(), fds);
});

test('system heap: storage above the file size limit (ulimit -f) fails at map with EFBIG naming RLIMIT_FSIZE; the process survives SIGXFSZ', async () => {
  const r = await runChild(`
    const buf = m.systemHeap.allocate(8 << 20, { name: 'over-fsize' });
    const att = await buf.attach(new m.CpuDevice());
    try { await att.map('bidirectional'); out({ mapped: true }); }
    catch (e) { out({ code: e.code, op: e.op, syscall: e.syscall, message: e.message }); }
    const small = m.systemHeap.allocate(4096);
    const a2 = await small.attach(new m.CpuDevice());
    await a2.map('bidirectional');
    out({ small: 'mapped' });
    await a2.detach(); small.put(); await att.detach(); buf.put();`, [], { shell: 'ulimit -f 2048' });
  assert.equal(r.signal, null, r.stderr);
  assert.equal(r.code, 0, r.stderr);
  const [big, small] = r.json;
  assert.equal(big!.code, 'EFBIG', JSON.stringify(big));
  assert.equal(big!.op, 'map');
  assert.equal(big!.syscall, 'ftruncate');
  assert.match(String(big!.message), /RLIMIT_FSIZE, "ulimit -f": \d+ bytes/);
  assert.deepEqual(small, { small: 'mapped' }, 'a buffer within the limit still maps');
});
