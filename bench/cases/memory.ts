/**
 * Case 5: memory. 8 receiver processes import one buffer (1 GiB; 64 MiB with --quick), map
 * it and touch every page; the total PSS (Proportional Set Size, /proc/PID/smaps_rollup) of
 * the 8 receivers plus the exporter's mapping of the buffer, against 8 processes that each
 * hold a filled Buffer of the same size, measured the same way. Each process's PSS is also
 * read before it maps or allocates anything (the Node.js runtime alone), so that the
 * buffer's own share can be told apart.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { CpuDevice, systemHeap } from '../../src/index.js';
import { GiB, MiB, fmtSize, receiver, stats, track, type BenchCase, type CaseResult, type Context, type Row, type Target } from '../harness.js';
import { DmabufMethod } from '../methods.js';
import { touchPages } from '../receivers/wire.js';

const PROCS = 8;

/** Pss of a process, in bytes, from /proc/PID/smaps_rollup. */
export function pss(pid: number | 'self'): number {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  return Number(/^Pss:\s+(\d+) kB/m.exec(text)?.[1] ?? NaN) * 1024;
}

/** Pss, in bytes, of this process's mappings whose name contains `name` (from /proc/self/smaps). */
function pssOfMapping(name: string): number {
  let total = 0;
  let inside = false;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inside = line.includes(name);
    else if (inside && line.startsWith('Pss:')) total += Number(/(\d+)/.exec(line)![1]) * 1024;
  }
  return total;
}

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 200));

async function sharedCase(ctx: Context, size: number): Promise<{ before: number[]; after: number[]; exporter: number }> {
  const name = `bench-pss-${process.pid}`;
  const buf = systemHeap.allocate(size, { name });
  const att = await buf.attach(new CpuDevice({ name: 'bench-exporter' }));
  const sgt = await att.map('bidirectional');
  sgt.segments[0]!.view!.fill(0x2a);
  const receivers = Array.from({ length: PROCS }, () => new DmabufMethod());
  try {
    await Promise.all(receivers.map((r) => r.start()));
    await settle();
    const before = receivers.map((r) => pss(r.pid));
    for (const r of receivers) await r.hold(buf);
    await settle();
    const after = receivers.map((r) => pss(r.pid));
    touchPages(sgt.segments[0]!.view!);
    const exporter = pssOfMapping(name);
    ctx.log(`  dmabuf: ${PROCS} receivers ${(after.reduce((a, b) => a + b) / MiB).toFixed(0)} MiB PSS (+ exporter's mapping ${(exporter / MiB).toFixed(0)} MiB)`);
    for (const r of receivers) await r.drop();
    return { before, after, exporter };
  } finally {
    for (const r of receivers) await r.close().catch(() => {});
    await att.detach();
    buf.put();
  }
}

async function copyCase(ctx: Context, size: number): Promise<{ before: number[]; after: number[] }> {
  const kids: { child: ChildProcess; next: () => Promise<string> }[] = [];
  try {
    for (let i = 0; i < PROCS; i++) {
      const child = track(spawn(process.execPath, ['--no-warnings', receiver('holder')], { stdio: ['pipe', 'pipe', 'inherit'] }));
      const lines = createInterface({ input: child.stdout! });
      const queue: string[] = [];
      const waiters: ((l: string) => void)[] = [];
      lines.on('line', (l) => { const w = waiters.shift(); if (w) w(l); else queue.push(l); });
      const next = (): Promise<string> => (queue.length ? Promise.resolve(queue.shift()!) : new Promise((r) => waiters.push(r)));
      kids.push({ child, next });
    }
    for (const k of kids) await k.next();
    await settle();
    const before = kids.map((k) => pss(k.child.pid!));
    for (const k of kids) {
      k.child.stdin!.write(`fill ${size}\n`);
      await k.next();
    }
    await settle();
    const after = kids.map((k) => pss(k.child.pid!));
    ctx.log(`  copies: ${PROCS} holders ${(after.reduce((a, b) => a + b) / MiB).toFixed(0)} MiB PSS`);
    return { before, after };
  } finally {
    for (const k of kids) {
      k.child.stdin!.end();
      if (k.child.exitCode === null) await once(k.child, 'exit');
    }
  }
}

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

export const memory: BenchCase = {
  name: 'memory',
  async run(ctx): Promise<CaseResult> {
    const size = ctx.options.quick ? 64 * MiB : GiB;
    const shared = await sharedCase(ctx, size);
    const copies = await copyCase(ctx, size);
    const row = (method: string, metric: string, xs: number[]): Row => ({ case: 'memory', method, size, metric, unit: 'bytes', stats: { ...stats([sum(xs)]), n: xs.length } });
    const sharedTotal = sum(shared.after) + shared.exporter;
    const sharedRuntime = sum(shared.before);
    const copyTotal = sum(copies.after);
    const copyRuntime = sum(copies.before);
    const rows: Row[] = [
      row(`dmabuf: ${PROCS} importers + exporter's mapping`, 'total PSS', [...shared.after, shared.exporter]),
      row(`dmabuf: ${PROCS} importers`, 'PSS before mapping (runtime)', shared.before),
      row(`dmabuf: ${PROCS} importers + exporter's mapping`, 'PSS due to the buffer', [sharedTotal - sharedRuntime]),
      row(`copies: ${PROCS} processes with a Buffer`, 'total PSS', copies.after),
      row(`copies: ${PROCS} processes with a Buffer`, 'PSS before allocating (runtime)', copies.before),
      row(`copies: ${PROCS} processes with a Buffer`, 'PSS due to the buffer', [copyTotal - copyRuntime]),
    ];
    const limit = 1.1 * size;
    const bufferOnly = sharedTotal - sharedRuntime;
    const targets: Target[] = [{
      name: `${PROCS} importers of ${fmtSize(size)} ≤ ${size >= GiB ? `${(1.1 * size / GiB).toFixed(2)} GiB` : `${(1.1 * size / MiB).toFixed(1)} MiB`} total PSS`,
      goal: `total PSS (smaps_rollup of the ${PROCS} importers + the exporter's mapping of the buffer) ≤ 1.1 × ${fmtSize(size)}`,
      measured: `${(sharedTotal / GiB).toFixed(3)} GiB total (${(sharedRuntime / GiB).toFixed(3)} GiB of it is the ${PROCS} Node.js runtimes before mapping; the buffer's share ${(bufferOnly / GiB).toFixed(3)} GiB); ${PROCS} copies: ${(copyTotal / GiB).toFixed(3)} GiB (${(copyTotal / sharedTotal).toFixed(1)}x)`,
      met: sharedTotal <= limit,
      ...(sharedTotal <= limit ? {} : { why: bufferOnly <= limit ? `the buffer itself is counted once (${(bufferOnly / GiB).toFixed(3)} GiB, within the target); the excess is the ${PROCS} Node.js processes' own memory (${(sharedRuntime / PROCS / MiB).toFixed(0)} MiB PSS each before mapping anything), which 8 importers cost whatever they share` : 'the buffer is counted more than once: pages are duplicated' }),
    }];
    return {
      name: 'memory',
      title: `Memory: ${PROCS} processes sharing one ${fmtSize(size)} buffer, against ${PROCS} copies`,
      description: 'Case 5',
      rows,
      notes: [
        `Each importer is a Node.js process that imports the buffer (DmaBuf.get), maps it ('to-device') and reads one byte per 4 KiB page, so that every page is mapped; the exporter (this process) keeps its own 'bidirectional' mapping, fully touched, and its Pss for that mapping (from /proc/self/smaps) is added. Each copy holder is a Node.js process holding Buffer.alloc(size, 0x2a).`,
        'PSS counts a page shared by N processes as 1/N in each; "runtime" is the same processes\' PSS measured before they mapped or allocated the buffer.',
      ],
      targets,
    };
  },
};
