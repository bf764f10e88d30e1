/**
 * Case 6: CPU views, uncounted against counted. A child process maps a memfd, makes a view of
 * all of it, reads one byte, detaches and unmaps, in a loop (bench/receivers/views.ts); the
 * same child runs once with the views of dmabuf_views.node (uncounted: V8 does not count
 * them as external memory) and once with DMABUF_COUNTED_VIEWS=1 (Node-API external
 * ArrayBuffers, counted). Reported: the median time of one round, and the garbage
 * collections per round (major: mark-compact or incremental marking).
 */
import { spawn } from 'node:child_process';
import { MiB, fmtSize, receiver, stats, track, type BenchCase, type CaseResult, type Row } from '../harness.js';

interface ChildResult {
  viewsUncounted: boolean;
  countedViewsReason: string;
  times: number[];
  gc: { count: number; major: number; ms: number };
}

async function runChild(size: number, ops: number, counted: boolean): Promise<ChildResult> {
  const env = { ...process.env };
  if (counted) env['DMABUF_COUNTED_VIEWS'] = '1';
  else delete env['DMABUF_COUNTED_VIEWS'];
  const child = track(spawn(process.execPath, [receiver('views'), String(size), String(ops)], { env, stdio: ['ignore', 'pipe', 'inherit'] }));
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  if (code !== 0) throw new Error(`views child exited with ${code}`);
  return JSON.parse(out.trim().split('\n').pop()!) as ChildResult;
}

export const views: BenchCase = {
  name: 'views',
  async run(ctx): Promise<CaseResult> {
    const sizes = ctx.options.sizes.filter((s) => s >= 16 * MiB);
    const ops = ctx.options.quick ? 100 : 500;
    const rows: Row[] = [];
    const notes: string[] = [`${ops} rounds per size and kind, after 10 untimed ones; GCs counted with a PerformanceObserver in the child.`];
    for (const size of sizes.length ? sizes : [64 * MiB]) {
      for (const counted of [false, true]) {
        const r = await runChild(size, ops, counted);
        const method = counted ? 'counted views' : 'uncounted views';
        if (!counted && !r.viewsUncounted) {
          notes.push(`uncounted views unavailable (${r.countedViewsReason}): both series are counted views`);
        }
        rows.push({
          case: 'views', method, size, metric: 'map+view+read 1 byte+detach+unmap', unit: 'ns', stats: stats(r.times),
          gc: { perHandoff: r.gc.count / ops, majorPerHandoff: r.gc.major / ops, msPerHandoff: r.gc.ms / ops },
        });
        const line = `${method} ${fmtSize(size)}: ${(stats(r.times).median / 1e3).toFixed(1)} µs per round, ${(r.gc.count / ops).toFixed(3)} GCs per round (${(r.gc.major / ops).toFixed(3)} major, ${(r.gc.ms / ops).toFixed(3)} ms)`;
        ctx.log(`  ${line}`);
        notes.push(line);
      }
    }
    return { name: 'views', title: 'CPU views: uncounted against counted', description: 'bench/cases/views.ts', rows, notes, targets: [] };
  },
};
