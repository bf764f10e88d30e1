/**
 * The in-process costs of the framework's calls (bench/inprocess.ts), as a case of the
 * harness: export, fd/get/put, attach/detach, and first and repeated maps per size against a
 * plain mmap of a memfd of the same size.
 */
import { MiB, type BenchCase, type CaseResult, type Row } from '../harness.js';
import { runInProcess } from '../inprocess.js';

export const inprocess: BenchCase = {
  name: 'inprocess',
  async run(ctx): Promise<CaseResult> {
    const sizes = ctx.options.sizes.filter((s) => s <= 64 * MiB);
    const reps = ctx.options.quick ? 10 : 30;
    const raw = await runInProcess(sizes.length ? sizes : [4096], reps);
    const rows: Row[] = [];
    for (const r of raw) {
      const one = (ns: number) => ({ n: reps, median: ns, min: NaN, p90: NaN, max: NaN });
      rows.push({ case: 'inprocess', method: r.case, size: r.size, metric: 'median', unit: 'ns', stats: one(r.medianUs * 1e3) });
      if (r.baselineUs !== undefined) rows.push({ case: 'inprocess', method: 'plain mmap of a memfd + touch 1 byte', size: r.size, metric: 'median', unit: 'ns', stats: one(r.baselineUs * 1e3) });
    }
    // The baseline appears once per map row; keep one.
    const seen = new Set<string>();
    const unique = rows.filter((r) => { const k = `${r.method}|${r.size}`; if (seen.has(k)) return false; seen.add(k); return true; });
    return {
      name: 'inprocess',
      title: 'In-process costs of the calls',
      description: 'bench/inprocess.ts',
      rows: unique,
      notes: [`Medians of ${reps} repetitions (x10 for the 4 KiB call costs), in one thread; only medians are recorded by this case.`],
      targets: [],
    };
  },
};
