/**
 * The part the two minimal receivers share (`receivers/minimal.ts` for a process,
 * `receivers/minimal-worker.ts` for a thread), once the memfd passed their checks: `mmap`,
 * one view, the first and last byte; the view detached, `munmap`, the file closed; then, after
 * the receiver's acknowledgement, UNMAP, DETACH and PUT sent to the exporter as one BATCH on
 * the route's channel, as the package sends them (at the end of the turn).
 */
import { native } from '../../src/native/binding.js';
import { MsgType, encode } from '../../src/remote/protocol.js';

const c = native.constants;

/** The fields of a hand-off offer the minimal receivers use. */
export interface MinimalOffer {
  buffer: number;
  size: number;
  pid: number;
  channel?: boolean;
  map: { attachment: number; map: number };
}

/** What the minimal receivers answer (as the package's receivers do). */
export interface MinimalRead {
  first: number;
  last: number;
  stale: number;
  tMapped: bigint;
  tRead: bigint;
  tDone: bigint;
}

/**
 * The check a receiver may not skip before mapping: `memfd` is a memfd sealed against
 * shrinking and growing, and covers `size` bytes (else a peer could truncate it under the
 * mapping). Throws otherwise.
 */
export function checkStorage(memfd: number, size: number): void {
  const [, fileSize, seals] = native.memoryInfo(memfd);
  const needed = c.F_SEAL_SHRINK | c.F_SEAL_GROW;
  if (seals < 0 || (seals & needed) !== needed || fileSize < size) throw new Error('storage not sealed or too small');
}

/**
 * Maps `memfd` (checked, then closed here), reads both ends, unmaps and closes `file`. The
 * exporter's map, attach and grant are given back by {@link giveBack}, after the
 * acknowledgement.
 */
export function readAndRelease(memfd: number, file: number, h: MinimalOffer): MinimalRead {
  const handle = native.mmap(memfd, h.size, 0, c.PROT_READ | c.PROT_WRITE, c.MAP_PRIVATE);
  native.close(memfd);
  const tMapped = process.hrtime.bigint();
  const ab = native.mappingView(handle, 0, h.size);
  const view = new Uint8Array(ab);
  const first = view[0]!;
  const last = view[view.length - 1]!;
  const tRead = process.hrtime.bigint();
  native.detachView(ab);
  native.munmap(handle);
  native.close(file);
  return { first, last, stale: ab.byteLength, tMapped, tRead, tDone: process.hrtime.bigint() };
}

/** Gives the exporter its map, attach and grant back on `route`: UNMAP, DETACH and PUT in one BATCH. */
export function giveBack(route: number, h: MinimalOffer): void {
  const notes = [
    [MsgType.UNMAP, { map: h.map.map }],
    [MsgType.DETACH, { attachment: h.map.attachment }],
    [MsgType.PUT, { buffer: h.buffer, grants: 1 }],
  ];
  native.sendmsg(route, encode(MsgType.BATCH, 0, { messages: notes }), [], c.MSG_DONTWAIT);
}
