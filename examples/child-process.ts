/**
 * A buffer to a child process at spawn, and a result back over a channel.
 *
 * The parent exports a frame and gives the child two extra descriptors. Descriptor 3 is the
 * frame's file. Descriptor 4 is the other end of a `BufferChannel.pair()`. The child gets the
 * frame from fd 3 and maps it for reading. It exports a result buffer (the frame inverted)
 * and sends it back over fd 4. The parent maps the result and checks it.
 *
 * Run (after `npm run build`):
 *
 *   node dist/examples/child-process.js
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { BufferChannel, CpuDevice, DmaBuf, systemHeap } from '../src/index.js';

const SIZE = 4 << 20;

async function parent(): Promise<void> {
  const frame = systemHeap.allocate(SIZE, { name: 'input-frame' });
  const writer = await frame.attach(new CpuDevice({ name: 'parent-writer' }));
  const w = await writer.map('bidirectional');
  for (const view of w.views()) view.fill(0x0f);
  await writer.unmap(w);
  await writer.detach();

  const frameFd = frame.fd(); // ours to close once the child has its copy
  const [channel, theirs] = BufferChannel.pair();
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'child'], {
    stdio: ['inherit', 'inherit', 'inherit', frameFd, theirs],
  });
  closeSync(frameFd);
  closeSync(theirs);

  // channel.peer names the child from its first message on (before it, only the pair's creator).
  const { buffer: result, meta } = await channel.receive({ signal: AbortSignal.timeout(30_000) });
  const reader = await result.attach(new CpuDevice({ name: 'parent-reader' }));
  const r = await reader.map('to-device');
  const ok = r.views().every((view) => view.every((b) => b === 0xf0));
  console.log(`[parent] pid ${process.pid}: result "${result.name}" (${result.size} bytes) from pid ${channel.peer.pid}: ${JSON.stringify(meta)}, contents ${ok ? 'inverted as expected' : 'WRONG'}`);
  await reader.unmap(r);
  await reader.detach();
  result.put();

  channel.close(); // tells the child (the result's exporter) that we are done
  frame.put();
  await once(child, 'exit');
  console.log(`[parent] done; input frame released: ${frame.released}`);
}

async function child(): Promise<void> {
  // fd 3: the input frame's file. get() takes its own reference, so fd 3 can go.
  const input = await DmaBuf.get(3);
  closeSync(3);
  const channel = BufferChannel.fromFd(4);

  const reader = await input.attach(new CpuDevice({ name: 'child-reader' }));
  const src = await reader.map('to-device');

  const output = systemHeap.allocate(input.size, { name: 'inverted-frame' });
  const writer = await output.attach(new CpuDevice({ name: 'child-writer' }));
  const dst = await writer.map('bidirectional');
  // Both tables cover the buffer in order; copy across segment boundaries, inverting.
  const out = dst.views();
  let d = 0;
  let dOff = 0;
  for (const view of src.views()) {
    for (const byte of view) {
      while (dOff >= out[d]!.length) {
        d++;
        dOff = 0;
      }
      out[d]![dOff++] = ~byte & 0xff;
    }
  }
  await writer.unmap(dst);
  await writer.detach();
  await reader.unmap(src);
  await reader.detach();
  input.put();

  await channel.send(output, { op: 'invert', from: input.name });
  output.put();
  console.log(`[child] pid ${process.pid} sent the inverted frame to pid ${channel.peer.pid}`);

  // We export the result: stay until the parent hangs up.
  try {
    await channel.receiveFd();
  } catch {
    // EPIPE: the parent closed the channel
  }
  channel.close();
}

if (process.argv[2] === 'child') await child();
else await parent();
