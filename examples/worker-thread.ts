/**
 * Buffers to a worker thread with `postBuffer` / `receiveBuffer`.
 *
 * The main thread exports frames and posts them to a worker. The worker gets each buffer,
 * maps it for reading, sums its bytes without copying them, replies with the sum and puts the
 * buffer. Only a descriptor number crosses the thread boundary, never the buffer's bytes.
 *
 * Run (after `npm run build`):
 *
 *   node dist/examples/worker-thread.js
 */
import { once } from 'node:events';
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import { CpuDevice, isBufferMessage, postBuffer, receiveBuffer, systemHeap } from '../src/index.js';

const FRAMES = 4;
const SIZE = 8 << 20;

interface Reply {
  index: number;
  sum: number;
}

async function main(): Promise<void> {
  const worker = new Worker(new URL(import.meta.url));
  const replies = new Map<number, (r: Reply) => void>();
  worker.on('message', (r: Reply) => replies.get(r.index)?.(r));

  for (let index = 0; index < FRAMES; index++) {
    const frame = systemHeap.allocate(SIZE, { name: `frame-${index}` });
    const writer = await frame.attach(new CpuDevice({ name: 'main' }));
    const sgt = await writer.map('bidirectional');
    for (const view of sgt.views()) view.fill(index + 1);
    await writer.unmap(sgt);
    await writer.detach();

    const reply = new Promise<Reply>((resolve) => replies.set(index, resolve));
    postBuffer(worker, frame, { index });
    frame.put(); // the message holds the buffer's file until the worker receives it
    const { sum } = await reply;
    const expected = SIZE * (index + 1);
    console.log(`[main] frame ${index}: the worker summed ${sum} (${sum === expected ? 'correct' : 'WRONG'})`);
  }
  worker.postMessage('done');
  await once(worker, 'exit');
}

function workerThread(): void {
  const port = parentPort!;
  const device = new CpuDevice({ name: 'worker' });
  port.on('message', async (message: unknown) => {
    if (message === 'done') {
      port.close();
      return;
    }
    if (!isBufferMessage(message)) return;
    const { buffer, meta } = await receiveBuffer(message);
    try {
      const attachment = await buffer.attach(device);
      const sgt = await attachment.map('to-device');
      let sum = 0;
      for (const view of sgt.views()) for (const b of view) sum += b;
      await attachment.unmap(sgt);
      await attachment.detach();
      port.postMessage({ index: (meta as { index: number }).index, sum } satisfies Reply);
    } finally {
      buffer.put();
    }
  });
}

if (isMainThread) await main();
else workerThread();
