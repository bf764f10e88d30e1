/**
 * Case 6: a fence signalled in one process, its wait resolving in another, against a bare
 * message hop between the same two processes (one byte on a SOCK_SEQPACKET socket, read on the
 * event loop). Both sides are children (bench/receivers/fence.ts), so that both can be counted
 * with strace; the samples of the two methods alternate in blocks, in the same two processes.
 *
 * Reported per method: the one-way latency (signaller's t0 just before `signal()` or
 * `sendmsg`, to the waiter's code resuming after its `await`), and per operation the CPU time
 * and garbage collections of each side, and, when strace is installed, the system calls of
 * each side beyond the control messages both methods share. For the fence, an operation is a
 * fence's whole life: create, export (toFd), send, import (fromFd), wait, signal.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { native } from '../../src/native/binding.js';
import { fmtTime, receiver, stats, track, type BenchCase, type CaseResult, type Context, type Row, type Target } from '../harness.js';
import type { FenceMethod, FencePlan, FenceSideResult } from '../receivers/fence.js';

const ROUNDS = 4;
const GOAL = 1.2;
const LABEL: Record<Exclude<FenceMethod, 'none'>, string> = {
  fence: 'fence: signal() → wait() resolves (fence file, uv_poll)',
  hop: 'bare message hop: sendmsg → await (SOCK_SEQPACKET, uv_poll)',
};

/** Runs a signaller and a waiter on `plan`; with `strace`, each under `strace -f -c` writing to that folder. */
async function runPair(plan: FencePlan, strace?: string): Promise<[FenceSideResult, FenceSideResult]> {
  const c = native.constants;
  const [ctlA, ctlB] = native.socketpair(c.SOCK_SEQPACKET, false);
  const [hopA, hopB] = native.socketpair(c.SOCK_SEQPACKET, false);
  const start = (role: FenceSideResult['role'], fds: number[]): Promise<FenceSideResult> => {
    const args = ['--no-warnings', receiver('fence'), role, JSON.stringify(plan)];
    const cmd = strace ? ['strace', '-f', '-qq', '-c', '-o', path.join(strace, role), process.execPath, ...args] : [process.execPath, ...args];
    const child = track(spawn(cmd[0]!, cmd.slice(1), { stdio: ['ignore', 'pipe', 'inherit', ...fds] }));
    let out = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => { out += d; });
    return once(child, 'close').then(([code]) => {
      if (code !== 0) throw new Error(`fence bench ${role} exited with ${String(code)}`);
      return JSON.parse(out.trim().split('\n').at(-1)!) as FenceSideResult;
    });
  };
  try {
    return await Promise.all([start('signaller', [ctlA, hopA]), start('waiter', [ctlB, hopB])]);
  } finally {
    for (const fd of [ctlA, ctlB, hopA, hopB]) native.close(fd);
  }
}

/** The total count of system calls in an `strace -c` summary. */
function straceTotal(file: string): number {
  const line = readFileSync(file, 'utf8').split('\n').find((l) => /\btotal$/.test(l.trim()));
  const cols = line?.trim().split(/\s+/) ?? [];
  // "100.00 0.211593 307 687 21 total": calls is the 4th column (errors may be absent).
  return Number(cols[3]);
}

function hasStrace(): boolean {
  return ['/usr/bin/strace', '/bin/strace', '/usr/local/bin/strace'].some((p) => existsSync(p));
}

/**
 * System calls per operation of each side beyond the control messages: the difference of two
 * runs of the same method (300 and 100 operations, which cancels start-up and warm-up),
 * minus the same for the control messages alone.
 */
async function syscallsPerOp(ctx: Context): Promise<Record<'fence' | 'hop', { signaller: number; waiter: number }> | string> {
  if (!hasStrace()) return 'system calls not counted: strace is not installed';
  const dir = mkdtempSync(path.join(tmpdir(), 'dmabuf-bench-fence-'));
  try {
    const per = async (method: FenceMethod): Promise<{ signaller: number; waiter: number }> => {
      const counts: Record<number, { signaller: number; waiter: number }> = {};
      for (const n of [100, 300]) {
        await runPair({ blocks: [{ method, count: n }] }, dir);
        counts[n] = { signaller: straceTotal(path.join(dir, 'signaller')), waiter: straceTotal(path.join(dir, 'waiter')) };
      }
      return { signaller: (counts[300]!.signaller - counts[100]!.signaller) / 200, waiter: (counts[300]!.waiter - counts[100]!.waiter) / 200 };
    };
    const none = await per('none');
    const out = {} as Record<'fence' | 'hop', { signaller: number; waiter: number }>;
    for (const method of ['fence', 'hop'] as const) {
      const m = await per(method);
      out[method] = { signaller: m.signaller - none.signaller, waiter: m.waiter - none.waiter };
      ctx.log(`  ${method}: ${out[method].signaller.toFixed(1)} system calls in the signaller, ${out[method].waiter.toFixed(1)} in the waiter, per operation`);
    }
    return out;
  } catch (err) {
    return `system calls not counted: ${(err as Error).message}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export const fence: BenchCase = {
  name: 'fence',
  async run(ctx): Promise<CaseResult> {
    const perBlock = ctx.options.quick ? 100 : 500;
    const warm = 200;
    const plan: FencePlan = { blocks: [{ method: 'fence', count: warm }, { method: 'hop', count: warm }] };
    for (let r = 0; r < ROUNDS; r++) plan.blocks.push({ method: 'fence', count: perBlock }, { method: 'hop', count: perBlock });
    const [signaller, waiter] = await runPair(plan);

    const latency: Record<'fence' | 'hop', number[]> = { fence: [], hop: [] };
    const cpu: Record<'fence' | 'hop', Record<string, number>> = { fence: {}, hop: {} };
    const gc: Record<'fence' | 'hop', { count: number; ops: number }> = { fence: { count: 0, ops: 0 }, hop: { count: 0, ops: 0 } };
    let i = 0;
    plan.blocks.forEach((block, b) => {
      const method = block.method as 'fence' | 'hop';
      const timed = b >= 2;
      for (let k = 0; k < block.count; k++, i++) {
        if (timed) latency[method].push(Number(BigInt(waiter.at[i]!) - BigInt(signaller.at[i]!)));
      }
      if (!timed) return;
      for (const side of [signaller, waiter]) {
        const s = side.blocks[b]!;
        const key = side.role;
        cpu[method][`${key} user`] = (cpu[method][`${key} user`] ?? 0) + s.user * 1e3;
        cpu[method][`${key} sys`] = (cpu[method][`${key} sys`] ?? 0) + s.system * 1e3;
        gc[method].count += s.gcs;
      }
      gc[method].ops += block.count;
    });
    const syscalls = await syscallsPerOp(ctx);

    const rows: Row[] = [];
    for (const method of ['fence', 'hop'] as const) {
      const ops = gc[method].ops;
      const st = stats(latency[method]);
      ctx.log(`  ${method}: median ${fmtTime(st.median)} over ${st.n} samples`);
      rows.push({
        case: 'fence',
        method: LABEL[method],
        size: 0,
        metric: 'one-way latency',
        unit: 'ns',
        stats: st,
        cpu: Object.fromEntries(Object.entries(cpu[method]).map(([k, v]) => [k, v / ops])),
        gc: { perHandoff: gc[method].count / ops, majorPerHandoff: NaN, msPerHandoff: NaN },
        ...(typeof syscalls === 'string' ? {} : { extra: { syscallsPerOp: syscalls[method] } }),
      });
    }
    const f = rows[0]!.stats;
    const h = rows[1]!.stats;
    const ratio = f.median / h.median;
    const targets: Target[] = [{
      name: 'fence wake-up across processes within 1.2x of a bare message hop',
      goal: `fence one-way median ÷ message-hop one-way median ≤ ${GOAL}`,
      measured: `${ratio.toFixed(2)}x (${(f.median / 1e3).toFixed(1)} µs against ${(h.median / 1e3).toFixed(1)} µs)`,
      met: ratio <= GOAL,
      ...(ratio <= GOAL ? {} : { why: `medians ${(f.median / 1e3).toFixed(1)} µs against ${(h.median / 1e3).toFixed(1)} µs, minimums ${(f.min / 1e3).toFixed(1)} against ${(h.min / 1e3).toFixed(1)} µs: the wake-up itself costs the same (a pipe write against a socket send). The medians differ when the two processes share a CPU with the machine's other work: the waiter then runs only once the signaller yields, and a fence costs more work on both sides right around the signal (the waiter imports the fence just before it sleeps, ${typeof syscalls === 'string' ? 'several' : syscalls.fence.waiter.toFixed(0)} system calls per fence against ${typeof syscalls === 'string' ? 'a few' : syscalls.hop.waiter.toFixed(0)}; the signaller does the fence's bookkeeping after its write)` }),
    }];
    return {
      name: 'fence',
      title: 'A fence signalled in one process, waited for in another',
      description: 'Case 6',
      rows,
      notes: [
        `Two child processes, a signaller and a waiter, both waiting on their event loops. Per sample the signaller sends a new fence's fence file (or, for the hop, an arm message) over a control socket; the waiter imports it and starts waiting (or arms a promise for the next byte on a second SOCK_SEQPACKET socket, read with uv_poll) and answers; the signaller then takes t0 and calls \`fence.signal()\` (or sends one byte). The latency is t0 to the waiter's code resuming after \`await\` (CLOCK_MONOTONIC in both processes).`,
        `${ROUNDS} rounds of ${perBlock} samples per method, alternating, after ${warm} warm-up samples of each; ${ROUNDS * perBlock} samples per row.`,
        `CPU (user + system, each side) and GCs are per operation, control messages included: for the fence, an operation is a whole fence (create, toFd, send, fromFd, wait, signal); for the hop, one arm and one byte.`,
        typeof syscalls === 'string'
          ? syscalls
          : `System calls per operation beyond the control messages (strace -f -c, the difference of runs of 300 and 100 operations, less the same for the control messages alone): fence ${syscalls.fence.signaller.toFixed(1)} in the signaller and ${syscalls.fence.waiter.toFixed(1)} in the waiter; hop ${syscalls.hop.signaller.toFixed(1)} and ${syscalls.hop.waiter.toFixed(1)}.`,
      ],
      targets,
    };
  },
};
