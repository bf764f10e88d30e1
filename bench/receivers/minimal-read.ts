/**
 * The part the two minimal receivers share (`receivers/minimal.ts` for a process,
 * `receivers/minimal-worker.ts` for a thread), once the memfd passed their checks: `mmap`,
 * one view, the first and last byte; the view detached, `munmap`, the file closed, and UNMAP,
 * DETACH and PUT sent to the exporter one by one on the route's channel, as the package sends
 * them.
 */
import { native } from '../../src/native/binding.js';
import { MsgType, encode } from '../../src/remote/protocol.js';

const c = native.constants;

function notify(route: number, type: (typeof MsgType)[keyof typeof MsgType], body: Record<string, unknown>): void {
  native.sendmsg(route, encode(type, 0, body), [], c.MSG_DONTWAIT);
}

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
 * Maps `memfd` (checked, then closed here), reads both ends, unmaps, closes `file` and gives
 * the exporter its map, attach and grant back on `route`.
 */
export function readAndGiveBack(route: number, memfd: number, file: number, h: MinimalOffer): MinimalRead {
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
  notify(route, MsgType.UNMAP, { map: h.map.map });
  notify(route, MsgType.DETACH, { attachment: h.map.attachment });
  native.close(file);
  notify(route, MsgType.PUT, { buffer: h.buffer, grants: 1 });
  return { first, last, stale: ab.byteLength, tMapped, tRead, tDone: process.hrtime.bigint() };
}
