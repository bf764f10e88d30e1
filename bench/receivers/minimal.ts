/**
 * The least a safe JavaScript receiver of a one-message hand-off can do, with no framework: the
 * floor of any JavaScript design of the receiving side, to weigh what this package's receive
 * path (`channel.receive({ map })`) costs over it. Drop-in for `receivers/channel.ts` (same
 * descriptors, same acks, same control messages), driven by the same exporter.
 *
 * Per hand-off on fd 3: `recvmsg`, the header and JSON of the message, the checks a receiver
 * may not skip (the file was made by the process the offer names; the memfd is sealed against
 * shrinking and growing and covers the size), `mmap`, one view, the first and last byte; then
 * the view detached, `munmap`, the file closed, the ack, and UNMAP, DETACH and PUT sent to the
 * exporter as one BATCH on the route's channel, as the package sends them. No buffer,
 * attachment or table object; no limits, no fallback, no forged-offer handling beyond refusing
 * it.
 *
 * fd 4 (bare hops) and fd 5 (control) as in `receivers/channel.ts`.
 */
import { native, type PollHandle } from '../../src/native/binding.js';
import { decodeChannelMessage } from '../../src/transport/channel-wire.js';
import { checkStorage, giveBack, readAndRelease, type MinimalOffer } from './minimal-read.js';
import { Packets, observeGc, serveControl } from './wire.js';

const c = native.constants;
const control = new Packets(5);
const gc = observeGc();
/** The route's channel to the exporter, from the first hand-off on. */
let route = -1;
/** The watchers: a poll handle that is garbage collected stops watching. */
const watchers: PollHandle[] = [];


function onHandoff(): void {
  for (;;) {
    const r = native.recvmsg(3, 1 << 16, 4, c.MSG_DONTWAIT, true);
    if (r === null) return;
    if (r.data.length === 0) process.exit(0);
    const h = decodeChannelMessage(r.data).handoff as unknown as MinimalOffer;
    const [file, memfd, channel] = r.fds as [number, number, number | undefined];
    if (h.channel && channel !== undefined) route = channel;
    if (native.peerCred(file).pid !== h.pid) throw new Error('the file was not made by the process the offer names');
    native.fstat(file); // its key, as any receiver needs to know the buffer
    checkStorage(memfd, h.size);
    control.send({ ok: true, ...readAndRelease(memfd, file, h) });
    giveBack(route, h);
  }
}

function onBare(): void {
  for (;;) {
    const r = native.recvmsg(4, 1 << 16, 4, c.MSG_DONTWAIT, true);
    if (r === null) return;
    if (r.data.length === 0) process.exit(0);
    const tRead = process.hrtime.bigint();
    for (const fd of r.fds) native.close(fd);
    control.send({ ok: true, tRead });
  }
}

function watch(fd: number, fn: () => void): void {
  const handle = native.pollStart(fd, c.UV_READABLE | c.UV_DISCONNECT, () => {
    try {
      fn();
    } catch (err) {
      control.send({ ok: false, error: String((err as Error)?.stack ?? err) });
    }
  });
  native.pollRef(handle, true);
  watchers.push(handle);
}

watch(3, onHandoff);
watch(4, onBare);
serveControl(control, gc);
