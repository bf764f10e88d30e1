/**
 * Case 4: hand-off plus reading every byte (summed as doubles, 8 bytes at a time, the same
 * loop in every receiver and in floor.c), with 4 KiB pages and, where the harness can raise
 * /proc/sys/vm/nr_hugepages (root), with 2 MiB pages. The setting is put back afterwards.
 */
import { HUGE_PAGE, fmtSize, withHugePages, type BenchCase, type CaseResult, type Context, type Row, type Target } from '../harness.js';
import { DmabufMethod, FloorMethod, SabPostMethod, SendMethod, WorkerCopyMethod, compileFloor, type Method } from '../methods.js';
import { median, runSideBySide } from './handoff.js';

/**
 * Huge pages the case needs at once: the dmabuf storage, the receiver's private read mapping
 * (hugetlb reserves pages for a MAP_PRIVATE mapping up front) and the C floor's memfd.
 */
function hugePagesNeeded(ctx: Context): number {
  const max = Math.max(...ctx.options.sizes);
  const pages = Math.ceil(max / HUGE_PAGE);
  return 3 * pages + 8;
}

export const fullread: BenchCase = {
  name: 'fullread',
  async run(ctx): Promise<CaseResult> {
    const notes: string[] = [];
    compileFloor();
    const base: Method[] = [new DmabufMethod(), new FloorMethod(), new SendMethod(), new WorkerCopyMethod(), new SabPostMethod()];
    const hugeDmabuf = new DmabufMethod({ pageSize: HUGE_PAGE });
    const hugeFloor = new FloorMethod({ huge: true });
    let rows: Row[];
    let hugeNote = '';
    const pages = hugePagesNeeded(ctx);
    const r = await withHugePages(pages, async (got) => {
      if (got < pages) notes.push(`asked for ${pages} huge pages, the kernel gave ${got}; sizes that do not fit are skipped`);
      return runSideBySide(ctx, 'fullread', [...base, hugeDmabuf, hugeFloor], 'all', notes);
    });
    if ('skipped' in r) {
      hugeNote = `2 MiB pages: ${r.skipped}`;
      rows = await runSideBySide(ctx, 'fullread', base, 'all', notes);
    } else {
      rows = r.value;
      hugeNote = `2 MiB pages: /proc/sys/vm/nr_hugepages raised to ${r.pages} for this case and put back afterwards; the exporter fills the buffer through a CpuDevice({ pageSize: 2 MiB }), so the system heap allocates hugetlb storage, and the receiver attaches a CpuDevice({ pageSize: 2 MiB }).`;
    }
    notes.push(
      hugeNote,
      'Times as in the hand-off case, but the receiver reads every byte: a Float64Array over the view summed in order (floor.c runs the same loop in C, -O2, no vectorization of the dependent sum). For dmabuf and C the read includes the page faults that build this process\'s page tables; for the copies the pages were already written by the copy.',
    );
    const targets: Target[] = [];
    const sizes = ctx.options.sizes;
    const big = sizes[sizes.length - 1]!;
    const d4 = median(rows, 'dmabuf', big, 'receiver');
    const d2 = median(rows, hugeDmabuf.name, big, 'receiver');
    const f4 = median(rows, 'C floor', big, 'receiver');
    if (d4 && f4) {
      targets.push({
        name: `full read at ${fmtSize(big)} (no target; for the record)`,
        goal: 'report',
        measured: `dmabuf ${(d4 / 1e6).toFixed(1)} ms (4 KiB pages)${d2 ? `, ${(d2 / 1e6).toFixed(1)} ms (2 MiB pages)` : ''}; C floor ${(f4 / 1e6).toFixed(1)} ms; dmabuf ÷ C ${(d4 / f4).toFixed(2)}x`,
        met: null,
      });
    }
    return { name: 'fullread', title: 'Hand-off plus reading every byte', description: 'Case 4', rows, notes, targets };
  },
};
