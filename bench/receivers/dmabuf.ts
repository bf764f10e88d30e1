/**
 * The dmabuf receiver: a long-lived child process that imports buffers handed to it on
 * descriptor 3 (a SOCK_SEQPACKET socket; each message carries one buffer descriptor).
 *
 * - `{ op: 'handoff', read, pageSize }`: times, from the moment recvmsg returned the
 *   descriptor, DmaBuf.get, attach (a CpuDevice), map('to-device') and the read (first and
 *   last byte, or every byte), then unmaps, detaches, puts and acks with the timestamps.
 * - `{ op: 'hold' }`: imports, maps and touches every page, acks, and keeps the mapping until
 *   `{ op: 'drop' }` (the memory case).
 */
import { CpuDevice, DmaBuf, type DmaBufAttachment, type SgTable } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { Packets, readEnds, sumAll, touchPages, type Msg, observeGc } from './wire.js';

const link = new Packets(3);
const devices = new Map<number, CpuDevice>();
let held: { buf: DmaBuf; att: DmaBufAttachment; sgt: SgTable } | null = null;

// Garbage collections in this process (cumulative; the harness takes differences). V8 counts
// the memory behind an external ArrayBuffer (a view of a mapping) as external memory, which
// can start collections; this shows whether it does.
const gc = observeGc();

function device(pageSize: number): CpuDevice {
  let d = devices.get(pageSize);
  if (!d) {
    d = new CpuDevice(pageSize > 4096 ? { name: 'bench-receiver', pageSize } : { name: 'bench-receiver' });
    devices.set(pageSize, d);
  }
  return d;
}

async function handoff(msg: Msg, fd: number, tRecv: bigint): Promise<void> {
  const cpu0 = process.cpuUsage();
  let buf: DmaBuf;
  let att;
  let sgt;
  let tGet: bigint;
  let tAttach: bigint;
  if (msg.oneTrip) {
    // DmaBuf.getMapped: get, attach and map in one round trip to the exporter.
    try {
      ({ buffer: buf, attachment: att, sgt } = await DmaBuf.getMapped(fd, device(Number(msg.pageSize ?? 4096)), 'to-device'));
    } finally {
      native.close(fd);
    }
    tGet = tAttach = process.hrtime.bigint();
  } else {
    try {
      buf = await DmaBuf.get(fd);
    } finally {
      native.close(fd); // get took its own reference
    }
    tGet = process.hrtime.bigint();
    att = await buf.attach(device(Number(msg.pageSize ?? 4096)));
    tAttach = process.hrtime.bigint();
    sgt = await att.map('to-device');
  }
  const tMap = process.hrtime.bigint();
  const view = sgt.segments[0]!.view!;
  const [first, last] = readEnds(view);
  const sum = msg.read === 'all' ? sumAll(view) : 0;
  const tRead = process.hrtime.bigint();
  await att.unmap(sgt);
  await att.detach();
  buf.put();
  const tDone = process.hrtime.bigint();
  const cpu = process.cpuUsage(cpu0);
  link.send({ ok: true, first, last, sum, nents: sgt.nents, tRecv, tGet, tAttach, tMap, tRead, tDone, cpuUser: cpu.user, cpuSys: cpu.system, gc });
}

async function hold(fd: number): Promise<void> {
  let buf: DmaBuf;
  try {
    buf = await DmaBuf.get(fd);
  } finally {
    native.close(fd);
  }
  const att = await buf.attach(device(4096));
  const sgt = await att.map('to-device');
  const touched = touchPages(sgt.segments[0]!.view!);
  held = { buf, att, sgt };
  link.send({ ok: true, touched });
}

async function drop(): Promise<void> {
  if (held) {
    await held.att.unmap(held.sgt);
    await held.att.detach();
    held.buf.put();
    held = null;
  }
  link.send({ ok: true });
}

link.listen((msg, fds, at) => {
  const run = async (): Promise<void> => {
    switch (msg.op) {
      case 'handoff': return handoff(msg, fds[0]!, at);
      case 'hold': return hold(fds[0]!);
      case 'drop': return drop();
      case 'ping': return link.send({ ok: true });
      case 'eof': process.exit(0);
      // eslint-disable-next-line no-fallthrough
      default: throw new Error(`unknown op ${String(msg.op)}`);
    }
  };
  run().catch((err: unknown) => {
    link.send({ ok: false, error: String((err as Error)?.stack ?? err) });
  });
});
link.send({ ok: true, ready: true, pid: process.pid });
