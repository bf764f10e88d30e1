/**
 * Buffers over a Unix domain socket, between two processes.
 *
 * The server exports frames from the system heap and sends them to a client that connects by
 * abstract name. The client maps each frame for reading in its own process, without a copy,
 * checks it and puts it. The server is the frames' exporter, so it stays up until the client
 * hangs up.
 *
 * Run (after `npm run build`):
 *
 *   node dist/examples/unix-socket.js                   # server; it starts the client itself
 *   node dist/examples/unix-socket.js client @name      # a client alone, for a running server
 *
 * A path works as well as an abstract name: pass `/tmp/frames.sock` instead of `@name`.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { BufferChannel, BufferServer, CpuDevice, systemHeap } from '../src/index.js';

const FRAMES = 3;
const FRAME_SIZE = 1 << 20;

interface FrameMeta {
  index: number;
  fill: number;
  last: boolean;
}

async function server(): Promise<void> {
  const address = `@dmabuf-example-${process.pid}`;
  const server = BufferServer.listen(address);
  console.log(`[server] listening on ${address}`);

  const client = spawn(process.execPath, [fileURLToPath(import.meta.url), 'client', address], { stdio: 'inherit' });
  const exited = once(client, 'exit'); // it may exit before the server sees its hang-up
  const channel = await server.accept({ signal: AbortSignal.timeout(10_000) });
  server.close(); // one client is all this example serves
  console.log(`[server] client connected (pid ${channel.peer.pid})`);

  for (let index = 0; index < FRAMES; index++) {
    const frame = systemHeap.allocate(FRAME_SIZE, { name: `frame-${index}` });
    const producer = await frame.attach(new CpuDevice({ name: 'producer' }));
    const sgt = await producer.map('bidirectional');
    for (const view of sgt.views()) view.fill(index + 1);
    await producer.unmap(sgt);
    await producer.detach();

    const meta: FrameMeta = { index, fill: index + 1, last: index === FRAMES - 1 };
    await channel.send(frame, meta);
    frame.put(); // the message, then the client, hold the frame from here on
    console.log(`[server] sent frame ${index}`);
  }

  // Stay up (the exporter answers the client's maps) until the client hangs up.
  try {
    await channel.receiveFd();
  } catch {
    // EPIPE: the client closed its end
  }
  channel.close();
  await exited;
  console.log('[server] done');
}

async function client(address: string): Promise<void> {
  const channel = await BufferChannel.connect(address, { signal: AbortSignal.timeout(10_000) });
  console.log(`[client] connected to pid ${channel.peer.pid}`);
  const device = new CpuDevice({ name: 'consumer' });
  for await (const { buffer, meta } of channel) {
    const { index, fill, last } = meta as FrameMeta;
    const attachment = await buffer.attach(device);
    const sgt = await attachment.map('to-device');
    const ok = sgt.views().every((view) => view.every((b) => b === fill));
    console.log(`[client] frame ${index}: "${buffer.name}", ${buffer.size} bytes, contents ${ok ? 'as sent' : 'WRONG'}`);
    await attachment.unmap(sgt);
    await attachment.detach();
    buffer.put();
    if (last) break;
  }
  channel.close();
}

const [, , role, address] = process.argv;
if (role === 'client') {
  if (!address) {
    console.error('usage: unix-socket.js client <address>');
    process.exit(2);
  }
  await client(address);
} else {
  await server();
}
