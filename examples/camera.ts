/**
 * Camera frames to another process, zero-copy.
 *
 * The parent captures from a V4L2 camera (the kernel's virtual camera `vivid` in the tests)
 * into the driver's own buffers, which are kernel dma-bufs. It sends each frame over a
 * `BufferChannel` to a child process. The child imports the dma-buf, maps the driver's pages,
 * reads the middle line and answers. Only then does the parent give the buffer back to the
 * driver. No frame byte is copied.
 *
 * Run (after `npm run build`, on a machine with a camera; in the kernel VM:
 * `test/kernel/vm/run-in-kernel-vm.sh -b node -s "$PWD" -C "$PWD" -M vivid -- node dist/examples/camera.js`):
 *
 *   node dist/examples/camera.js [/dev/video0] [frames]
 */
import { spawn } from 'node:child_process';
import { closeSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { BufferChannel, CpuDevice, V4l2Capture, type DmaBuf, type SgTable } from '../src/index.js';

async function parent(device: string, frames: number): Promise<void> {
  await using cam = await V4l2Capture.open(device, { width: 640, height: 360, pixelFormat: 'YUYV' });
  console.log(`[parent] ${cam.card} (${cam.driver}): ${cam.format.width}x${cam.format.height} ${cam.format.pixelFormat}, ${cam.buffers.length} buffers of ${cam.buffers[0]!.exporter}`);
  const [channel, theirs] = BufferChannel.pair();
  const child = spawn(process.execPath, ['--no-warnings', fileURLToPath(import.meta.url), 'child'], {
    stdio: ['ignore', 'pipe', 'inherit', theirs],
  });
  closeSync(theirs);
  const answers = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();

  for (let i = 0; i < frames; i++) {
    const frame = await cam.next({ timeout: 10_000 });
    await channel.send(frame.buffer, { sequence: frame.sequence, bytesUsed: frame.bytesUsed, ...cam.format });
    const { value: answer } = await answers.next(); // the child has read the frame
    frame.requeue(); // now the driver may capture into that buffer again
    console.log(`[parent] frame ${frame.sequence} (buffer ${frame.index}): ${String(answer)}`);
  }
  channel.close();
  await new Promise((resolve) => child.once('exit', resolve));
  console.log('[parent] done');
}

async function child(): Promise<void> {
  const channel = BufferChannel.fromFd(3);
  const maps = new Map<DmaBuf, SgTable>(); // map each driver buffer once
  for await (const { buffer, meta } of channel) {
    const m = meta as { sequence: number; width: number; height: number; bytesPerLine: number };
    let sgt = maps.get(buffer);
    if (sgt) {
      buffer.put(); // receive took another reference on a buffer we already hold
    } else {
      const attachment = await buffer.attach(new CpuDevice({ name: 'viewer' }));
      sgt = await attachment.map('to-device');
      maps.set(buffer, sgt);
    }
    await buffer.beginCpuAccess('read');
    const view = sgt.segments[0]!.view!;
    const line = view.subarray((m.height >> 1) * m.bytesPerLine, ((m.height >> 1) + 1) * m.bytesPerLine);
    // YUYV: every other byte is a luma sample; one per eighth of the line (vivid's colour bars).
    const lumas = Array.from({ length: 8 }, (_, bar) => line[(Math.floor(((bar + 0.5) * m.width) / 8) & ~1) * 2]);
    await buffer.endCpuAccess('read');
    console.log(`mapped "${buffer.name}" in pid ${process.pid}, middle line luma by eighths: ${lumas.join(' ')}`);
  }
  for (const buffer of maps.keys()) buffer.put();
}

if (process.argv[2] === 'child') await child();
else await parent(process.argv[2] ?? '/dev/video0', Number(process.argv[3] ?? 5));
