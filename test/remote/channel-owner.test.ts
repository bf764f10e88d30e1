/**
 * Issue 8, item 4: a HELLO's channel must belong to the process that sent the HELLO. A holder
 * that sends another process's buffer file as its "channel" must not pin that buffer.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import { BufferChannel, CpuDevice, systemHeap } from '../../src/index.js';
import { serviceChannels } from '../../src/remote/service.js';
import { finish, nextLine, reapChildren, startChild, waitFor } from '../helpers.js';

after(reapChildren);

const PROTOCOL_URL = new URL('../../src/remote/protocol.js', import.meta.url).href;

test('a HELLO whose channel is another process\'s buffer file is refused, and that buffer is still released', async () => {
  const b1 = systemHeap.allocate(1 << 16, { name: 'victim-exporter' });
  const a1 = await b1.attach(new CpuDevice());
  await a1.detach();
  // Another process exports B2 and sends us its file.
  const [toE2, e2End] = BufferChannel.pair();
  const e2 = startChild(`
    const ch = m.BufferChannel.fromFd(3);
    const b2 = m.systemHeap.allocate(4096, { name: 'pinned?' });
    const f = b2.fd();
    await ch.sendFd(f, {});
    native.close(f);
    b2.put();
    const timer = setInterval(() => { if (b2.released) { out({ released: true }); clearInterval(timer); ch.close(); } }, 5);
  `, [e2End], { timeoutMs: 30000 });
  closeSync(e2End);
  const e2Done = finish(e2);
  const { fd: b2File } = await toE2.receiveFd();
  const channelsBefore = serviceChannels().length;
  // The attacker sends a HELLO through B1's file with B2's file as its channel.
  const b1File = b1.fd();
  const attacker = startChild(`
    const { encode, MsgType } = await import(${JSON.stringify(PROTOCOL_URL)});
    native.sendmsg(3, encode(MsgType.HELLO, 1, { versions: [1], pid: process.pid, tokens: [] }), [4], 0);
    out({ sent: true });
  `, [b1File, b2File]);
  closeSync(b1File);
  closeSync(b2File);
  const r = await finish(attacker);
  assert.equal(r.code, 0, r.stderr);
  // Nothing was kept as a channel; the only holder of B2's file left is E2's own reference,
  // which it put: B2 is released.
  const e2Result = await e2Done;
  assert.ok(e2Result.json.some((v) => v.released === true), `B2 was not released: ${e2Result.stdout} ${e2Result.stderr}`);
  assert.equal(serviceChannels().length, channelsBefore, 'no channel was kept');
  // A legitimate importer of B1 is served.
  const legit = b1.fd();
  const ok = startChild(`
    const buf = await m.DmaBuf.get(3);
    const att = await buf.attach(new m.CpuDevice());
    await att.map('to-device');
    out({ ok: true });
    await att.detach();
    buf.put();
  `, [legit]);
  closeSync(legit);
  assert.deepEqual(await nextLine(ok, (v) => 'ok' in v), { ok: true });
  await finish(ok);
  toE2.close();
  b1.put();
  await waitFor(() => b1.released, 5000, 'B1 release');
});
