/**
 * One-message hand-offs, the exporter's side.
 *
 * When the thread that exported a buffer sends it (over a {@link BufferChannel} or to a
 * worker), the message that carries the buffer's file can carry everything the receiver would
 * otherwise ask for: the buffer's description (what a HELLO answers), a private channel to this
 * exporter (created once per route and reused by later hand-offs), and a CPU attach and map
 * made ahead, with the memfd. The receiver then imports and maps with no request to the
 * exporter: one message, one hop.
 *
 * The exporter stays in charge: the map made ahead is a real map of a real attachment (of a
 * {@link RemoteDevice} with a CPU's default constraints), outstanding until the receiver
 * unmaps it, drops it, or goes away, exactly like a map it asked for. It is only made when the
 * exporter says that its storage exists (`ops.storageReady`), so that late allocation still
 * sees every device that attaches.
 *
 * @module
 */
import type { DmaBuf } from '../core/dma-buf.js';
import { DmaBufError } from '../core/errors.js';
import { kExportedHere } from '../core/internal.js';
import { native } from '../native/binding.js';
import { andThen, type Now } from '../core/now.js';
import { ServiceChannel, describe, type Answer } from './service.js';
import { RemoteDevice } from './remote-device.js';

/** The device a map made ahead is made for: a CPU with no constraint but 4 GiB views. */
export const HANDOFF_DEVICE = Object.freeze({
  name: 'handoff',
  kind: 'cpu',
  maxSegmentSize: 2 ** 32,
  maxSegments: Number.MAX_SAFE_INTEGER,
  segmentAlignment: 1,
  pageSize: 4096,
});

/** How the descriptors of an offer travel. */
export type HandoffTransport =
  /** In a Unix-socket message: the kernel copies them; the sender closes its own after. */
  | 'socket'
  /** As numbers in a message to another thread of this process: the receiver takes them over. */
  | 'thread';

/** What an offer adds to the message that carries a buffer's file. */
export interface HandoffOffer {
  /** The description, sent as JSON along with the file. */
  readonly body: Record<string, unknown>;
  /**
   * Descriptors to send after the buffer's file, in this order: the memory (when `body.map`
   * is present), then the channel's other end (when `body.channel` is true).
   */
  readonly fds: readonly number[];
  /** The message left. Closes what only the message needed. Idempotent. */
  sent(): void;
  /** The message could not be sent: undoes the map and the attach. Idempotent. */
  failed(): void;
}

/** The device of a map made ahead for the receiver in process `pid`. */
function handoffDevice(pid: number): RemoteDevice {
  const { name, kind, ...constraints } = HANDOFF_DEVICE;
  return new RemoteDevice({ name: `${name}@${pid}`, ...constraints }, kind, pid);
}

interface Route {
  channel: ServiceChannel;
}

/** A channel per route (a BufferChannel, a worker's port): the receiver's thread keeps it. */
const routes = new WeakMap<object, Route>();

/**
 * Prepares a hand-off of `buf` to the receiver at the end of `route`, whose process is
 * `peerPid`. Returns null when this thread did not export `buf` (the receiver then imports it
 * through the buffer's file, as any holder does). The offer comes in this call when the attach
 * and map made ahead do (see {@link ServiceChannel.mapAhead}), else as a promise; may throw.
 */
export function offerHandoff(buf: DmaBuf, route: object, peerPid: number, transport: HandoffTransport): Now<HandoffOffer | null> {
  if (!buf[kExportedHere]) return null;
  let theirs = -1;
  let route_ = routes.get(route);
  if (!route_ || route_.channel.conn.closed) {
    const c = native.constants;
    const [ours, other] = native.socketpair(c.SOCK_SEQPACKET, false);
    let channel: ServiceChannel;
    try {
      channel = new ServiceChannel(ours, peerPid);
    } catch (err) {
      native.close(ours);
      native.close(other);
      throw err;
    }
    route_ = { channel };
    routes.set(route, route_);
    theirs = other;
  }
  const { channel } = route_;
  channel.adopt(buf);
  const body: Record<string, unknown> = describe(buf, channel, false);
  const offer = (ahead: Answer | undefined): HandoffOffer => makeOffer(channel, body, ahead, theirs, transport);
  // Without a map made ahead (no storage yet, or it failed): the receiver asks for its own.
  const none = (): HandoffOffer => offer(undefined);
  if (buf.ops.storageReady?.(buf) !== true) return none();
  let ahead: Now<Answer>;
  try {
    const direction = buf.readOnly ? 'to-device' : 'bidirectional';
    ahead = channel.mapAhead(buf, handoffDevice(channel.pid), direction);
  } catch {
    return none();
  }
  return andThen(ahead, offer, none);
}

/** The offer of a description, a map made ahead (if any) and a channel's end (if `theirs` >= 0). */
function makeOffer(channel: ServiceChannel, body: Record<string, unknown>, ahead: Answer | undefined, theirs: number, transport: HandoffTransport): HandoffOffer {
  const fds: number[] = [];
  if (ahead) {
    body.map = ahead.body;
    const memory = ahead.fds[0]!;
    fds.push(transport === 'thread' ? native.dup(memory, true) : memory);
  }
  if (theirs >= 0) {
    body.channel = true;
    fds.push(theirs);
  }
  let settled = false;
  const ownFds = transport === 'thread' ? [...fds] : theirs >= 0 ? [theirs] : [];
  return {
    body,
    fds,
    sent() {
      if (settled) return;
      settled = true;
      // Over a socket the kernel holds copies now; to a thread, the receiver owns them.
      if (transport === 'socket') closeQuietly(ownFds);
    },
    failed() {
      if (settled) return;
      settled = true;
      closeQuietly(ownFds);
      if (theirs >= 0) channel.conn.close(new DmaBufError('EPIPE', 'the hand-off that carried the channel was not sent', { op: 'send' }));
      else void ahead?.undo?.().catch(() => {});
    },
  };
}

/**
 * The route is gone (the buffer channel closed, the worker ended): its channel closes once
 * the receiver holds nothing through it.
 */
export function endRoute(route: object): void {
  const r = routes.get(route);
  if (!r) return;
  routes.delete(route);
  r.channel.closeWhenIdle();
}

function closeQuietly(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // already gone
    }
  }
}
