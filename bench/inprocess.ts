/**
 * In-process costs of the framework's calls: export, fd/get/put, attach/detach, and
 * map/unmap per size (first map of a buffer, and a repeated map that reuses the cached
 * mmap). Medians over repetitions; a plain `mmap` of a memfd of the same size, measured in
 * the same run, is the baseline for a map.
 */
import { closeSync } from 'node:fs';
import { CpuDevice, DmaBuf, systemHeap } from '../src/index.js';
import { native } from '../src/native/binding.js';

/** One row of results. */
export interface Row {
  case: string;
  size: number;
  medianUs: number;
  baselineUs?: number;
  ratio?: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

async function time(reps: number, fn: () => Promise<void> | void): Promise<number> {
  const xs: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    xs.push(Number(process.hrtime.bigint() - t0) / 1000);
  }
  return median(xs);
}

/** Runs the in-process cases. */
export async function runInProcess(sizes: number[] = [4096, 65536, 1 << 20, 16 << 20, 64 << 20], reps = 30): Promise<Row[]> {
  const rows: Row[] = [];
  rows.push({ case: 'export+put', size: 4096, medianUs: await time(reps * 10, () => { systemHeap.allocate(4096).put(); }) });
  {
    const buf = systemHeap.allocate(4096);
    rows.push({ case: 'fd+get+put+close', size: 4096, medianUs: await time(reps * 10, async () => {
      const fd = buf.fd();
      const b = await DmaBuf.get(fd);
      b.put();
      closeSync(fd);
    }) });
    const dev = new CpuDevice();
    rows.push({ case: 'attach+detach', size: 4096, medianUs: await time(reps * 10, async () => { await (await buf.attach(dev)).detach(); }) });
    buf.put();
  }
  const c = native.constants;
  for (const size of sizes) {
    const plainMmap = await time(reps, () => {
      const fd = native.memfdCreate('bench', 0);
      native.ftruncate(fd, size);
      const h = native.mmap(fd, size, 0, c.PROT_READ | c.PROT_WRITE, c.MAP_SHARED);
      const ab = native.mappingView(h, 0, size);
      new Uint8Array(ab)[0] = 1;
      native.detachView(ab);
      native.munmap(h);
      native.close(fd);
    });
    const first = await time(reps, async () => {
      const buf = systemHeap.allocate(size);
      const att = await buf.attach(new CpuDevice());
      const sgt = await att.map('bidirectional');
      sgt.segments[0]!.view![0] = 1;
      await att.detach();
      buf.put();
    });
    rows.push({ case: 'first map (export..release, touch 1 byte)', size, medianUs: first, baselineUs: plainMmap, ratio: first / plainMmap });
    const buf = systemHeap.allocate(size);
    const att = await buf.attach(new CpuDevice());
    await att.unmap(await att.map('bidirectional'));
    const again = await time(reps, async () => {
      const sgt = await att.map('bidirectional');
      sgt.segments[0]!.view![0] = 1;
      await att.unmap(sgt);
    });
    rows.push({ case: 'repeated map+unmap (cached mmap)', size, medianUs: again, baselineUs: plainMmap, ratio: again / plainMmap });
    await att.detach();
    buf.put();
  }
  return rows;
}

function fmtSize(n: number): string {
  if (n >= 1 << 20) return `${n / (1 << 20)} MiB`;
  return `${n / 1024} KiB`;
}

/** A Markdown table of rows. */
export function table(rows: Row[]): string {
  const lines = ['| case | size | median µs | baseline µs (plain mmap) | ratio |', '| --- | ---: | ---: | ---: | ---: |'];
  for (const r of rows) {
    lines.push(`| ${r.case} | ${fmtSize(r.size)} | ${r.medianUs.toFixed(1)} | ${r.baselineUs?.toFixed(1) ?? ''} | ${r.ratio?.toFixed(2) ?? ''} |`);
  }
  return lines.join('\n');
}
