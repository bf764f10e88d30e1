/**
 * The views case's child: maps a memfd of SIZE bytes, makes a CPU view of all of it, reads
 * one byte, detaches the view and unmaps, OPS times in a row (after a few untimed rounds), and
 * prints one JSON line: the median time of a round, and the garbage collections the rounds
 * started. Run it with DMABUF_COUNTED_VIEWS=1 for counted views.
 *
 * usage: node views.js SIZE OPS
 */
import { PerformanceObserver, constants as perfConstants } from 'node:perf_hooks';
import { countedViewsReason, native, viewsUncounted } from '../../src/native/binding.js';

const size = Number(process.argv[2]);
const ops = Number(process.argv[3]);
const c = native.constants;
const fd = native.memfdCreate('bench-views', 0);
native.ftruncate(fd, size);

function round(): number {
  const h = native.mmap(fd, size, 0, c.PROT_READ | c.PROT_WRITE, c.MAP_SHARED);
  const view = native.mappingView(h, 0, size);
  const byte = new Uint8Array(view)[size - 1]!;
  native.detachView(view);
  native.munmap(h);
  return byte;
}

for (let i = 0; i < 10; i++) round();
const gc = { count: 0, major: 0, ms: 0 };
const observer = new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    gc.count++;
    gc.ms += e.duration;
    const kind = (e as unknown as { detail?: { kind?: number } }).detail?.kind;
    if (kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR || kind === perfConstants.NODE_PERFORMANCE_GC_INCREMENTAL) gc.major++;
  }
});
observer.observe({ entryTypes: ['gc'] });
const times: number[] = [];
for (let i = 0; i < ops; i++) {
  const t0 = process.hrtime.bigint();
  round();
  times.push(Number(process.hrtime.bigint() - t0));
}
// GC entries are delivered asynchronously.
await new Promise((r) => setTimeout(r, 100));
observer.disconnect();
native.close(fd);
process.stdout.write(`${JSON.stringify({ viewsUncounted, countedViewsReason, times, gc })}\n`);
