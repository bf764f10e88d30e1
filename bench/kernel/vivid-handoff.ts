/**
 * A camera frame handed to another process: zero-copy against read()-style copies.
 *
 * - zero-copy: the frame's kernel dma-buf (V4L2 EXPBUF of vivid's buffer) goes over a
 *   BufferChannel; the receiver maps the driver's pages once per buffer and brackets each
 *   read with beginCpuAccess/endCpuAccess. No frame byte is copied.
 * - read(): the device's read() copies the frame into this process, which writes it to a Unix
 *   stream socket that the receiver reads: three copies of every byte.
 *
 * Time per frame: from the frame being ready in this process (DQBUF returned; read() about to
 * run) until the receiver's answer arrives, for two consumers: reading the 8 bars' centres
 * (`sample`) and adding up every byte (`full`). Runs inside the kernel VM (vivid), with the
 * TSC as the guest's clock (its default there, jiffies, ticks every 4 ms):
 *
 *   RIKVM_APPEND="clocksource=tsc tsc=reliable" test/kernel/vm/run-in-kernel-vm.sh -b node \
 *     -s "$PWD" -C "$PWD" -M vivid -e HOST_LOAD="$(cut -d' ' -f1 /proc/loadavg)" \
 *     -- node dist/bench/kernel/vivid-handoff.js [--frames N]
 *
 * Writes bench/results/vivid-handoff-<date>.json and .md (or --out DIR).
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, writeFileSync, constants as fsConstants } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { BufferChannel, V4l2Capture, fourcc } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { waitForPoll } from '../../src/kernel/poll-wait.js';
import { distBench, fmtSize, fmtTime, machine, now, root, since, stats, type Stats } from '../harness.js';

const DEVICE = '/dev/video0';
const SIZES: Array<[number, number]> = [[640, 360], [1920, 1080]];
const MODES = ['sample', 'full'] as const;
const WARMUP = 10;

const args = process.argv.slice(2);
const argValue = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const FRAMES = Number(argValue('--frames') ?? 30);
const OUT = argValue('--out') ?? path.join(root, 'bench', 'results');
if (!Number.isSafeInteger(FRAMES) || FRAMES < 1) throw new Error(`--frames needs a positive integer, got ${String(argValue('--frames'))}`);

// The receiver: fd 3 a BufferChannel, fd 4 a stream socket; answers on stdout.
const [channel, channelTheirs] = BufferChannel.pair();
const [streamMine, streamTheirs] = native.socketpair(native.constants.SOCK_STREAM, false);
const child = spawn(process.execPath, ['--no-warnings', path.join(distBench, 'kernel', 'vivid-receiver.js')], {
  stdio: ['ignore', 'pipe', 'inherit', channelTheirs, streamTheirs],
});
closeSync(channelTheirs);
closeSync(streamTheirs);
const stream = new net.Socket({ fd: streamMine, readable: false, writable: true });
const waiting = new Map<number, (value: number) => void>();
createInterface({ input: child.stdout! }).on('line', (line) => {
  const { seq, value } = JSON.parse(line) as { seq: number; value: number };
  waiting.get(seq)?.(value);
  waiting.delete(seq);
});
const answer = (seq: number): Promise<number> => new Promise((resolve) => waiting.set(seq, resolve));
let seq = 0;

interface Series { method: 'zero-copy' | 'read()'; width: number; height: number; frameBytes: number; consumer: string; perFrame: Stats & { mean: number }; frameBytesCopied: number }

const summary = (times: number[]): Stats & { mean: number } => ({ ...stats(times), mean: times.reduce((a, b) => a + b, 0) / times.length });
const series: Series[] = [];

async function zeroCopy(width: number, height: number): Promise<void> {
  await using cam = await V4l2Capture.open(DEVICE, { width, height, pixelFormat: 'YUYV', buffers: 4 });
  for (const [m, consumer] of MODES.entries()) {
    const times: number[] = [];
    for (let i = 0; i < WARMUP + FRAMES; i++) {
      const frame = await cam.next({ timeout: 30_000 });
      const s = seq++;
      const t0 = now();
      const got = answer(s);
      await channel.send(frame.buffer, { seq: s, mode: m, width, bytesUsed: frame.bytesUsed });
      await got;
      if (i >= WARMUP) times.push(since(t0));
      frame.requeue();
    }
    series.push({ method: 'zero-copy', width, height, frameBytes: cam.format.sizeImage, consumer, perFrame: summary(times), frameBytesCopied: 0 });
  }
}

async function readCopies(width: number, height: number): Promise<void> {
  const fd = openSync(DEVICE, fsConstants.O_RDWR | fsConstants.O_NONBLOCK);
  try {
    const k = native.kernelConstants;
    const format = native.v4l2SetFormat(fd, width, height, fourcc('YUYV'), k.V4L2_FIELD_ANY);
    const frame = Buffer.alloc(format.sizeimage);
    for (const [m, consumer] of MODES.entries()) {
      const times: number[] = [];
      let copied = 0;
      for (let i = 0; i < WARMUP + FRAMES; i++) {
        await waitForPoll(fd, 'readable', { op: 'bench', what: 'a frame', timeout: 30_000 });
        const s = seq++;
        const t0 = now();
        let n: number;
        try {
          n = readSync(fd, frame, 0, frame.length, null); // copy 1: the driver's frame into this process
        } catch (err) {
          if ((err as { code?: string }).code === 'EAGAIN') { i--; continue; }
          throw err;
        }
        const header = Buffer.alloc(12);
        header.writeUInt32LE(n, 0);
        header.writeUInt32LE(s, 4);
        header.writeUInt32LE(m | (width << 16), 8);
        const got = answer(s);
        stream.write(header);
        stream.write(frame.subarray(0, n)); // copy 2 into the socket; copy 3 out of it, in the receiver
        await got;
        if (i >= WARMUP) {
          times.push(since(t0));
          copied += 3 * n;
        }
      }
      series.push({ method: 'read()', width, height, frameBytes: format.sizeimage, consumer, perFrame: summary(times), frameBytesCopied: copied / FRAMES });
    }
  } finally {
    closeSync(fd);
  }
}

const started = new Date();
const t0 = now();
for (const [w, h] of SIZES) {
  console.log(`${w}x${h} YUYV: zero-copy ...`);
  await zeroCopy(w, h);
  console.log(`${w}x${h} YUYV: read() ...`);
  await readCopies(w, h);
}
stream.end();
channel.close();
await new Promise((resolve) => child.once('exit', resolve));

const m = machine();
let clock = 'unknown';
try {
  clock = readFileSync('/sys/devices/system/clocksource/clocksource0/current_clocksource', 'utf8').trim();
} catch {
  // no sysfs
}
const lines = [
  `# A vivid frame handed to another process: zero-copy against read() copies (${started.toISOString().slice(0, 10)})`,
  '',
  `Machine: ${m.description}; clock source ${clock}${process.env.HOST_LOAD ? `; the host's load average at the start: ${process.env.HOST_LOAD}` : ''}. ${FRAMES} frames per row after ${WARMUP} warm-up frames; times from the frame being ready to the receiver's answer: median (mean, p90).`,
  'Command: `RIKVM_APPEND="clocksource=tsc tsc=reliable" test/kernel/vm/run-in-kernel-vm.sh -b node -s "$PWD" -C "$PWD" -M vivid -e HOST_LOAD="$(cut -d\' \' -f1 /proc/loadavg)" -- node dist/bench/kernel/vivid-handoff.js' + (FRAMES !== 30 ? ` --frames ${FRAMES}` : '') + '`',
  '',
  '| frame | consumer | zero-copy per frame | read() per frame | read() / zero-copy | frame bytes copied (zero-copy / read()) |',
  '| --- | --- | --- | --- | --- | --- |',
];
for (const [w, h] of SIZES) {
  for (const consumer of MODES) {
    const z = series.find((s) => s.width === w && s.consumer === consumer && s.method === 'zero-copy')!;
    const r = series.find((s) => s.width === w && s.consumer === consumer && s.method === 'read()')!;
    lines.push(`| ${w}x${h} YUYV (${fmtSize(z.frameBytes)}) | ${consumer} | ${fmtTime(z.perFrame.median)} (${fmtTime(z.perFrame.mean)}, ${fmtTime(z.perFrame.p90)}) | ${fmtTime(r.perFrame.median)} (${fmtTime(r.perFrame.mean)}, ${fmtTime(r.perFrame.p90)}) | ${(r.perFrame.median / z.perFrame.median).toFixed(2)}x | 0 / ${fmtSize(r.frameBytesCopied)} |`);
  }
}
lines.push('', 'zero-copy: the dma-buf\'s descriptor and about 100 bytes of metadata cross the socket; the receiver maps the driver\'s pages (once per buffer) and brackets its read with DMA_BUF_IOCTL_SYNC. read(): the frame is copied by read() into this process, by write() into the socket, by the receiver\'s read out of it.');
const report = lines.join('\n');
console.log(`\n${report}`);
mkdirSync(OUT, { recursive: true });
const base = path.join(OUT, `vivid-handoff-${started.toISOString().slice(0, 10)}`);
writeFileSync(`${base}.json`, JSON.stringify({ date: started.toISOString(), durationS: since(t0) / 1e9, frames: FRAMES, warmup: WARMUP, machine: m, series }, null, 2));
writeFileSync(`${base}.md`, `${report}\n`);
console.log(`wrote ${base}.json, ${base}.md`);
process.exit(0);
