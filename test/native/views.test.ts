/**
 * Uncounted CPU views (dmabuf_views.node, see native/views.h): V8 does not count them as
 * external memory, so mapping and viewing large buffers starts no garbage collection; their
 * lifetime (detach, collection, transfer, worker teardown) is the same as counted views'.
 *
 * Tests that need the C++ addon are skipped when it is not built for this Node, or when
 * DMABUF_COUNTED_VIEWS=1 is set; the rest pass either way.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { viewsAddonPaths } from '../../src/native/addon.js';
import { thrown } from './util.js';
import { countedViewsReason, native, viewsUncounted } from '../../src/native/binding.js';

const K = native.constants;
const PAGE = K.PAGE_SIZE;
const GiB = 2 ** 30;
const RW = K.PROT_READ | K.PROT_WRITE;
const BINDING_URL = new URL('../../src/native/binding.js', import.meta.url).href;
/**
 * The views addon this Node loads: the build from source when it was built by this Node, else
 * the prebuilt one for this Node's ABI (what the loader does too), else the build from source.
 */
const VIEWS_ADDON = ((): string => {
  const built = fileURLToPath(new URL('../../../build/Release/dmabuf_views.node', import.meta.url));
  const load = createRequire(import.meta.url);
  for (const file of viewsAddonPaths()) {
    try {
      if ((load(file) as { moduleVersion?: number }).moduleVersion === Number(process.versions.modules)) return file;
    } catch {
      // not this one
    }
  }
  return built;
})();
const BUILT = existsSync(VIEWS_ADDON);
const NEEDS_BUILT = BUILT ? false : 'dmabuf_views.node is not built';
const NEEDS_UNCOUNTED = viewsUncounted ? false : `views are counted here: ${countedViewsReason}`;
/** Node 20 has ArrayBuffer.prototype.transfer behind a V8 flag; later versions have it on. */
const TRANSFER_FLAGS = typeof (ArrayBuffer.prototype as { transfer?: unknown }).transfer === 'function'
  ? [] : ['--harmony-rab-gsab-transfer'];

/** Code shared by the children: the binding, /proc/self/maps, and a GC loop. */
const PRELUDE = `
const { native, viewsUncounted, countedViewsReason } = await import(${JSON.stringify(BINDING_URL)});
const fs = await import('node:fs');
const K = native.constants;
const RW = K.PROT_READ | K.PROT_WRITE;
const inMaps = (addr) => fs.readFileSync('/proc/self/maps', 'utf8').split('\\n')
  .some((l) => l.length > 0 && BigInt('0x' + l.split('-')[0]) === addr);
const settle = async (done, rounds = 200) => {
  for (let i = 0; i < rounds && !done(); i++) {
    globalThis.gc?.();
    await new Promise((r) => setImmediate(r));
    // Any view made polls the views whose store was held elsewhere.
    native.detachView(native.mappingView(scratch, 0, 1));
  }
  return done();
};
const scratchFd = native.memfdCreate('scratch', 0);
native.ftruncate(scratchFd, K.PAGE_SIZE);
const scratch = native.mmap(scratchFd, K.PAGE_SIZE, 0, K.PROT_READ, K.MAP_SHARED);
`;

/** Runs an ES module in a child node; returns its last stdout line as JSON. */
function runChild(body: string, options: { counted?: boolean; execArgv?: string[]; before?: string } = {}): unknown {
  const env = { ...process.env };
  if (options.counted) env['DMABUF_COUNTED_VIEWS'] = '1';
  else delete env['DMABUF_COUNTED_VIEWS'];
  const r = spawnSync(process.execPath, [...(options.execArgv ?? []), '--input-type=module', '-e', `${options.before ?? ''}\n${PRELUDE}\n${body}`], {
    encoding: 'utf8',
    timeout: 120_000,
    env,
  });
  assert.equal(r.status, 0, `child failed (${r.status} ${r.signal}): ${r.stderr}`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1] ?? 'null');
}

/** The start addresses of this process's mappings (/proc/self/maps). */
function readMaps(): bigint[] {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n').filter((l) => l.length > 0).map((l) => BigInt(`0x${l.split('-')[0]}`));
}

/** Whether a mapping starts at `addr`. */
function inMaps(addr: bigint): boolean {
  return readMaps().includes(addr);
}

/** A memfd of `size` bytes, closed after fn. */
function withMemfd<T>(size: number, fn: (fd: number) => T): T {
  const fd = native.memfdCreate('views-test', 0);
  try {
    native.ftruncate(fd, size);
    return fn(fd);
  } finally {
    native.close(fd);
  }
}

test('views are uncounted when dmabuf_views.node is built for this Node; DMABUF_COUNTED_VIEWS=1 makes them counted', { skip: NEEDS_BUILT }, () => {
  const body = 'console.log(JSON.stringify({ viewsUncounted, countedViewsReason }));';
  assert.deepEqual(runChild(body), { viewsUncounted: true, countedViewsReason: '' });
  assert.deepEqual(runChild(body, { counted: true }), {
    viewsUncounted: false,
    countedViewsReason: 'DMABUF_COUNTED_VIEWS=1 is set',
  });
});

test('a dmabuf_views.node built for another Node ABI is refused before it calls into V8; views stay counted and work', { skip: NEEDS_BUILT }, () => {
  const r = runChild(`
    const h = native.mmap(scratchFd, K.PAGE_SIZE, 0, K.PROT_READ, K.MAP_SHARED);
    const view = native.mappingView(h, 0, K.PAGE_SIZE);
    const length = view.byteLength;
    native.detachView(view);
    native.munmap(h);
    console.log(JSON.stringify({ viewsUncounted, reason: countedViewsReason, length, unmapped: native.mappingUnmapped(h) }));
  `, { before: "Object.defineProperty(process.versions, 'modules', { value: '1' });" }) as { viewsUncounted: boolean; reason: string; length: number; unmapped: boolean };
  assert.equal(r.viewsUncounted, false);
  assert.match(r.reason, /^dmabuf_views\.node was built for Node ABI \d+ \(Node [\d.]+\); this Node's is 1$/);
  assert.equal(r.length, PAGE);
  assert.equal(r.unmapped, true);
});

test('1 GiB views: uncounted ones start no major GC, counted ones start "external memory pressure" GCs', { skip: NEEDS_BUILT }, (t) => {
  const body = `
    const { PerformanceObserver, constants } = await import('node:perf_hooks');
    const size = ${GiB};
    const rounds = 100;
    const fd = native.memfdCreate('gc', 0);
    native.ftruncate(fd, size);
    const round = () => {
      const h = native.mmap(fd, size, 0, RW, K.MAP_SHARED);
      const view = native.mappingView(h, 0, size);
      const byte = new Uint8Array(view)[size - 1];
      native.detachView(view);
      native.munmap(h);
      return byte;
    };
    round();
    const gc = { all: 0, major: 0 };
    const obs = new PerformanceObserver((list) => {
      for (const e of list.getEntries()) {
        gc.all++;
        if (e.detail.kind === constants.NODE_PERFORMANCE_GC_MAJOR || e.detail.kind === constants.NODE_PERFORMANCE_GC_INCREMENTAL) gc.major++;
      }
    });
    obs.observe({ entryTypes: ['gc'] });
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < rounds; i++) round();
    const usPerRound = Number(process.hrtime.bigint() - t0) / rounds / 1000;
    await new Promise((r) => setTimeout(r, 100));
    console.log(JSON.stringify({ viewsUncounted, ...gc, usPerRound }));
  `;
  const uncounted = runChild(body) as { viewsUncounted: boolean; all: number; major: number; usPerRound: number };
  const counted = runChild(body, { counted: true }) as typeof uncounted;
  t.diagnostic(`100 rounds of mmap 1 GiB + view + read 1 byte + detach + munmap: uncounted ${uncounted.all} GCs (${uncounted.major} major), ${uncounted.usPerRound.toFixed(1)} µs per round; counted ${counted.all} GCs (${counted.major} major), ${counted.usPerRound.toFixed(1)} µs per round`);
  assert.equal(uncounted.viewsUncounted, true);
  assert.equal(uncounted.major, 0);
  assert.equal(counted.viewsUncounted, false);
  assert.ok(counted.major > 0, 'counted views should start major GCs');
});

test('detachView of an uncounted view: byteLength 0, reads undefined, idempotent; unmapped once the owner and every view are gone', { skip: NEEDS_UNCOUNTED }, () => {
  withMemfd(GiB, (fd) => {
    const h = native.mmap(fd, GiB, 0, RW, K.MAP_SHARED);
    const addr = native.mappingAddress(h);
    const a = native.mappingView(h, 0, GiB);
    const b = native.mappingView(h, GiB - PAGE, PAGE);
    const typed = new Uint8Array(a);
    typed[GiB - 1] = 42;
    assert.equal(new Uint8Array(b)[PAGE - 1], 42);
    native.detachView(a);
    assert.equal(a.byteLength, 0);
    assert.equal(typed.length, 0);
    assert.equal(typed[GiB - 1], undefined);
    native.detachView(a);
    native.munmap(h);
    assert.equal(native.mappingUnmapped(h), false); // b holds it
    assert.equal(inMaps(addr), true);
    assert.equal(new Uint8Array(b)[PAGE - 1], 42);
    native.detachView(b);
    assert.equal(native.mappingUnmapped(h), true);
    assert.equal(inMaps(addr), false);
    native.detachView(b);
    assert.equal(b.byteLength, 0);
  });
});

test('uncounted views collected without detach: the region leaves /proc/self/maps once the handle and every view are gone (--expose-gc)', { skip: NEEDS_BUILT }, () => {
  const result = runChild(`
    const size = ${GiB};
    const fd = native.memfdCreate('gc', 0);
    native.ftruncate(fd, size);

    // 1. views dropped without detach, handle munmap'ed
    const h1 = native.mmap(fd, size, 0, RW, K.MAP_SHARED);
    const addr1 = native.mappingAddress(h1);
    (() => {
      for (let i = 0; i < 3; i++) new Uint8Array(native.mappingView(h1, 0, size))[i] = i + 1;
    })();
    native.munmap(h1);
    const heldByViews = inMaps(addr1) && !native.mappingUnmapped(h1);
    const viewsCollected = await settle(() => !inMaps(addr1));

    // 2. a handle dropped without munmap while a view lives: mapped until the view goes too
    let keep, addr2;
    (() => {
      const h2 = native.mmap(fd, size, 0, RW, K.MAP_SHARED);
      addr2 = native.mappingAddress(h2);
      keep = new Uint8Array(native.mappingView(h2, 0, size));
    })();
    await settle(() => false, 20);
    const viewKeepsMapping = inMaps(addr2) && keep[0] === 1 && keep[2] === 3;
    keep = null;
    const lastGone = await settle(() => !inMaps(addr2));
    console.log(JSON.stringify({ viewsUncounted, heldByViews, viewsCollected, viewKeepsMapping, lastGone }));
  `, { execArgv: ['--expose-gc'] });
  assert.deepEqual(result, { viewsUncounted: true, heldByViews: true, viewsCollected: true, viewKeepsMapping: true, lastGone: true });
});

test('a view moved by ArrayBuffer.prototype.transfer keeps its memory mapped until the new buffer is gone', { skip: NEEDS_BUILT }, () => {
  const body = `
    const size = 16 * K.PAGE_SIZE;
    const fd = native.memfdCreate('transfer', 0);
    native.ftruncate(fd, size);
    const h = native.mmap(fd, size, 0, RW, K.MAP_SHARED);
    const addr = native.mappingAddress(h);
    let moved;
    (() => {
      const view = native.mappingView(h, 0, size);
      new Uint8Array(view)[7] = 77;
      moved = view.transfer();
      native.detachView(view); // already detached by transfer: a no-op
    })();
    native.munmap(h);
    await settle(() => false, 20); // the original buffer object is collected
    const stillMapped = inMaps(addr) && new Uint8Array(moved)[7] === 77;
    moved = null;
    const goneAfter = await settle(() => !inMaps(addr));
    console.log(JSON.stringify({ viewsUncounted, stillMapped, goneAfter }));
  `;
  const expected = { stillMapped: true, goneAfter: true };
  assert.deepEqual(runChild(body, { execArgv: ['--expose-gc', ...TRANSFER_FLAGS] }), { viewsUncounted: true, ...expected });
  // Counted views behave the same (their store's deleter is what unmaps).
  assert.deepEqual(runChild(body, { counted: true, execArgv: ['--expose-gc', ...TRANSFER_FLAGS] }), { viewsUncounted: false, ...expected });
});

test('postMessage and structuredClone never move a view to another owner (untransferable)', { skip: Number(process.versions.node.split('.')[0]) > 22 ? 'Node 23 and later: marking a view untransferable would make Node-API\'s detach abort, so views are not marked (a transfer is handled by the addon instead)' : false }, () => {
  withMemfd(PAGE, (fd) => {
    const h = native.mmap(fd, PAGE, 0, RW, K.MAP_SHARED);
    const view = native.mappingView(h, 0, PAGE);
    new Uint8Array(view)[3] = 33;
    let copy: ArrayBuffer | undefined;
    try {
      copy = structuredClone(view, { transfer: [view] });
    } catch (err) {
      assert.equal((err as Error).name, 'DataCloneError'); // Node 21 and later refuse
    }
    assert.equal(view.byteLength, PAGE);
    if (copy) {
      assert.equal(new Uint8Array(copy)[3], 33);
      new Uint8Array(copy)[3] = 1;
      assert.equal(new Uint8Array(view)[3], 33); // a copy, not the mapped memory
    }
    native.detachView(view);
    native.munmap(h);
    assert.equal(native.mappingUnmapped(h), true);
  });
});

test('setViewFactory takes only the factory of dmabuf_views.node; null goes back to counted views', { skip: NEEDS_UNCOUNTED }, () => {
  const views = createRequire(import.meta.url)(VIEWS_ADDON) as { factory: object; moduleVersion: number; reason: string };
  assert.equal(views.reason, '');
  assert.equal(views.moduleVersion, Number(process.versions.modules));
  assert.equal(thrown(() => native.setViewFactory({})).code, 'EINVAL');
  assert.equal(thrown(() => native.setViewFactory(native.mmap as unknown as object)).code, 'EINVAL');
  withMemfd(PAGE, (fd) => {
    const h = native.mmap(fd, PAGE, 0, RW, K.MAP_SHARED);
    const uncounted = native.mappingView(h, 0, PAGE);
    try {
      native.setViewFactory(null);
      const counted = native.mappingView(h, 0, PAGE);
      new Uint8Array(counted)[0] = 5;
      assert.equal(new Uint8Array(uncounted)[0], 5);
      native.munmap(h);
      native.detachView(uncounted); // made uncounted, detached as such after the switch
      assert.equal(native.mappingUnmapped(h), false);
      native.detachView(counted);
      assert.equal(native.mappingUnmapped(h), true);
    } finally {
      native.setViewFactory(views.factory);
    }
  });
});

/**
 * In a child process (so that a crash fails the test rather than the runner, and V8 flags
 * reach the worker): runs `body` in a worker (with `native`, `K`, `RW`, `post`), waits for its
 * first message and its exit, and returns them with the worker's `addrs` still mapped.
 */
function inWorker(body: string, terminate: boolean): { exitCode: number; error?: string; viewsUncounted: boolean; left: string[] } {
  const workerCode = `
    (async () => {
      const { parentPort, workerData } = await import('node:worker_threads');
      const post = (m) => parentPort.postMessage(m);
      const { native, viewsUncounted } = await import(workerData.url);
      const K = native.constants;
      const RW = K.PROT_READ | K.PROT_WRITE;
      try {
        ${body}
      } catch (err) {
        post({ error: String(err && err.stack) });
      }
    })();
  `;
  return runChild(`
    const { Worker } = await import('node:worker_threads');
    const worker = new Worker(${JSON.stringify(workerCode)}, { eval: true, workerData: { url: ${JSON.stringify(BINDING_URL)} } });
    const msg = await new Promise((resolve, reject) => { worker.once('message', resolve); worker.once('error', reject); });
    const exitCode = ${terminate} ? await worker.terminate() : await new Promise((resolve) => worker.once('exit', resolve));
    const left = (msg.addrs ?? []).filter((a) => inMaps(BigInt(a)));
    console.log(JSON.stringify({ exitCode, error: msg.error, viewsUncounted: msg.viewsUncounted, left }));
  `, { execArgv: TRANSFER_FLAGS }) as { exitCode: number; error?: string; viewsUncounted: boolean; left: string[] };
}

/** Views made, detached, dropped, transferred and left alive in a worker. */
const WORKER_VIEWS = `
  const size = 64 * 1024 * 1024;
  const fd = native.memfdCreate('worker-views', 0);
  native.ftruncate(fd, size);
  const addrs = [];
  const keep = [];
  for (let i = 0; i < 20; i++) {
    const h = native.mmap(fd, size, 0, RW, K.MAP_SHARED);
    addrs.push(String(native.mappingAddress(h)));
    const a = native.mappingView(h, 0, size);
    new Uint8Array(a)[i] = i;
    if (i % 4 === 0) native.detachView(a);
    if (i % 4 === 1) new Uint8Array(native.mappingView(h, 0, size))[0] = 1; // dropped
    if (i % 4 === 2) keep.push(a, h); // left alive, handle not munmap'ed
    if (i % 4 === 3 && typeof a.transfer === 'function') keep.push(a.transfer()); // lingers
    if (i % 4 !== 2) native.munmap(h);
  }
  native.close(fd);
  globalThis.keep = keep;
`;

test('views made and dropped in a worker that exits: no crash, and every mapping of the worker is gone', () => {
  const r = inWorker(`${WORKER_VIEWS}\npost({ viewsUncounted, addrs });`, false);
  assert.equal(r.error, undefined);
  assert.equal(r.exitCode, 0);
  assert.equal(r.viewsUncounted, BUILT);
  assert.deepEqual(r.left, []);
});

test('a worker terminated with live, dropped and transferred views tears down cleanly', () => {
  const r = inWorker(`${WORKER_VIEWS}\nsetInterval(() => {}, 1000);\npost({ viewsUncounted, addrs });`, true);
  assert.equal(r.error, undefined);
  assert.equal(r.exitCode, 1);
  assert.deepEqual(r.left, []);
});
