/**
 * The BufferChannel receiver: a long-lived child process with two BufferChannels from the
 * harness and a control socket.
 *
 * - fd 3, hand-offs: `channel.receive({ map: { device: cpu, direction: 'to-device' } })`, read
 *   the first and last byte (or every byte, `meta.read === 'all'`), then unmap, detach, put,
 *   and ack on fd 5 with `{ first, last, tMapped, tRead, tDone }`.
 * - fd 4, bare messages: `channel.receiveFd()` of a small descriptor, close it, ack on fd 5
 *   with `{ tRead }`: the bare BufferChannel hop, between the same two processes.
 * - fd 5, control (JSON packets, bench/receivers/wire.ts): the acks go out there; in,
 *   `{ op: 'stats' }` (cumulative CPU time of this process and garbage collections) and
 *   end-of-file (exit).
 */
import { BufferChannel, CpuDevice, DmaBufError } from '../../src/index.js';
import { native } from '../../src/native/binding.js';
import { Packets, observeGc, readAndRelease, serveControl } from './wire.js';

const handoffs = BufferChannel.fromFd(3);
const bare = BufferChannel.fromFd(4);
const control = new Packets(5);
const cpu = new CpuDevice({ name: 'bench-channel-receiver' });
const map = { device: cpu, direction: 'to-device' as const };

const gc = observeGc();

function ended(err: unknown): boolean {
  return DmaBufError.is(err, 'EPIPE');
}

async function serveHandoffs(): Promise<void> {
  for (;;) {
    let got;
    try {
      got = await handoffs.receive({ map });
    } catch (err) {
      if (ended(err)) return;
      control.send({ ok: false, error: String((err as Error)?.stack ?? err) });
      continue;
    }
    try {
      const tMapped = process.hrtime.bigint();
      const r = await readAndRelease(got, (got.meta as { read?: string } | undefined)?.read === 'all');
      control.send({ ok: true, ...r, tMapped });
    } catch (err) {
      control.send({ ok: false, error: String((err as Error)?.stack ?? err) });
    }
  }
}

async function serveBare(): Promise<void> {
  for (;;) {
    let fd: number;
    try {
      ({ fd } = await bare.receiveFd());
    } catch (err) {
      if (ended(err)) return;
      control.send({ ok: false, error: String((err as Error)?.stack ?? err) });
      continue;
    }
    const tRead = process.hrtime.bigint();
    native.close(fd);
    control.send({ ok: true, tRead });
  }
}

void serveHandoffs();
void serveBare();
serveControl(control, gc);
