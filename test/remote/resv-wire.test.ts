/**
 * The reservation and CPU-access messages on the wire, sent by hand on a raw channel as a
 * hostile holder would: malformed RESV_ADDs (no descriptor, two, one that is no fence, a bad
 * usage), a write fence on a read-only buffer, RESV_FENCES beyond 4 fences, waits counted,
 * cancelled and refused past the limit, a wait with id 0, CPU_ACCESS ranges. Every descriptor
 * comes back; the exporter goes on serving.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync } from 'node:fs';
import { DEFAULT_SERVICE_LIMITS, DmaFence, O_RDONLY, setServiceLimits, systemHeap, type DmaBuf } from '../../src/index.js';
import { usageFor } from '../../src/remote/limits.js';
import { MsgType, encode } from '../../src/remote/protocol.js';
import { closeFds, rawHandshake, rawRequest, recvMsg, sendRaw, until, type RawChannel } from '../protocol/raw.js';
import { native } from '../../src/native/binding.js';
import { recordingExport } from '../helpers.js';
import { checkDescriptorsAfterEach } from '../sync/agent.js';

checkDescriptorsAfterEach();
after(() => setServiceLimits(DEFAULT_SERVICE_LIMITS));

/** A raw channel to `buf`'s exporter (this thread), for `fn`; closed afterwards. */
async function withRaw<T>(buf: DmaBuf, fn: (ch: RawChannel, handle: number) => Promise<T>): Promise<T> {
  const file = buf.fd();
  const ch = await rawHandshake(file);
  closeSync(file);
  try {
    return await fn(ch, ch.welcome.body.buffer as number);
  } finally {
    native.close(ch.sock);
  }
}

/** A request's answer: its type name and body, its descriptors closed. */
async function ask(ch: RawChannel, type: (typeof MsgType)[keyof typeof MsgType], id: number, body: Record<string, unknown>, fds: number[] = []): Promise<{ ok: boolean; body: Record<string, unknown>; fds: number }> {
  const r = await rawRequest(ch, type, id, body, fds);
  closeFds(r.fds);
  return { ok: r.msg.type === MsgType.REPLY, body: r.msg.body, fds: r.fds.length };
}

test('RESV_ADD: no descriptor or two are EPROTO, a descriptor that is no fence EINVAL, a bad usage EPROTO, an unknown buffer EINVAL; every descriptor is closed', async () => {
  using buf = systemHeap.allocate(4096, { name: 'wire' });
  await withRaw(buf, async (ch, handle) => {
    const f = new DmaFence({ name: 'mine' });
    const a = f.toFd();
    const b = f.toFd();
    const file = openSync('/dev/null', 'r');
    try {
      assert.deepEqual((await ask(ch, MsgType.RESV_ADD, 2, { buffer: handle, usage: 'read' })).body.code, 'EPROTO');
      const two = await ask(ch, MsgType.RESV_ADD, 3, { buffer: handle, usage: 'read' }, [a, b]);
      assert.equal(two.body.code, 'EPROTO');
      assert.match(String(two.body.message), /exactly one descriptor/);
      assert.equal((await ask(ch, MsgType.RESV_ADD, 4, { buffer: handle, usage: 'read' }, [file])).body.code, 'EINVAL');
      assert.equal((await ask(ch, MsgType.RESV_ADD, 5, { buffer: handle, usage: 'sideways' }, [a])).body.code, 'EPROTO');
      assert.equal((await ask(ch, MsgType.RESV_ADD, 6, { buffer: handle + 1000, usage: 'read' }, [a])).body.code, 'EINVAL');
      assert.equal(buf.resv.test('bookkeep'), true, 'nothing was added');
      assert.equal((await ask(ch, MsgType.RESV_ADD, 7, { buffer: handle, usage: 'write' }, [a])).ok, true);
      assert.deepEqual(buf.resv.fences('read'), [f], 'the very fence: its fence file came back to its thread');
      assert.equal(usageFor(process.pid).fences, 1);
      f.signal();
      await until(() => usageFor(process.pid).fences === 0, 5000, 'the fence to be counted out');
    } finally {
      closeFds([a, b, file]);
    }
  });
});

test('RESV_ADD: a holder of a read-only buffer may add read and bookkeep fences, not write or kernel ones (EACCES)', async () => {
  using buf = systemHeap.allocate(4096, { name: 'read-only', flags: O_RDONLY });
  await withRaw(buf, async (ch, handle) => {
    const f = new DmaFence({ name: 'r' });
    const fd = f.toFd();
    try {
      for (const [i, usage] of (['write', 'kernel'] as const).entries()) {
        const r = await ask(ch, MsgType.RESV_ADD, 10 + i, { buffer: handle, usage }, [fd]);
        assert.equal(r.body.code, 'EACCES', usage);
      }
      assert.equal((await ask(ch, MsgType.RESV_ADD, 12, { buffer: handle, usage: 'read' }, [fd])).ok, true);
      assert.equal((await ask(ch, MsgType.RESV_ADD, 13, { buffer: handle, usage: 'bookkeep' }, [fd])).ok, true);
      assert.equal(buf.resv.test('read'), true);
      assert.equal(buf.resv.test('write'), false);
    } finally {
      closeSync(fd);
      f.signal();
    }
  });
});

test('RESV_FENCES carries at most 4 descriptors: beyond, the 4th is the other fences merged', async () => {
  using buf = systemHeap.allocate(4096, { name: 'many' });
  const fences = Array.from({ length: 6 }, (_, i) => new DmaFence({ name: `f${i}` }));
  for (const f of fences) buf.resv.add(f, 'read');
  await withRaw(buf, async (ch, handle) => {
    const r = await rawRequest(ch, MsgType.RESV_FENCES, 20, { buffer: handle, usage: 'write' });
    try {
      assert.deepEqual(r.msg.body, { fences: 4, merged: true });
      const imported = await Promise.all(r.fds.map((fd) => DmaFence.fromFd(fd)));
      assert.deepEqual(imported.slice(0, 3), fences.slice(0, 3), 'the first three as they are');
      const rest = imported[3]!;
      fences[3]!.signal();
      fences[4]!.signal();
      assert.equal(rest.signaled, false);
      fences[5]!.signal();
      assert.equal(await rest.wait({ timeout: 5000 }), true);
    } finally {
      closeFds(r.fds);
      for (const f of fences) f.signal();
    }
    const none = await ask(ch, MsgType.RESV_FENCES, 21, { buffer: handle, usage: 'read' });
    assert.deepEqual(none.body, { fences: 0, merged: false });
  });
});

test('RESV_WAIT: answered when the fences signal or at its timeout; counted, cancelled by CANCEL, refused past maxWaitsPerProcess; id 0 is not run', async () => {
  using buf = systemHeap.allocate(4096, { name: 'waits' });
  const painting = new DmaFence({ name: 'painting' });
  buf.resv.add(painting, 'write');
  setServiceLimits({ maxWaitsPerProcess: 2 });
  try {
    await withRaw(buf, async (ch, handle) => {
      assert.deepEqual((await ask(ch, MsgType.RESV_WAIT, 30, { buffer: handle, usage: 'read', timeout: 0 })).body, { signaled: false });
      assert.deepEqual((await ask(ch, MsgType.RESV_WAIT, 31, { buffer: handle, usage: 'read', timeout: 5 })).body, { signaled: false });
      assert.deepEqual((await ask(ch, MsgType.RESV_WAIT, 32, { buffer: handle, usage: 'bookkeep', timeout: 5 })).body, { signaled: false });
      await sendRaw(ch.sock, encode(MsgType.RESV_WAIT, 40, { buffer: handle, usage: 'read' }));
      await sendRaw(ch.sock, encode(MsgType.RESV_WAIT, 41, { buffer: handle, usage: 'read' }));
      await until(() => usageFor(process.pid).waits === 2, 5000, 'two waits to be pending');
      const dup = await ask(ch, MsgType.RESV_WAIT, 41, { buffer: handle, usage: 'read' });
      assert.equal(dup.body.code, 'EINVAL', 'an id already waiting');
      assert.match(String(dup.body.message), /already waiting/);
      const third = await ask(ch, MsgType.RESV_WAIT, 42, { buffer: handle, usage: 'read' });
      assert.equal(third.body.code, 'ENOSPC', 'a third is refused');
      // Id 0 is for notifications: a wait sent with it is not run (nor answered).
      await sendRaw(ch.sock, encode(MsgType.RESV_WAIT, 0, { buffer: handle, usage: 'read' }));
      // CANCEL of request 40: answered with EINTR; of an unknown request: nothing.
      await sendRaw(ch.sock, encode(MsgType.CANCEL, 0, { request: 40 }));
      await sendRaw(ch.sock, encode(MsgType.CANCEL, 0, { request: 999 }));
      const cancelled = await recvMsg(ch.sock);
      assert.equal(cancelled.msg.id, 40);
      assert.equal(cancelled.msg.body.code, 'EINTR');
      painting.signal();
      const done = await recvMsg(ch.sock);
      assert.deepEqual({ id: done.msg.id, body: done.msg.body }, { id: 41, body: { signaled: true } });
      await until(() => usageFor(process.pid).waits === 0, 5000, 'the waits to be counted out');
    });
  } finally {
    setServiceLimits(DEFAULT_SERVICE_LIMITS);
    painting.signal();
  }
});

test('CPU_ACCESS runs the exporter\'s op with the range; a range outside the buffer is EINVAL; an exporter without ops answers at once', async () => {
  const calls: string[] = [];
  const { buf } = recordingExport(8192, {
    beginCpuAccess: (_b, access, ctx) => { calls.push(`begin:${access}:${ctx.offset}+${ctx.length}`); },
    endCpuAccess: (_b, access, ctx) => { calls.push(`end:${access}:${ctx.offset}+${ctx.length}`); },
  });
  try {
    await withRaw(buf, async (ch, handle) => {
      assert.equal(ch.welcome.body.cpuAccess, true, 'the welcome says the exporter has CPU-access ops');
      assert.equal((await ask(ch, MsgType.CPU_ACCESS, 50, { buffer: handle, access: 'read', phase: 'begin', offset: 4096, length: 4096 })).ok, true);
      assert.equal((await ask(ch, MsgType.CPU_ACCESS, 51, { buffer: handle, access: 'read', phase: 'end', offset: 4096, length: 4096 })).ok, true);
      assert.equal((await ask(ch, MsgType.CPU_ACCESS, 52, { buffer: handle, access: 'write', phase: 'begin', offset: 4096, length: 4097 })).body.code, 'EINVAL');
      assert.equal((await ask(ch, MsgType.CPU_ACCESS, 53, { buffer: handle, access: 'write', phase: 'begin', offset: 0, length: 0 })).body.code, 'EINVAL');
      assert.equal((await ask(ch, MsgType.CPU_ACCESS, 54, { buffer: handle, access: 'rw', phase: 'begin', offset: 0, length: 1 })).body.code, 'EPROTO');
      assert.equal((await ask(ch, MsgType.CPU_ACCESS, 55, { buffer: handle, access: 'read', phase: 'middle', offset: 0, length: 1 })).body.code, 'EPROTO');
    });
    assert.deepEqual(calls, ['begin:read:4096+4096', 'end:read:4096+4096']);
  } finally {
    buf.put();
  }
  using plain = systemHeap.allocate(4096, { name: 'no-ops' });
  await withRaw(plain, async (ch, handle) => {
    assert.equal(ch.welcome.body.cpuAccess, false);
    assert.equal((await ask(ch, MsgType.CPU_ACCESS, 60, { buffer: handle, access: 'read', phase: 'begin', offset: 0, length: 4096 })).ok, true);
  });
});
