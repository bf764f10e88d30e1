/**
 * The two processes of the fence case: `node fence.js signaller|waiter '<plan JSON>'`.
 *
 * Descriptor 3 is a control link between them (JSON packets, with descriptors); descriptor 4
 * a SOCK_SEQPACKET pair that carries the bare message hop. For every sample of the plan:
 * - `fence`: the signaller creates a fence and sends its fence file (arm); the waiter imports
 *   it, starts waiting and answers ready; the signaller takes t0 and signals; the waiter takes
 *   t1 when its wait resolves, and answers done.
 * - `hop`: the same, but the waiter awaits one byte on descriptor 4 (read on the event loop
 *   with uv_poll), which the signaller sends at t0.
 * - `none`: the control messages only (the overhead both methods share), for syscall counts.
 *
 * At the end each side prints one JSON line: its timestamps (t0 or t1, per sample, as strings
 * of nanoseconds of CLOCK_MONOTONIC, the same clock in both processes), and per block its CPU
 * time (user, system, µs) and garbage collections.
 */
import { PerformanceObserver } from 'node:perf_hooks';
import { DmaFence } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { Packets } from './wire.js';

export type FenceMethod = 'fence' | 'hop' | 'none';
export interface FencePlan {
  blocks: Array<{ method: FenceMethod; count: number }>;
}
export interface FenceSideResult {
  role: 'signaller' | 'waiter';
  /** One timestamp per sample, in plan order. */
  at: string[];
  blocks: Array<{ method: FenceMethod; count: number; user: number; system: number; gcs: number }>;
}

const role = process.argv[2] as FenceSideResult['role'];
const plan = JSON.parse(process.argv[3]!) as FencePlan;
const link = new Packets(3);
link.listen();
const HOP = 4;
const byte = Uint8Array.of(1);
let gcs = 0;
new PerformanceObserver((list) => { gcs += list.getEntries().length; }).observe({ entryTypes: ['gc'] });

/** The next byte on the hop socket, read on the event loop. */
let hopArrived: (() => void) | null = null;
if (role === 'waiter') {
  const c = native.constants;
  native.setNonblock(HOP, true);
  const poll = native.pollStart(HOP, c.UV_READABLE, () => {
    for (;;) {
      const r = native.recvmsg(HOP, 16, 0, c.MSG_DONTWAIT, true);
      if (r === null) return;
      hopArrived?.();
    }
  });
  native.pollRef(poll, true);
}

async function expect(op: string): Promise<Record<string, unknown> & { fds: number[] }> {
  const { msg, fds } = await link.next();
  if (msg.op !== op) throw new Error(`fence bench ${role}: expected ${op}, got ${JSON.stringify(msg)}`);
  return { ...msg, fds };
}

async function signalOne(method: FenceMethod): Promise<bigint> {
  let t0: bigint;
  if (method === 'fence') {
    const fence = new DmaFence({ name: 'bench' });
    const fd = fence.toFd();
    link.send({ op: 'arm' }, [fd]);
    native.close(fd);
    await expect('ready');
    t0 = process.hrtime.bigint();
    fence.signal();
  } else {
    link.send({ op: 'arm' });
    await expect('ready');
    t0 = process.hrtime.bigint();
    if (method === 'hop') native.sendmsg(HOP, byte, [], 0);
  }
  await expect('done');
  return t0;
}

async function waitOne(method: FenceMethod): Promise<bigint> {
  const { fds } = await expect('arm');
  let arrived: Promise<unknown>;
  if (method === 'fence') {
    const fence = await DmaFence.fromFd(fds[0]!);
    native.close(fds[0]!);
    arrived = fence.wait();
  } else if (method === 'hop') {
    arrived = new Promise<void>((resolve) => { hopArrived = resolve; });
  } else {
    arrived = Promise.resolve();
  }
  link.send({ op: 'ready' });
  await arrived;
  const t1 = process.hrtime.bigint();
  hopArrived = null;
  link.send({ op: 'done' });
  return t1;
}

const result: FenceSideResult = { role, at: [], blocks: [] };
for (const { method, count } of plan.blocks) {
  const cpu0 = process.cpuUsage();
  const gc0 = gcs;
  for (let i = 0; i < count; i++) {
    result.at.push(String(role === 'signaller' ? await signalOne(method) : await waitOne(method)));
  }
  const cpu = process.cpuUsage(cpu0);
  result.blocks.push({ method, count, user: cpu.user, system: cpu.system, gcs: gcs - gc0 });
}
console.log(JSON.stringify(result));
link.close();
process.exit(0);
