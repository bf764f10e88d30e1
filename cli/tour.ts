/**
 * `dmabuf tour`: a short tour of the framework in one process. An exporter (the system heap)
 * exports a buffer; an importer gets it back from a descriptor, attaches two CPU devices,
 * writes through one and reads through the other, without a copy; then everything is
 * unmapped, detached and put, and the exporter's release runs.
 */
import { closeSync } from 'node:fs';
import { CpuDevice, DmaBuf, systemHeap } from '../src/index.js';
import { integerOption, parseOptions, type Command } from './args.js';

function fmtBytes(n: number): string {
  return n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / 1024).toFixed(1)} KiB`;
}

/** Runs the tour, printing each step. */
export async function tour(options: { size?: number; log?: (line: string) => void } = {}): Promise<void> {
  const size = options.size ?? 16 * 1024 * 1024;
  const log = options.log ?? ((line: string) => console.log(line));

  const exported = systemHeap.allocate(size, { name: 'demo-frame' });
  log(`1. export  the system heap exported "${exported.name}" (${fmtBytes(size)}); no memory yet (late allocation): allocated=${systemHeap.storage(exported).allocated}`);

  const fd = exported.fd();
  log(`2. fd      descriptor ${fd} of the buffer's file (a socket: it carries the buffer's lifetime)`);

  const buf = await DmaBuf.get(fd);
  closeSync(fd);
  log(`3. get     the importer got the buffer back from the descriptor (same object in this thread: ${buf === exported}, refs=${buf.refs})`);

  const writer = await buf.attach(new CpuDevice({ name: 'writer' }));
  const reader = await buf.attach(new CpuDevice({ name: 'reader', maxSegmentSize: 1 << 20 }));
  log(`4. attach  devices attached: ${buf.attachments.map((a) => a.device.name).join(', ')}`);

  const t0 = process.hrtime.bigint();
  const wt = await writer.map('bidirectional');
  const rt = await reader.map('to-device');
  const t1 = process.hrtime.bigint();
  const storage = systemHeap.storage(buf);
  log(`5. map     writer: ${wt.nents} segment(s); reader: ${rt.nents} segment(s) of at most 1 MiB; storage now allocated: ${fmtBytes(storage.size)} memfd, ${storage.pageSize}-byte pages (${Number(t1 - t0) / 1000} µs)`);

  const wv = wt.views()[0]!;
  const message = Buffer.from('hello from the writer, zero copies');
  wv.set(message, 0);
  wv[size - 1] = 0x42;
  const rv = rt.views();
  const last = rv[rv.length - 1]!;
  const seen = Buffer.from(rv[0]!.subarray(0, message.length)).toString();
  log(`6. share   writer wrote ${message.length} bytes at offset 0 and one at ${size - 1}; reader reads "${seen}" and 0x${last[last.length - 1]!.toString(16)} (same memory: ${wt.segments[0]!.address!.toString(16)} vs ${rt.segments[0]!.address!.toString(16)} are two mappings of it)`);

  await writer.unmap(wt);
  await reader.unmap(rt);
  log(`7. unmap   views detached: the writer's stale view now has byteLength ${wv.byteLength}`);

  await writer.detach();
  await reader.detach();
  buf.put();
  exported.put();
  log(`8. release every reference put and every descriptor closed: released=${exported.released}, storage allocated=${systemHeap.storage(exported).allocated}`);
}

/** `dmabuf tour`: its command line. */
export const tourCommand: Command = {
  name: 'tour',
  synopsis: '[--size BYTES]',
  summary: 'one buffer, step by step: export, fd, get, attach, map, share, release',
  usage: `usage: dmabuf tour [--size BYTES]

One buffer, step by step, in one process: export, fd, get, attach, map, a write seen
through another device's view, unmap, detach, put and release.

  --size BYTES  the buffer's size (default ${16 * 1024 * 1024}: 16 MiB)
  -h, --help    this text`,
  async run(argv) {
    const v = parseOptions(argv, { size: { type: 'string' } });
    if (v.help) {
      console.log(this.usage);
      return 0;
    }
    const size = integerOption(v.size, 'size');
    await tour(size === undefined ? {} : { size });
    return 0;
  },
};
