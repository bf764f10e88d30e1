/**
 * When an importer's notifications (UNMAP, DETACH, PUT, CANCEL: never answered) leave its
 * connection: together as one record, at the end of the event loop's turn, before a request
 * that follows them, or once 64 are pending; never in the call that made them, so that what
 * the program sends next in the same turn (an acknowledgement to the producer) goes first.
 * A real socketpair: the other end is read with recvmsg, as the exporter would read it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { native } from '../../src/native/binding.js';
import { Connection } from '../../src/remote/connection.js';
import { MAX_BATCH, MsgType, decode } from '../../src/remote/protocol.js';

const c = native.constants;

/** A connection on one end of a new pair, and the other end (non-blocking) to read it. */
function pair(): { conn: Connection; peer: number; close(): void } {
  const [ours, peer] = native.socketpair(c.SOCK_SEQPACKET, true);
  const conn = new Connection(ours, { onMessage: (_msg, fds) => fds.forEach((fd) => native.close(fd)) });
  return { conn, peer, close: () => { conn.close(); native.close(peer); } };
}

/** Every record waiting at `fd`, decoded (up to the end of the connection, if it came). */
function drain(fd: number): { type: number; id: number; body: Record<string, unknown> }[] {
  const out = [];
  for (;;) {
    const r = native.recvmsg(fd, 1 << 16, 4, c.MSG_DONTWAIT, true);
    if (r === null || (r.data.length === 0 && r.fds.length === 0)) return out;
    for (const d of r.fds) native.close(d);
    const msg = decode(r.data);
    out.push({ type: msg.type, id: msg.id, body: msg.body });
  }
}

test('unmap, detach and put notifications leave together as one BATCH at the end of the turn, not in the call', async () => {
  const { conn, peer, close } = pair();
  try {
    conn.notify(MsgType.UNMAP, { map: 6 });
    conn.notify(MsgType.DETACH, { attachment: 5 });
    conn.notify(MsgType.PUT, { buffer: 7, grants: 1 });
    assert.deepEqual(drain(peer), [], 'nothing sent in the turn that made them (an acknowledgement sent now goes first)');
    await nextTurn();
    assert.deepEqual(drain(peer), [{
      type: MsgType.BATCH,
      id: 0,
      body: { messages: [[MsgType.UNMAP, { map: 6 }], [MsgType.DETACH, { attachment: 5 }], [MsgType.PUT, { buffer: 7, grants: 1 }]] },
    }]);
    await nextTurn();
    assert.deepEqual(drain(peer), [], 'sent once');
  } finally {
    close();
  }
});

test('a lone notification leaves as itself, not wrapped in a BATCH', async () => {
  const { conn, peer, close } = pair();
  try {
    conn.notify(MsgType.PUT, { buffer: 3, grants: 2 });
    await nextTurn();
    assert.deepEqual(drain(peer), [{ type: MsgType.PUT, id: 0, body: { buffer: 3, grants: 2 } }]);
  } finally {
    close();
  }
});

test('a request sends the pending notifications first, in the call: the order on the channel is the order of the calls', async () => {
  const { conn, peer, close } = pair();
  try {
    conn.notify(MsgType.UNMAP, { map: 1 });
    conn.notify(MsgType.DETACH, { attachment: 2 });
    const answer = conn.request(MsgType.ATTACH, { buffer: 9, device: {} });
    answer.catch(() => {}); // closed below, unanswered
    const got = drain(peer);
    assert.equal(got.length, 2, 'both left before the turn ended');
    assert.deepEqual(got[0], { type: MsgType.BATCH, id: 0, body: { messages: [[MsgType.UNMAP, { map: 1 }], [MsgType.DETACH, { attachment: 2 }]] } });
    assert.equal(got[1]!.type, MsgType.ATTACH);
    assert.ok(got[1]!.id > 0, 'the request has an id');
    await nextTurn();
    assert.deepEqual(drain(peer), [], 'nothing left for the end of the turn');
  } finally {
    close();
  }
});

test(`${MAX_BATCH} pending notifications leave at once, as one BATCH; the next start a new one`, async () => {
  const { conn, peer, close } = pair();
  try {
    for (let i = 0; i < MAX_BATCH; i++) conn.notify(MsgType.UNMAP, { map: i + 1 });
    const full = drain(peer);
    assert.equal(full.length, 1);
    assert.equal(full[0]!.type, MsgType.BATCH);
    assert.equal((full[0]!.body.messages as unknown[]).length, MAX_BATCH);
    conn.notify(MsgType.DETACH, { attachment: 1 });
    assert.deepEqual(drain(peer), []);
    await nextTurn();
    assert.deepEqual(drain(peer), [{ type: MsgType.DETACH, id: 0, body: { attachment: 1 } }]);
  } finally {
    close();
  }
});

test('notifications pending when the connection closes leave before the end of it; those after are dropped, and nothing throws', async () => {
  const { conn, peer, close } = pair();
  try {
    conn.notify(MsgType.PUT, { buffer: 1, grants: 1 });
    conn.close();
    conn.notify(MsgType.PUT, { buffer: 2, grants: 1 });
    await nextTurn();
    assert.deepEqual(drain(peer), [{ type: MsgType.PUT, id: 0, body: { buffer: 1, grants: 1 } }], 'what was said before closing');
    const r = native.recvmsg(peer, 1 << 16, 4, c.MSG_DONTWAIT, true);
    assert.ok(r !== null && r.data.length === 0, 'then the end of the connection, and no other record');
  } finally {
    close();
  }
});
