/**
 * The pooled receiver: imports a ring of buffers once (descriptor 3 carries the control
 * messages and the buffers' descriptors), maps each once, then serves frames announced on
 * descriptor 4 (a SOCK_SEQPACKET socket): each notification is one byte, the ring slot; the
 * receiver reads the slot's first and last byte and answers them (two bytes).
 *
 * - `{ op: 'ring' }` + N descriptors: get, attach, map('to-device') each, keep the views.
 * - `{ op: 'run', mode: 'sync' }`: a blocking loop in recvmsg (like Atomics.wait), until the
 *   slot 255 arrives; `mode: 'loop'`: the same on the event loop (uv_poll). With `full: true`
 *   it reads every byte of the slot and answers, twice, the byte they all hold (255 if they
 *   differ). A notification with bit 0x40 set is a bare hop: the answer echoes it and no
 *   buffer is read.
 */
import { CpuDevice } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { Packets, importRing, readEnds, uniformByte, watchPackets } from './wire.js';

const link = new Packets(3);
const NOTIFY = 4;
const STOP = 255;
const device = new CpuDevice({ name: 'bench-pool' });
const views: Uint8Array[] = [];
const answer = new Uint8Array(2);

/** Whether the run reads every byte (`{ full: true }`): see {@link uniformByte}. */
let full = false;
/** A notification with this bit set is a bare hop: echo it twice, read no buffer. */
const BARE = 0x40;

/** Serves one notification; returns false at the stop byte. */
function serve(data: Buffer): boolean {
  const slot = data[0]!;
  if (slot === STOP) return false;
  if ((slot & BARE) !== 0) {
    answer[0] = slot;
    answer[1] = slot;
  } else {
    const v = views[slot]!;
    const [first, last] = full ? [uniformByte(v), uniformByte(v)] : readEnds(v);
    answer[0] = first;
    answer[1] = last;
  }
  native.sendmsg(NOTIFY, answer, [], 0);
  return true;
}

function runSync(): void {
  native.setNonblock(NOTIFY, false);
  for (;;) {
    const r = native.recvmsg(NOTIFY, 16, 0, 0);
    if (r.data.length === 0 || !serve(r.data)) return;
  }
}

function runLoop(done: () => void): void {
  watchPackets(NOTIFY, serve, done);
}

link.listen((msg, fds) => {
  const run = async (): Promise<void> => {
    if (msg.op === 'ring') {
      for (const { view } of await importRing(fds, device)) views.push(view);
      link.send({ ok: true, slots: views.length });
    } else if (msg.op === 'run') {
      full = msg.full === true;
      link.send({ ok: true, started: true });
      if (msg.mode === 'sync') {
        runSync();
        link.send({ ok: true, stopped: true });
      } else {
        runLoop(() => link.send({ ok: true, stopped: true }));
      }
    } else if (msg.op === 'eof') {
      process.exit(0);
    }
  };
  run().catch((err: unknown) => link.send({ ok: false, error: String((err as Error)?.stack ?? err) }));
});
link.send({ ok: true, ready: true });
