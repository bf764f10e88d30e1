/**
 * Mappings and their ArrayBuffer views: lifetime, sharing, seals, GC, worker threads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { Worker } from 'node:worker_threads';
import { thrown } from './util.js';
import { native, type MappingHandle } from '../../src/native/binding.js';

const K = native.constants;
const PAGE = K.PAGE_SIZE;
const RW = K.PROT_READ | K.PROT_WRITE;
const BINDING_URL = new URL('../../src/native/binding.js', import.meta.url).href;


/** A memfd of `size` bytes, closed after fn. */
function withMemfd<T>(size: number, fn: (fd: number) => T, flags = 0): T {
  const fd = native.memfdCreate('mmap-test', flags);
  try {
    native.ftruncate(fd, size);
    return fn(fd);
  } finally {
    native.close(fd);
  }
}

/** Runs an ES module in a child `node --expose-gc`; returns its last stdout line as JSON. */
function runChild(body: string): unknown {
  const code = `const { native } = await import(${JSON.stringify(BINDING_URL)});\n${body}`;
  const r = spawnSync(process.execPath, ['--expose-gc', '--input-type=module', '-e', code], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(r.status, 0, `child failed (${r.status} ${r.signal}): ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1] ?? 'null');
}

test('mmap: address, length, a view reads and writes the file', () => {
  withMemfd(2 * PAGE, (fd) => {
    const h = native.mmap(fd, 2 * PAGE, 0, RW, K.MAP_SHARED);
    assert.equal(typeof native.mappingAddress(h), 'bigint');
    assert.equal(native.mappingAddress(h) % BigInt(PAGE), 0n);
    assert.equal(native.mappingLength(h), 2 * PAGE);
    const ab = native.mappingView(h, PAGE, PAGE);
    assert.ok(ab instanceof ArrayBuffer);
    assert.equal(ab.byteLength, PAGE);
    new Uint8Array(ab).set([1, 2, 3]);
    // The bytes are the file's: read them back with pread through node:fs.
    const back = Buffer.alloc(3);
    fs.readSync(fd, back, 0, 3, PAGE);
    assert.deepEqual([...back], [1, 2, 3]);
    native.detachView(ab);
    native.munmap(h);
    assert.equal(native.mappingUnmapped(h), true);
  });
});

test('a write through one view is read through another mapping of the same memfd', () => {
  withMemfd(PAGE, (fd) => {
    const h1 = native.mmap(fd, PAGE, 0, RW, K.MAP_SHARED);
    const h2 = native.mmap(fd, PAGE, 0, K.PROT_READ, K.MAP_SHARED);
    assert.notEqual(native.mappingAddress(h1), native.mappingAddress(h2));
    const w = new Uint8Array(native.mappingView(h1, 0, PAGE));
    const r = new Uint8Array(native.mappingView(h2, 0, PAGE));
    w[0] = 0xab;
    w[PAGE - 1] = 0xcd;
    assert.equal(r[0], 0xab);
    assert.equal(r[PAGE - 1], 0xcd);
    native.detachView(w.buffer as ArrayBuffer);
    native.detachView(r.buffer as ArrayBuffer);
    native.munmap(h1);
    native.munmap(h2);
  });
});

test('several views over the same bytes coexist and detach independently', () => {
  withMemfd(PAGE, (fd) => {
    const h = native.mmap(fd, PAGE, 0, RW, K.MAP_SHARED);
    const a = native.mappingView(h, 0, PAGE);
    const b = native.mappingView(h, 0, PAGE);
    const c = native.mappingView(h, 16, 16);
    new Uint8Array(a)[20] = 99;
    assert.equal(new Uint8Array(b)[20], 99);
    assert.equal(new Uint8Array(c)[4], 99);
    native.detachView(a);
    assert.equal(a.byteLength, 0);
    assert.equal(b.byteLength, PAGE);
    assert.equal(new Uint8Array(b)[20], 99);
    native.munmap(h);
    native.detachView(b);
    assert.equal(native.mappingUnmapped(h), false);
    native.detachView(c);
    assert.equal(native.mappingUnmapped(h), true);
  });
});

test('detachView: byteLength 0, idempotent; unmapped only after munmap AND every detach', () => {
  withMemfd(PAGE, (fd) => {
    const h = native.mmap(fd, PAGE, 0, RW, K.MAP_SHARED);
    const v1 = native.mappingView(h, 0, PAGE);
    const v2 = native.mappingView(h, 0, 8);
    const typed = new Uint32Array(v1);
    native.detachView(v1);
    assert.equal(v1.byteLength, 0);
    assert.equal(typed.length, 0);
    native.detachView(v1); // idempotent
    assert.equal(native.mappingUnmapped(h), false); // owner still holds it
    native.munmap(h);
    assert.equal(native.mappingUnmapped(h), false); // v2 still holds it
    native.munmap(h); // idempotent
    native.detachView(v2);
    assert.equal(native.mappingUnmapped(h), true);
    assert.equal(v2.byteLength, 0);
    native.detachView(v2);
    // The handle itself stays readable.
    assert.equal(native.mappingLength(h), PAGE);
  });
});

test('a handle after munmap refuses new views and madvise with EBADF', () => {
  withMemfd(PAGE, (fd) => {
    const h = native.mmap(fd, PAGE, 0, RW, K.MAP_SHARED);
    native.munmap(h);
    assert.equal(thrown(() => native.mappingView(h, 0, 1)).code, 'EBADF');
    assert.equal(thrown(() => native.madvise(h, 0, PAGE, K.MADV_WILLNEED)).code, 'EBADF');
  });
});

test('mappingView validates its range; PROT_NONE mappings give no view', () => {
  withMemfd(2 * PAGE, (fd) => {
    const h = native.mmap(fd, 2 * PAGE, 0, RW, K.MAP_SHARED);
    assert.equal(thrown(() => native.mappingView(h, PAGE, PAGE + 1)).code, 'EINVAL');
    assert.equal(thrown(() => native.mappingView(h, 2 * PAGE + 1, 0)).code, 'EINVAL');
    assert.equal(thrown(() => native.mappingView(h, -1, 1)).code, 'EINVAL');
    const empty = native.mappingView(h, 2 * PAGE, 0);
    assert.equal(empty.byteLength, 0);
    native.detachView(empty);
    native.munmap(h);
    assert.equal(native.mappingUnmapped(h), true);

    const none = native.mmap(fd, PAGE, 0, K.PROT_NONE, K.MAP_SHARED);
    assert.equal(thrown(() => native.mappingView(none, 0, PAGE)).code, 'EACCES');
    native.munmap(none);
    assert.equal(native.mappingUnmapped(none), true);
  });
});

test('mmap errors: bad fd, zero length, unaligned offset', () => {
  const e = thrown(() => native.mmap(-1, PAGE, 0, RW, K.MAP_SHARED));
  assert.equal(e.code, 'EBADF');
  assert.equal(e.syscall, 'mmap');
  withMemfd(PAGE, (fd) => {
    assert.equal(thrown(() => native.mmap(fd, 0, 0, RW, K.MAP_SHARED)).code, 'EINVAL');
    assert.equal(thrown(() => native.mmap(fd, PAGE, 1, RW, K.MAP_SHARED)).code, 'EINVAL');
  });
});

test('madvise on page-aligned ranges; kernel and range errors', () => {
  withMemfd(4 * PAGE, (fd) => {
    const h = native.mmap(fd, 4 * PAGE, 0, RW, K.MAP_SHARED);
    native.madvise(h, 0, 4 * PAGE, K.MADV_WILLNEED);
    native.madvise(h, PAGE, PAGE, K.MADV_POPULATE_WRITE);
    const un = thrown(() => native.madvise(h, 1, PAGE, K.MADV_WILLNEED));
    assert.equal(un.code, 'EINVAL');
    assert.equal(un.syscall, 'madvise');
    const out = thrown(() => native.madvise(h, 0, 5 * PAGE, K.MADV_WILLNEED));
    assert.equal(out.code, 'EINVAL');
    assert.equal(out.syscall, undefined);
    native.munmap(h);
  });
});

test('F_SEAL_WRITE: EBUSY while a writable shared mapping exists, fine after munmap + detach', () => {
  withMemfd(PAGE, (fd) => {
    const h = native.mmap(fd, PAGE, 0, RW, K.MAP_SHARED);
    const view = native.mappingView(h, 0, PAGE);
    new Uint8Array(view)[0] = 42;
    const busy = thrown(() => native.addSeals(fd, K.F_SEAL_WRITE));
    assert.equal(busy.code, 'EBUSY');
    assert.equal(busy.syscall, 'fcntl');
    native.munmap(h);
    assert.equal(thrown(() => native.addSeals(fd, K.F_SEAL_WRITE)).code, 'EBUSY'); // the view
    native.detachView(view);
    assert.equal(native.mappingUnmapped(h), true);
    native.addSeals(fd, K.F_SEAL_WRITE);
    assert.equal(native.getSeals(fd) & K.F_SEAL_WRITE, K.F_SEAL_WRITE);
    // Now only read-only shared mappings are allowed.
    assert.equal(thrown(() => native.mmap(fd, PAGE, 0, RW, K.MAP_SHARED)).code, 'EPERM');
    const ro = native.mmap(fd, PAGE, 0, K.PROT_READ, K.MAP_SHARED);
    const rv = native.mappingView(ro, 0, PAGE);
    assert.equal(new Uint8Array(rv)[0], 42);
    native.detachView(rv);
    native.munmap(ro);
  }, K.MFD_ALLOW_SEALING);
});

test('a view collected without detach lets the munmap happen (child with --expose-gc)', () => {
  const result = runChild(`
    const K = native.constants;
    const fd = native.memfdCreate('gc', 0);
    native.ftruncate(fd, K.PAGE_SIZE);
    const rw = K.PROT_READ | K.PROT_WRITE;
    const settle = async (done, rounds = 200) => {
      for (let i = 0; i < rounds && !done(); i++) {
        globalThis.gc();
        await new Promise((r) => setImmediate(r));
      }
      return done();
    };
    const fs = await import('node:fs');
    const inMaps = (addr) => fs.readFileSync('/proc/self/maps', 'utf8').split('\\n')
      .some((l) => l.length > 0 && BigInt('0x' + l.split('-')[0]) === addr);

    // 1. a view dropped without detach, handle munmap'ed
    const h = native.mmap(fd, K.PAGE_SIZE, 0, rw, K.MAP_SHARED);
    (() => { new Uint8Array(native.mappingView(h, 0, K.PAGE_SIZE))[0] = 1; })();
    native.munmap(h);
    const heldByView = !native.mappingUnmapped(h);
    const viewCollected = await settle(() => native.mappingUnmapped(h));

    // 2. a handle dropped without munmap (no view): its finalizer unmaps
    let addr2;
    (() => { const h2 = native.mmap(fd, K.PAGE_SIZE, 0, rw, K.MAP_SHARED); addr2 = native.mappingAddress(h2); })();
    const mapped2 = inMaps(addr2);
    const handleCollected = await settle(() => !inMaps(addr2));

    // 3. a handle dropped while a view lives: mapped until the view goes too
    let keep, addr3;
    (() => {
      const h3 = native.mmap(fd, K.PAGE_SIZE, 0, rw, K.MAP_SHARED);
      addr3 = native.mappingAddress(h3);
      keep = native.mappingView(h3, 0, 8);
    })();
    await settle(() => false, 20);
    const viewKeepsMapping = inMaps(addr3);
    new Uint8Array(keep)[1] = 2;
    const viewStillWorks = new Uint8Array(keep)[1] === 2 && new Uint8Array(keep)[0] === 1;
    keep = null;
    const lastGone = await settle(() => !inMaps(addr3));

    native.close(fd);
    console.log(JSON.stringify({
      heldByView, viewCollected, mapped2, handleCollected, viewKeepsMapping, viewStillWorks, lastGone,
    }));
  `);
  assert.deepEqual(result, {
    heldByView: true,
    viewCollected: true,
    mapped2: true,
    handleCollected: true,
    viewKeepsMapping: true,
    viewStillWorks: true,
    lastGone: true,
  });
});

test('the addon loads in a worker thread; a mapping made there is shared with this thread', async () => {
  const worker = new Worker(
    `
    const { parentPort, workerData } = require('node:worker_threads');
    (async () => {
      const { native } = await import(workerData.url);
      const K = native.constants;
      const fd = native.memfdCreate('worker', 0);
      native.ftruncate(fd, K.PAGE_SIZE);
      const h = native.mmap(fd, K.PAGE_SIZE, 0, K.PROT_READ | K.PROT_WRITE, K.MAP_SHARED);
      const view = new Uint8Array(native.mappingView(h, 0, K.PAGE_SIZE));
      view[7] = 77;
      // Left behind on purpose (a live view, an unmunmap'ed handle, an open unref'd poll):
      // the worker's teardown must release them without crashing.
      const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
      native.pollStart(b, K.UV_READABLE, () => {});
      globalThis.keep = { h, view };
      parentPort.postMessage({ fd, a, b, value: view[7] });
    })().catch((err) => { parentPort.postMessage({ error: String(err && err.stack) }); });
    `,
    { eval: true, workerData: { url: BINDING_URL } },
  );
  const msg = await new Promise<{ fd: number; a: number; b: number; value: number; error?: string }>(
    (resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    },
  );
  assert.equal(msg.error, undefined);
  const exitCode = await new Promise<number>((resolve) => worker.once('exit', resolve));
  assert.equal(exitCode, 0);
  try {
    assert.equal(msg.value, 77);
    // Descriptors are process-wide: map the worker's memfd here.
    const h: MappingHandle = native.mmap(msg.fd, PAGE, 0, K.PROT_READ, K.MAP_SHARED);
    const v = native.mappingView(h, 0, PAGE);
    assert.equal(new Uint8Array(v)[7], 77);
    native.detachView(v);
    native.munmap(h);
  } finally {
    native.close(msg.fd);
    native.close(msg.a);
    native.close(msg.b);
  }
});

test('a worker terminated while a ref\'d poll and views are live tears down cleanly', async () => {
  const worker = new Worker(
    `
    const { parentPort, workerData } = require('node:worker_threads');
    (async () => {
      const { native } = await import(workerData.url);
      const K = native.constants;
      const fd = native.memfdCreate('worker2', 0);
      native.ftruncate(fd, K.PAGE_SIZE);
      const h = native.mmap(fd, K.PAGE_SIZE, 0, K.PROT_READ | K.PROT_WRITE, K.MAP_SHARED);
      const views = [native.mappingView(h, 0, 16), native.mappingView(h, 0, K.PAGE_SIZE)];
      const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
      const p = native.pollStart(b, K.UV_READABLE, () => {});
      native.pollRef(p, true); // keeps the worker alive until terminate()
      const closed = native.pollStart(a, K.UV_WRITABLE, () => {});
      native.pollClose(closed); // a close still pending at teardown
      globalThis.keep = { h, views, p };
      parentPort.postMessage({ fd, a, b });
    })();
    `,
    { eval: true, workerData: { url: BINDING_URL } },
  );
  const msg = await new Promise<{ fd: number; a: number; b: number }>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  const exitCode = await worker.terminate();
  assert.equal(exitCode, 1);
  native.close(msg.fd);
  native.close(msg.a);
  native.close(msg.b);
});
