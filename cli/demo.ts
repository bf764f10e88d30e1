/**
 * `dmabuf demo`: a producer exports a pool of video-sized frames from the system heap; a
 * worker thread and a child process import them zero-copy (one descriptor and one map per
 * frame, once). Then every frame passes with fences only, through a fenced ring
 * (`fenced-ring.ts`): the producer waits for the consumers' read fences with
 * `beginCpuAccess('write')`, adds a write fence, announces the frame, paints and seals it and
 * signals; each consumer adds a read fence, waits with `beginCpuAccess('read')`, verifies the
 * frame's checksum in place and signals. The same frames are then sent through the usual
 * copying paths (a worker `postMessage` and `child_process.send` with advanced
 * serialization), and a table compares frames per second, bytes copied and peak memory.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { closeSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { CpuDevice, systemHeap, type DmaBuf, type SgTable } from '../src/index.js';
import { integerOption, parseOptions, positiveNumberOption, type Command } from './args.js';
import { checksum, paint, seal } from './checksum.js';
import { RingProducer } from './fenced-ring.js';
import type { AckMsg, ClaimMsg, DoneMsg, FrameMsg } from './demo-consumer.js';

/** Options of the demo. */
export interface DemoOptions {
  /** Bytes per frame (default 1920 x 1080 x 4). */
  frameSize?: number;
  /** Seconds each pipeline runs (default 4). */
  seconds?: number;
  /** Frames in the zero-copy pool (default 4). */
  pool?: number;
  /** Where lines go (default stdout). */
  out?: NodeJS.WritableStream;
}

/** What one pipeline achieved. */
export interface PipelineResult {
  mode: 'zero-copy' | 'copy';
  frames: number;
  seconds: number;
  fps: number;
  bytesCopied: number;
  peakRssMiB: { producer: number; child: number };
  failures: number;
}

const consumerPath = fileURLToPath(new URL('./demo-consumer.js', import.meta.url));

/** What a consumer sends back. */
type ConsumerMsg = { ready: true } | AckMsg | ClaimMsg | DoneMsg;

interface Consumer {
  name: string;
  send(msg: FrameMsg | { done: true }): void;
  onMessage(fn: (m: ConsumerMsg) => void): void;
  /** Waits for the consumer's end; its last word. */
  end(): Promise<DoneMsg>;
}

function workerConsumer(mode: 'zero-copy' | 'copy', fds: number[]): Consumer {
  const worker = new Worker(consumerPath, { workerData: { dmabufDemo: true, mode, fds } });
  let last!: (m: DoneMsg) => void;
  const done = new Promise<DoneMsg>((resolve) => { last = resolve; });
  return {
    name: 'worker',
    send: (m) => worker.postMessage(m),
    onMessage: (fn) => worker.on('message', (m: ConsumerMsg) => { if ('done' in m) last(m); fn(m); }),
    end: async () => { const m = await done; await worker.terminate(); return m; },
  };
}

function childConsumer(mode: 'zero-copy' | 'copy', fds: number[]): Consumer {
  const child: ChildProcess = spawn(process.execPath, ['--no-warnings', consumerPath], {
    stdio: ['ignore', 'inherit', 'inherit', ...fds, 'ipc'],
    serialization: 'advanced',
    env: { ...process.env, DMABUF_DEMO_MODE: mode, DMABUF_DEMO_FDS: String(fds.length) },
  });
  let last!: (m: DoneMsg) => void;
  const done = new Promise<DoneMsg>((resolve) => { last = resolve; });
  return {
    name: 'child',
    send: (m) => child.send(m),
    onMessage: (fn) => child.on('message', (m: ConsumerMsg) => { if ('done' in m) last(m); fn(m); }),
    end: async () => { const m = await done; if (child.exitCode === null) await once(child, 'exit'); return m; },
  };
}

function mib(kib: number): number {
  return Math.round(kib / 1024);
}

async function pipeline(mode: 'zero-copy' | 'copy', o: Required<Omit<DemoOptions, 'out'>>, log: (s: string, final?: boolean) => void): Promise<PipelineResult> {
  const poolSize = mode === 'zero-copy' ? o.pool : 1;
  const frames: { buf?: DmaBuf; view: Uint8Array; busy: number }[] = [];
  const cleanup: (() => Promise<void>)[] = [];
  const fdsForChild: number[] = [];
  const fdsForWorker: number[] = [];
  for (let i = 0; i < poolSize; i++) {
    if (mode === 'zero-copy') {
      const buf = systemHeap.allocate(o.frameSize, { name: `demo-frame-${i}` });
      const att = await buf.attach(new CpuDevice({ name: 'producer' }));
      const sgt: SgTable = await att.map('bidirectional');
      frames.push({ buf, view: sgt.views()[0]!, busy: 0 });
      fdsForChild.push(buf.fd({ cloexec: false }));
      fdsForWorker.push(buf.fd());
      cleanup.push(async () => { await att.detach(); buf.put(); });
    } else {
      frames.push({ view: new Uint8Array(o.frameSize), busy: 0 });
    }
  }
  const consumers = [workerConsumer(mode, fdsForWorker), childConsumer(mode, fdsForChild)];
  for (const fd of fdsForChild) closeSync(fd); // the child has its own copies now
  // Zero-copy: a fenced ring over the pool. Copy: one frame at a time, answered.
  const ring = mode === 'zero-copy' ? new RingProducer(frames.map((f) => ({ buf: f.buf!, view: f.view })), consumers.length) : null;
  const verified = consumers.map(() => 0);
  const failed = consumers.map(() => 0);
  let bytesCopied = 0;
  let wake: (() => void) | null = null;
  const ready = consumers.map((c, i) => new Promise<void>((resolve) => c.onMessage((m) => {
    if ('ready' in m) { resolve(); return; }
    if ('done' in m) return;
    if ('claim' in m) {
      // The consumer's read fence is in; what it verified so far rides along.
      verified[i] = m.verified;
      failed[i] = m.failures;
      ring!.claim(i, m.claim);
      return;
    }
    verified[i]! += 1;
    if (!m.ok) failed[i]! += 1;
    frames[m.slot]!.busy -= 1;
    wake?.();
  })));
  await Promise.all(ready);
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(Math.round(o.seconds * 1e9));
  let lastReport = 0n;
  let sent = 0;
  const sum = (a: number[]): number => a.reduce((x, y) => x + y, 0);
  const progress = (now: bigint, final: boolean): void => {
    const secs = Number(now - start) / 1e9;
    log(`  ${mode.padEnd(9)} frames ${String(sent).padStart(5)}  verified ${String(sum(verified)).padStart(6)}/${sent * consumers.length}  ${(sum(verified) / consumers.length / secs).toFixed(0).padStart(4)} fps`, final);
  };
  while (process.hrtime.bigint() < deadline) {
    if (ring) {
      await ring.produce(
        (frame, slot) => { for (const c of consumers) c.send({ frame, slot }); },
        (view, frame) => { paint(view, frame); seal(view); },
      );
    } else {
      const f = frames[0]!;
      while (f.busy > 0) await new Promise<void>((r) => { wake = r; });
      paint(f.view, sent);
      const frameSum = checksum(f.view);
      f.busy = consumers.length;
      for (const c of consumers) {
        c.send({ frame: sent, slot: 0, sum: frameSum, data: f.view });
        bytesCopied += o.frameSize;
      }
    }
    sent += 1;
    const now = process.hrtime.bigint();
    if (now - lastReport > 250_000_000n) {
      lastReport = now;
      progress(now, false);
    }
  }
  if (ring) await ring.drain();
  else while (sum(verified) < sent * consumers.length) await new Promise<void>((r) => { wake = r; });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  for (const c of consumers) c.send({ done: true });
  const last = await Promise.all(consumers.map((c) => c.end()));
  if (ring) {
    // Every frame was read (the ring drained): the consumers' own counts are final.
    for (const [i, m] of last.entries()) {
      verified[i] = m.verified;
      failed[i] = m.failures;
    }
  }
  await Promise.all(cleanup.map((f) => f()));
  const fps = sent / seconds;
  progress(process.hrtime.bigint(), true);
  if (sum(verified) !== sent * consumers.length) throw new Error(`${mode}: ${sum(verified)} frames verified of ${sent * consumers.length} sent`);
  return {
    mode, frames: sent, seconds, fps, bytesCopied, failures: sum(failed),
    peakRssMiB: { producer: mib(process.resourceUsage().maxRSS), child: mib(last[1]?.maxRssKiB ?? 0) },
  };
}

/** Runs the demo and prints the comparison. */
export async function demo(options: DemoOptions = {}): Promise<PipelineResult[]> {
  const o = { frameSize: options.frameSize ?? 1920 * 1080 * 4, seconds: options.seconds ?? 4, pool: options.pool ?? 4 };
  const out = options.out ?? process.stdout;
  const tty = (out as NodeJS.WriteStream).isTTY === true;
  const log = (line: string, final = false): void => {
    if (tty) out.write(`\r${line}${final ? '\n' : ''}`);
    else if (final) out.write(`${line}\n`);
  };
  out.write(`dmabuf demo: ${(o.frameSize / 2 ** 20).toFixed(1)} MiB frames to a worker thread and a child process, ${o.seconds} s per pipeline\n`);
  out.write('zero-copy: the frames are exported once, imported and mapped once; each frame then passes with fences only (a write fence the consumers wait for, read fences the producer waits for before it repaints) and is checksummed in place\n');
  const zero = await pipeline('zero-copy', o, log);
  out.write('copy: the same frames through worker postMessage and child_process.send (advanced serialization)\n');
  const copy = await pipeline('copy', o, log);
  const rows = [zero, copy];
  const fmt = (r: PipelineResult): string =>
    `| ${r.mode} | ${r.fps.toFixed(1)} | ${r.frames} | ${(r.bytesCopied / 2 ** 20).toFixed(0)} MiB | ${r.peakRssMiB.producer} MiB | ${r.peakRssMiB.child} MiB | ${r.failures} |`;
  out.write(`\n| pipeline | frames/s | frames | frame bytes copied | producer peak RSS | child peak RSS | checksum failures |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n${rows.map(fmt).join('\n')}\n`);
  out.write(`\nzero-copy delivered ${(zero.fps / copy.fps).toFixed(1)}x the frames per second, copying ${(copy.bytesCopied / 2 ** 20).toFixed(0)} MiB less.\n`);
  if (zero.failures + copy.failures > 0) throw new Error(`${zero.failures + copy.failures} frames failed their checksum`);
  return rows;
}

/** `dmabuf demo`: its command line. */
export const demoCommand: Command = {
  name: 'demo',
  synopsis: '[--frame-size BYTES] [--seconds S] [--pool N]',
  summary: 'frames to a worker and a child process, zero-copy vs copies',
  usage: `usage: dmabuf demo [--frame-size BYTES] [--seconds S] [--pool N]

A producer exports a pool of frames from the system heap; a worker thread and a child
process import them zero-copy and map them once. Each frame then passes with fences only:
the consumers wait for the producer's write fence and verify the frame's checksum in place;
the producer waits for their read fences before it repaints a frame. Then the same frames go
through worker postMessage and child_process.send, and a table compares them.

  --frame-size BYTES  bytes per frame (default ${1920 * 1080 * 4}: 1920 x 1080 x 4)
  --seconds S         seconds each pipeline runs, fractions allowed (default 4)
  --pool N            frames in the zero-copy pool (default 4)
  -h, --help          this text`,
  async run(argv) {
    const v = parseOptions(argv, { 'frame-size': { type: 'string' }, seconds: { type: 'string' }, pool: { type: 'string' } });
    if (v.help) {
      console.log(this.usage);
      return 0;
    }
    const options: DemoOptions = {};
    const frameSize = integerOption(v['frame-size'], 'frame-size');
    const seconds = positiveNumberOption(v.seconds, 'seconds');
    const pool = integerOption(v.pool, 'pool');
    if (frameSize !== undefined) options.frameSize = frameSize;
    if (seconds !== undefined) options.seconds = seconds;
    if (pool !== undefined) options.pool = pool;
    await demo(options);
    return 0;
  },
};
