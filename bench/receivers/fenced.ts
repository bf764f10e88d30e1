/**
 * The fenced-ring receiver: imports a ring of buffers once (descriptor 3 carries the control
 * messages and the buffers' descriptors), maps each once, then consumes the frames announced
 * on descriptor 4 (a SOCK_SEQPACKET socket) as a fenced ring's consumer does
 * (`cli/fenced-ring.ts`): adds a read fence to the slot's reservation object, claims the frame
 * (4 bytes back: its number), waits with `beginCpuAccess('read')` for the producer's write
 * fence, reads the slot and signals the read fence.
 *
 * - `{ op: 'ring' }` + N descriptors: get, attach, map('to-device') each.
 * - `{ op: 'run', full }`: consume until an announcement with the stop flag; each
 *   announcement is 6 bytes: the frame's number (u32 LE), the slot, and the stop flag. The
 *   read checks the frame's tag (`frame & 0x7f`): in the first and last byte, or (`full`) in
 *   every byte. Answers `{ stopped, bad, cpuUs }` (the CPU time of the run, warm-up included).
 */
import { CpuDevice, type DmaBuf } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { consumeFrame } from '../../cli/fenced-ring.js';
import { Packets, importRing, readEnds, uniformByte, watchPackets } from './wire.js';

const link = new Packets(3);
const NOTIFY = 4;
const device = new CpuDevice({ name: 'bench-fenced' });
const slots: { buf: DmaBuf; view: Uint8Array }[] = [];

function run(full: boolean, done: (bad: number, cpuUs: number) => void): void {
  const cpu0 = process.cpuUsage();
  let bad = 0;
  let inFlight = 0;
  let stopping = false;
  const claim = new Uint8Array(4);
  const finish = (): void => {
    if (stopping && inFlight === 0) {
      const cpu = process.cpuUsage(cpu0);
      done(bad, cpu.user + cpu.system);
    }
  };
  watchPackets(NOTIFY, (data) => {
    if (data.length < 6 || data[5] === 1) return false;
    const frame = data.readUInt32LE(0);
    const { buf, view } = slots[data[4]!]!;
    const tag = frame & 0x7f;
    inFlight += 1;
    consumeFrame(buf, () => {
      new DataView(claim.buffer).setUint32(0, frame, true);
      native.sendmsg(NOTIFY, claim, [], 0);
    }, () => {
      const [first, last] = full ? [uniformByte(view), tag] : readEnds(view);
      if (first !== tag || last !== tag) bad += 1;
    }).then(() => {
      inFlight -= 1;
      finish();
    }, (err: unknown) => link.send({ ok: false, error: String((err as Error)?.stack ?? err) }));
    return true;
  }, () => {
    stopping = true;
    finish();
  });
}

link.listen((msg, fds) => {
  const step = async (): Promise<void> => {
    if (msg.op === 'ring') {
      slots.push(...await importRing(fds, device));
      link.send({ ok: true, slots: slots.length });
    } else if (msg.op === 'run') {
      link.send({ ok: true, started: true });
      run(msg.full === true, (bad, cpuUs) => link.send({ ok: true, stopped: true, bad, cpuUs }));
    } else if (msg.op === 'eof') {
      process.exit(0);
    }
  };
  step().catch((err: unknown) => link.send({ ok: false, error: String((err as Error)?.stack ?? err) }));
});
link.send({ ok: true, ready: true });
