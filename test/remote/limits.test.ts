/**
 * Limits of what one importer process may hold at an exporter (issue 8, items 2 and 3): past
 * them its requests fail with ENOSPC, harmlessly, while other processes keep being served.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { CpuDevice, DmaBufError, systemHeap, setServiceLimits, serviceLimits, DEFAULT_SERVICE_LIMITS } from '../../src/index.js';
import { usageFor } from '../../src/remote/limits.js';
import { MsgType, encode } from '../../src/remote/protocol.js';
import { recvMsg, sendRaw, seqpacketPair, closeFds, rawHandshake, rawRequest, deviceBody, fdCount, until } from '../protocol/raw.js';
import { native } from '../../src/native/binding.js';
import { runChild, reapChildren } from '../helpers.js';

after(reapChildren);
after(() => setServiceLimits(DEFAULT_SERVICE_LIMITS));

async function legitImport(fd: number): Promise<void> {
  const r = await runChild(`
    const buf = await m.DmaBuf.get(3);
    const att = await buf.attach(new m.CpuDevice());
    const sgt = await att.map('to-device');
    out({ first: sgt.segments[0].view[0] });
    await att.detach();
    buf.put();
  `, [fd]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json[0], { first: 7 });
}

async function filled(name: string) {
  const buf = systemHeap.allocate(1 << 16, { name });
  const att = await buf.attach(new CpuDevice());
  const sgt = await att.map('bidirectional');
  sgt.segments[0]!.view!.fill(7);
  await att.detach();
  return buf;
}

test('setServiceLimits checks its input and serviceLimits reports it', () => {
  assert.throws(() => setServiceLimits({ maxMapsPerProcess: 0 }), (e: unknown) => DmaBufError.is(e, 'EINVAL'));
  assert.throws(() => setServiceLimits({ nope: 1 } as never), (e: unknown) => DmaBufError.is(e, 'EINVAL') && /unknown limit/.test((e as Error).message));
  setServiceLimits({ maxMapsPerProcess: 1234 });
  assert.equal(serviceLimits().maxMapsPerProcess, 1234);
  setServiceLimits(DEFAULT_SERVICE_LIMITS);
});

test('a process that opens channels beyond its limit is refused with ENOSPC; descriptors stay bounded; another process is served', async () => {
  const buf = await filled('channel-flood');
  const file = buf.fd();
  setServiceLimits({ maxChannelsPerProcess: 8 });
  const fdsBefore = fdCount();
  const kept: number[] = [];
  let refused = 0;
  try {
    for (let i = 0; i < 40; i++) {
      const [mine, theirs] = seqpacketPair();
      // Fresh channels, never the token of an earlier one: what a flooding holder sends.
      await sendRaw(file, encode(MsgType.HELLO, 1, { versions: [1], pid: process.pid, tokens: [] }), [theirs]);
      native.close(theirs);
      const { msg, fds } = await recvMsg(mine);
      closeFds(fds);
      if (msg.type === MsgType.ERROR) {
        assert.equal(msg.body.code, 'ENOSPC');
        assert.match(String(msg.body.message), /maxChannelsPerProcess = 8/);
        refused += 1;
        native.close(mine);
      } else {
        kept.push(mine);
      }
    }
    assert.equal(kept.length, 8);
    assert.equal(refused, 32);
    assert.equal(usageFor(process.pid).channels, 8);
    // The exporter holds 8 channels more than before (and our 8 ends): nothing else piled up.
    assert.ok(fdCount() - fdsBefore <= 16 + 2, `descriptors grew by ${fdCount() - fdsBefore}`);
    await legitImport(file);
  } finally {
    closeFds(kept);
    closeSync(file);
    setServiceLimits(DEFAULT_SERVICE_LIMITS);
  }
  await until(() => usageFor(process.pid).channels === 0, 5000, 'the closed channels to be counted out');
  buf.put();
});

test('maps and attachments beyond a process\'s limit fail with ENOSPC; closing the channel gives them back; another process is served', async () => {
  const buf = await filled('map-flood');
  const file = buf.fd();
  setServiceLimits({ maxMapsPerProcess: 50, maxAttachmentsPerProcess: 3 });
  const ch = await rawHandshake(file);
  try {
    const handle = ch.welcome.body.buffer as number;
    const attachments: number[] = [];
    for (let i = 0; i < 5; i++) {
      const { msg } = await rawRequest(ch, MsgType.ATTACH, 10 + i, { buffer: handle, device: deviceBody() });
      if (msg.type === MsgType.REPLY) attachments.push(msg.body.attachment as number);
      else assert.equal(msg.body.code, 'ENOSPC');
    }
    assert.equal(attachments.length, 3);
    let mapped = 0;
    let refused = 0;
    for (let i = 0; i < 70; i++) {
      const { msg, fds } = await rawRequest(ch, MsgType.MAP, 100 + i, { attachment: attachments[0], direction: 'to-device' });
      closeFds(fds);
      if (msg.type === MsgType.REPLY) mapped += 1;
      else {
        assert.equal(msg.body.code, 'ENOSPC');
        refused += 1;
      }
    }
    assert.equal(mapped, 50);
    assert.equal(refused, 20);
    assert.equal(buf.mapCount, 50);
    assert.deepEqual(usageFor(process.pid), { channels: 1, attachments: 3, maps: 50, fences: 0, waits: 0 });
    await legitImport(file);
  } finally {
    native.close(ch.sock);
    closeSync(file);
    setServiceLimits(DEFAULT_SERVICE_LIMITS);
  }
  await until(() => buf.mapCount === 0 && buf.attachments.length === 0, 5000, 'cleanup of the closed channel');
  assert.deepEqual(usageFor(process.pid), { channels: 0, attachments: 0, maps: 0, fences: 0, waits: 0 });
  buf.put();
});

test('notifications leave before a later request of the same turn: an unmap then a map in one turn fit under a limit of one map', async () => {
  const buf = await filled('notify-order');
  const file = buf.fd();
  setServiceLimits({ maxMapsPerProcess: 1 });
  try {
    const r = await runChild(`
      const buf = await m.DmaBuf.get(3);
      const att = await buf.attach(new m.CpuDevice());
      let sgt = await att.map('to-device');
      const results = [];
      for (let i = 0; i < 20; i++) {
        // Not awaited: the UNMAP notification waits for the end of this turn, the MAP request
        // is sent now; the MAP must not overtake the UNMAP (the limit is one map).
        const unmapped = att.unmap(sgt);
        const next = att.map('to-device');
        await unmapped;
        try { sgt = await next; results.push(sgt.segments[0].view[0]); } catch (e) { results.push(e.code); break; }
      }
      // And notifications alone still reach the exporter: the last unmap and the detach.
      await att.unmap(sgt);
      await att.detach();
      out({ results });
      buf.put();
    `, [file]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.json[0], { results: Array(20).fill(7) });
    await until(() => buf.mapCount === 0 && buf.attachments.length === 0, 5000, 'the last notifications');
  } finally {
    setServiceLimits(DEFAULT_SERVICE_LIMITS);
    closeSync(file);
    buf.put();
  }
});
