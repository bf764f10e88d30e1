/**
 * The receiving process of bench/kernel/vivid-handoff.ts. Descriptor 3 is a BufferChannel
 * (frames as dma-bufs), descriptor 4 a Unix stream socket (frames as copied bytes: a header
 * of 12 bytes, [length u32, sequence u32, mode u32], then the bytes). For each frame it does
 * the consumer's work (`mode` 0: read 8 pixels, the bars' centres; 1: add up every byte) and
 * prints one JSON line: {"seq", "value"}.
 */
import net from 'node:net';
import { BufferChannel, CpuDevice, type DmaBuf, type SgTable } from '../../src/index.js';

const HEADER = 12;

/** The 8 bytes the sampling consumer reads: each bar's centre on the middle line (YUYV). */
function samplePositions(length: number, width: number): number[] {
  const bytesPerLine = width * 2;
  const line = Math.floor(length / bytesPerLine / 2) * bytesPerLine;
  return Array.from({ length: 8 }, (_, bar) => line + ((((bar + 0.5) * width) / 8) & ~1) * 2);
}

function consume(view: Uint8Array, mode: number, width: number): number {
  let v = 0;
  if (mode === 1) {
    for (let i = 0; i < view.length; i++) v += view[i]!;
  } else {
    for (const p of samplePositions(view.length, width)) v += view[p]!;
  }
  return v;
}

const reply = (seq: number, value: number): void => {
  process.stdout.write(`${JSON.stringify({ seq, value })}\n`);
};

// Frames as dma-bufs: map each driver buffer once, keep the map, bracket every read.
const channel = BufferChannel.fromFd(3);
const maps = new Map<DmaBuf, SgTable>();
void (async () => {
  for await (const { buffer, meta } of channel) {
    const m = meta as { seq: number; mode: number; width: number; bytesUsed: number };
    let sgt = maps.get(buffer);
    if (sgt) {
      buffer.put(); // receive took one more reference on a buffer we already hold
    } else {
      const att = await buffer.attach(new CpuDevice());
      sgt = await att.map('to-device');
      maps.set(buffer, sgt);
    }
    await buffer.beginCpuAccess('read');
    const value = consume(sgt.segments[0]!.view!.subarray(0, m.bytesUsed), m.mode, m.width);
    await buffer.endCpuAccess('read');
    reply(m.seq, value);
  }
})();

// Frames as bytes: consumed as they arrive (every byte added up, or the 8 sampled bytes
// picked out), never assembled into a second copy.
const socket = new net.Socket({ fd: 4, readable: true, writable: false });
let header = Buffer.alloc(0);
let remaining = 0;
let pos = 0;
let seq = 0;
let mode = 0;
let value = 0;
let targets: number[] = [];
socket.on('data', (chunk: Buffer) => {
  let off = 0;
  while (off < chunk.length) {
    if (remaining === 0) {
      const need = HEADER - header.length;
      header = Buffer.concat([header, chunk.subarray(off, off + need)]);
      off += Math.min(need, chunk.length - off);
      if (header.length < HEADER) return;
      remaining = header.readUInt32LE(0);
      seq = header.readUInt32LE(4);
      mode = header.readUInt32LE(8) & 0xffff;
      targets = mode === 1 ? [] : samplePositions(remaining, header.readUInt32LE(8) >>> 16);
      header = Buffer.alloc(0);
      pos = 0;
      value = 0;
      continue;
    }
    const piece = chunk.subarray(off, off + remaining);
    if (mode === 1) {
      for (let i = 0; i < piece.length; i++) value += piece[i]!;
    } else {
      for (const t of targets) if (t >= pos && t < pos + piece.length) value += piece[t - pos]!;
    }
    off += piece.length;
    pos += piece.length;
    remaining -= piece.length;
    if (remaining === 0) reply(seq, value);
  }
});
socket.on('end', () => channel.close());
