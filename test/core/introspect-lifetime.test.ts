/**
 * When a thread's `dmabuf info` endpoint listens: after its first buffer, once the event loop
 * turns, also when that buffer is already gone (a stream of hand-offs releases each within
 * its turn); it stays up while buffers keep coming and going, and closes a while after the
 * last one. Each case in a fresh process, so that no other buffer of the test runner counts.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { INDEX_URL, finish, reapChildren } from '../helpers.js';

after(reapChildren);

function node(body: string): ChildProcess {
  const introspect = INDEX_URL.replace(/index\.js$/, 'remote/introspect.js');
  const script = `import * as m from ${JSON.stringify(INDEX_URL)};
import { introspectionAddress } from ${JSON.stringify(introspect)};
import { setTimeout as sleep } from 'node:timers/promises';
const out = (v) => console.log(JSON.stringify(v));
/** Whether the abstract name is listening, from /proc/net/unix (state 01 with the listening flag). */
const listening = async (name) => (await import('node:fs')).readFileSync('/proc/net/unix', 'utf8').split('\\n').some((l) => l.endsWith('@' + name) && l.split(/\\s+/)[3] === '00010000');
${body}`;
  return spawn(process.execPath, ['--no-warnings', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
}

test('info endpoint: a thread whose buffers are all released within their turn still listens, through a stream of them, and stops about two seconds after the last', { timeout: 30_000 }, async () => {
  const child = node(`
    const oneTurn = () => { const b = m.systemHeap.allocate(4096, { name: 'stream' }); b.put(); return b.released; };
    const releasedInTurn = oneTurn();
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    const name = introspectionAddress();
    const first = { releasedInTurn, name, listening: name !== null && await listening(name) };
    // A stream: a buffer made and released every 400 ms for 3.2 s, longer than the linger.
    const during = [];
    for (let i = 0; i < 8; i++) { await sleep(400); oneTurn(); during.push(introspectionAddress()); }
    const t0 = Date.now();
    while (introspectionAddress() !== null && Date.now() - t0 < 10_000) await sleep(50);
    out({ first, during, stoppedAfterMs: Date.now() - t0, stopped: introspectionAddress() === null, stillListening: name !== null && await listening(name) });`);
  const r = await finish(child);
  assert.equal(r.code, 0, r.stderr);
  const v = r.json[0] as { first: { releasedInTurn: boolean; name: string | null; listening: boolean }; during: (string | null)[]; stoppedAfterMs: number; stopped: boolean; stillListening: boolean };
  assert.equal(v.first.releasedInTurn, true, 'the buffer is released within its turn');
  assert.notEqual(v.first.name, null, 'the endpoint listens after the turn although the buffer is gone');
  assert.equal(v.first.listening, true, '/proc/net/unix shows the endpoint listening');
  assert.deepEqual(v.during, Array(8).fill(v.first.name), 'the same endpoint stays up through the stream');
  assert.equal(v.stopped, true, 'the endpoint stops once buffers stop coming');
  assert.ok(v.stoppedAfterMs >= 1000 && v.stoppedAfterMs <= 6000, `it stops a while after the last buffer (${v.stoppedAfterMs} ms)`);
  assert.equal(v.stillListening, false, 'and its socket is closed');
});

test('info endpoint: a thread that never makes a buffer never listens', async () => {
  const r = await finish(node(`
    await sleep(50);
    out({ name: introspectionAddress(), mine: (await import('node:fs')).readFileSync('/proc/net/unix', 'utf8').includes('dmabuf-info.' + process.pid + '.') });`));
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.json[0], { name: null, mine: false });
});
