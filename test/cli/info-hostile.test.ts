/**
 * `dmabuf info` against endpoints that lie, flood or stall: real processes that take another
 * process's endpoint name and answer made-up buffers, answer without end, answer nonsense,
 * claim another exporter's buffer, listen as a user that may not speak for them, keep every
 * answer slot taken, or stop accepting. None of what they say may be listed as another
 * process's; each is said (skipped, busy, timed out); and the honest threads of the same run
 * are still listed.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { native } from '../../src/native/binding.js';
import { INTROSPECTION_BUSY, MAX_INTROSPECTION_CLIENTS } from '../../src/remote/introspect.js';
import { DEFAULT_MAX_ANSWER, type Report, type SkippedEndpoint, type ThreadReport } from '../../cli/info.js';
import { nextLine, reapChildren, startChild } from '../helpers.js';
import { CAN_MEASURE, byName, infoJson, runInfo } from './info-run.js';

const TAG = `hostile-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
const NOBODY = 65534;

/**
 * For child scripts: `listen(name, onConnection)` binds the abstract name exactly (Node's own
 * `net` pads abstract names to the full address length), and `snapshot()` / `row()` make a
 * well-formed answer.
 */
const FAKE = `
import net from 'node:net';
const listen = (name, onConnection) => {
  const fd = native.socket(native.constants.SOCK_STREAM, true);
  native.bind(fd, '\\0' + name);
  native.listen(fd, 64);
  return net.createServer((s) => { s.on('error', () => {}); onConnection(s); }).listen({ fd });
};
const snapshot = (pid, threadId, exported) => JSON.stringify({ version: 1, pid, threadId, isMainThread: threadId === 0, title: 'node', script: '', time: Date.now(), exported, imported: [], serviceChannels: [], importChannels: [] });
const row = (name, key) => ({ id: 1, name, exporter: 'system', size: 2 ** 40, flags: 2, refs: 1, sealed: false, released: false, key, attachments: [], maps: 0 });
`;

/** Lives until killed (reapChildren). */
const STAY = 'setInterval(() => {}, 1 << 30);';

const pids = { sleeper: 0, victim: 0, squatter: 0, hostile: 0 };
let victimKey = '';
let sleeper: ChildProcess | null = null;

before(async () => {
  // A process that is alive and has no endpoint: its pid is one a squatter can claim.
  sleeper = spawn('sleep', ['1000'], { stdio: 'ignore' });
  pids.sleeper = sleeper.pid!;
  // The victim exports a buffer, but only after the squatter took its name: its thread then
  // listens on the next free name, `...<pid>.0.1`.
  const victim = startChild(`
    out({ pid: process.pid });
    await new Promise((r) => process.stdin.once('data', r));
    const buf = m.systemHeap.allocate(65536, { name: '${TAG}-victim' });
    const att = await buf.attach(new m.CpuDevice({ name: 'victim-cpu' }));
    globalThis.keep = [buf, att, await att.map('bidirectional')];
    await new Promise((r) => setTimeout(r, 50)); // the listener starts after a turn of the loop
    out({ key: buf.key });
    ${STAY}
  `);
  pids.victim = (await nextLine(victim)).pid as number;
  const squatter = startChild(`${FAKE}
    for (const pid of [${pids.sleeper}, ${pids.victim}]) {
      listen('dmabuf-info.' + pid + '.0', (s) => s.end(snapshot(pid, 0, [row('FORGED-by-nobody', '9:' + pid)])));
    }
    // One that never accepts, with a queue of one: full after one connection.
    const stuck = native.socket(native.constants.SOCK_STREAM, true);
    native.bind(stuck, '\\0dmabuf-info.${pids.sleeper}.1');
    native.listen(stuck, 0);
    out({ pid: process.pid });
    ${STAY}
  `);
  pids.squatter = (await nextLine(squatter)).pid as number;
  victim.stdin!.write('go\n');
  victimKey = (await nextLine(victim, (v) => 'key' in v)).key as string;
  // Endpoints of its own pid that answer badly: without end, nonsense, another thread's
  // snapshot, two claims on the victim's buffer, and a name that would drive a terminal.
  const hostile = startChild(`${FAKE}
    const me = process.pid;
    const chunk = Buffer.alloc(1 << 16, 0x20);
    listen('dmabuf-info.' + me + '.0', (s) => { const more = () => { while (s.write(chunk)); }; s.on('drain', more); more(); });
    listen('dmabuf-info.' + me + '.1', (s) => s.end(snapshot(me, 1, [{ ...row('${TAG}-bad-size', '9:1'), size: '1 TiB' }])));
    listen('dmabuf-info.' + me + '.2', (s) => s.end('FORGED \\x1b[2J not json'));
    listen('dmabuf-info.' + me + '.3', (s) => s.end(snapshot(${pids.sleeper}, 3, [row('${TAG}-other-pid', '9:3')])));
    for (const n of [4, 5]) listen('dmabuf-info.' + me + '.' + n, (s) => s.end(snapshot(me, n, [row('${TAG}-rival', '${victimKey}')])));
    listen('dmabuf-info.' + me + '.6', (s) => s.end(snapshot(me, 6, [row('${TAG}-esc\\x1b[2J\\nFAKE-LINE', '9:6')])));
    out({ pid: me });
    ${STAY}
  `);
  pids.hostile = (await nextLine(hostile)).pid as number;
});

after(() => {
  reapChildren();
  sleeper?.kill();
});

function skippedOf(r: Report, name: string): SkippedEndpoint {
  const s = r.skipped.find((x) => x.name === name);
  assert.ok(s, `${name} is reported skipped: ${JSON.stringify(r.skipped)}`);
  return s;
}

function threadsOf(r: Report, pid: number): ThreadReport[] {
  return r.threads.filter((t) => t.pid === pid);
}

test('an endpoint whose name another process took is skipped: its made-up buffers are not listed as that process\'s', () => {
  const r = infoJson();
  assert.deepEqual(r.buffers.filter((b) => b.name.startsWith('FORGED')), [], 'no forged row');
  for (const pid of [pids.sleeper, pids.victim]) {
    const s = skippedOf(r, `dmabuf-info.${pid}.0`);
    assert.equal(s.pid, pid);
    assert.equal(s.peerPid, pids.squatter);
    assert.match(s.reason, new RegExp(`pid ${pids.squatter} \\(uid \\d+\\) listens on it, not pid ${pid}: another process took the name`));
    assert.ok(!r.threads.some((t) => t.address === `@dmabuf-info.${pid}.0`), 'a skipped endpoint is not listed as a thread');
  }
  assert.deepEqual(threadsOf(r, pids.sleeper), []);
  // The victim's own thread, on the next name, is believed and listed in the same run.
  const v = byName(r, `${TAG}-victim`);
  assert.equal(v.exporterPid, pids.victim);
  assert.equal(v.size, 65536);
  assert.deepEqual(v.holders, [pids.victim]);
  assert.deepEqual(threadsOf(r, pids.victim).map((t) => [t.address, t.status]), [[`@dmabuf-info.${pids.victim}.0.1`, 'answered']]);
  assert.equal(r.endpoints.skipped, r.skipped.length);

  const text = runInfo([]).stdout;
  assert.doesNotMatch(text, /FORGED/);
  assert.match(text, new RegExp(`^Skipped @dmabuf-info\\.${pids.sleeper}\\.0, which claims to be pid ${pids.sleeper}: pid ${pids.squatter} \\(uid \\d+\\) listens on it`, 'm'));
  assert.match(text, new RegExp(`^dmabuf +${TAG}-victim +system +${pids.victim} +64\\.0 KiB`, 'm'));

  // Scoped to the claimed pid, the skipped endpoint is still said.
  const scoped = infoJson(['--pid', String(pids.sleeper)]);
  assert.deepEqual(scoped.buffers, []);
  assert.deepEqual(scoped.skipped.map((s) => s.name).sort(), [`dmabuf-info.${pids.sleeper}.0`, `dmabuf-info.${pids.sleeper}.1`]);
});

test('a full connection queue under another process\'s name is skipped, not said busy for that process', () => {
  const name = `dmabuf-info.${pids.sleeper}.1`;
  const queued: number[] = [];
  try {
    for (;;) {
      try {
        queued.push(connect(name));
      } catch (err) {
        assert.equal((err as { code?: string }).code, 'EAGAIN');
        break;
      }
      assert.ok(queued.length < 100, 'the queue has a limit');
    }
    const r = infoJson(['--timeout', '300']);
    assert.equal(skippedOf(r, name).reason, `its connection queue is full, and pid ${pids.sleeper} does not hold its socket: another process took the name`);
    assert.deepEqual(threadsOf(r, pids.sleeper), []);
  } finally {
    for (const fd of queued) native.close(fd);
  }
});

test(`an endless answer is cut at ${DEFAULT_MAX_ANSWER >> 20} MiB and its endpoint skipped; the command's memory stays bounded`, () => {
  // Ten seconds to answer: without the cap the command would read on for all of them.
  const started = Date.now();
  const run = runInfo(['--json', '--timeout', '10000'], { measure: true });
  const elapsed = Date.now() - started;
  const r = JSON.parse(run.stdout) as Report;
  const s = skippedOf(r, `dmabuf-info.${pids.hostile}.0`);
  assert.equal(s.peerPid, pids.hostile);
  assert.match(s.reason, /its answer is longer than 16\.0 MiB \(16777216 bytes\): cut there/);
  assert.ok(elapsed < 9000, `the cap ends the read, not the timeout (${elapsed} ms)`);
  if (CAN_MEASURE) {
    assert.ok(run.maxRssKiB !== null && run.maxRssKiB > 0, `measured: ${run.maxRssKiB}`);
    // Node itself takes some 60 MiB; one capped answer adds about its size.
    assert.ok(run.maxRssKiB! < 200 * 1024, `max RSS ${run.maxRssKiB} KiB`);
  }
  byName(r, `${TAG}-victim`);
});

test('malformed answers are skipped with the reason, not a crash; names reach the terminal escaped', () => {
  const r = infoJson();
  const reason = (n: number): string => skippedOf(r, `dmabuf-info.${pids.hostile}.${n}`).reason;
  assert.equal(reason(1), 'a malformed snapshot: exported[0].size is not a non-negative integer');
  assert.match(reason(2), /^a malformed answer: not JSON \(\d+ bytes\)$/);
  assert.equal(reason(3), `the snapshot is of pid ${pids.sleeper} thread 3, not of pid ${pids.hostile} thread 3 as the endpoint's name says`);
  assert.equal(r.buffers.filter((b) => b.name.startsWith(`${TAG}-bad`) || b.name.startsWith(`${TAG}-other`)).length, 0);
  const text = runInfo([]).stdout;
  assert.doesNotMatch(text, /\x1b/, 'no escape sequence reaches the terminal');
  assert.doesNotMatch(text, /^FAKE-LINE/m, 'a name cannot start a line of its own');
  assert.match(text, new RegExp(`^dmabuf +${TAG}-esc\\\\x1b\\[2J\\\\x0aFAKE-LINE +system +${pids.hostile} `, 'm'));
  assert.match(text, new RegExp(`^Skipped @dmabuf-info\\.${pids.hostile}\\.2, which claims to be pid ${pids.hostile}: a malformed answer: not JSON`, 'm'));
});

test('a thread that says it exports another process\'s buffer does not replace that exporter\'s row', () => {
  const r = infoJson();
  // The rivals are believed as threads of their own process (its own pid and user)...
  assert.deepEqual(threadsOf(r, pids.hostile).filter((t) => t.threadId !== 6).map((t) => [t.threadId, t.status]).sort(), [[4, 'answered'], [5, 'answered']]);
  // ...but the file is the victim's, who holds it: the victim's row stays.
  const rows = r.buffers.filter((b) => b.key === victimKey);
  assert.deepEqual(rows.map((b) => [b.name, b.exporterPid]), [[`${TAG}-victim`, pids.victim]]);
});

test('an endpoint whose listener\'s user may not speak for its process is skipped', { skip: process.geteuid?.() !== 0 ? 'needs root to listen as another user' : false }, async () => {
  // Root listens with effective uid nobody, then takes root back: SO_PEERCRED says nobody,
  // the process is root's.
  const u = startChild(`${FAKE}
    // (listen() sets SO_PEERCRED, and the server listens again on the descriptor it is given.)
    process.seteuid(${NOBODY});
    listen('dmabuf-info.' + process.pid + '.0', (s) => s.end(snapshot(process.pid, 0, [row('FORGED-uid', '9:7')])));
    process.seteuid(0);
    out({ pid: process.pid });
    ${STAY}
  `);
  const pid = (await nextLine(u)).pid as number;
  try {
    const r = infoJson();
    const s = skippedOf(r, `dmabuf-info.${pid}.0`);
    assert.deepEqual([s.peerPid, s.peerUid], [pid, NOBODY]);
    assert.equal(s.reason, `uid ${NOBODY} listens on it, and may not speak for pid ${pid} (real uid 0, effective uid 0)`);
    assert.deepEqual(r.buffers.filter((b) => b.name === 'FORGED-uid'), []);
  } finally {
    u.kill('SIGKILL');
  }
});

/** Connects to an abstract name without reading; returns the descriptor. */
function connect(name: string): number {
  const fd = native.socket(native.constants.SOCK_STREAM, true);
  try {
    native.connect(fd, `\0${name}`);
  } catch (err) {
    native.close(fd);
    throw err;
  }
  return fd;
}

/** Reads a connection to its end (or `ms`). */
async function readAll(fd: number, ms = 2000): Promise<string> {
  const chunks: Buffer[] = [];
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const r = native.recvmsg(fd, 1 << 16, 0, native.constants.MSG_DONTWAIT, true);
    if (r === null) { await sleep(5); continue; }
    if (r.data.length === 0) break;
    chunks.push(r.data);
  }
  return Buffer.concat(chunks).toString('utf8');
}

test('a thread whose answer slots are all taken by clients that never read is reported busy, not refused', async () => {
  // A snapshot far larger than a socket's send buffer: an answer to a client that does not read
  // keeps its slot until the thread gives up on it (5 s).
  const b = startChild(`
    const buf = m.systemHeap.allocate(4096, { name: '${TAG}-busy' });
    const atts = [];
    for (let i = 0; i < 3000; i++) atts.push(await buf.attach(new m.CpuDevice({ name: 'd'.repeat(200) + i })));
    globalThis.keep = [buf, atts];
    await new Promise((r) => setTimeout(r, 50));
    out({ pid: process.pid, bytes: JSON.stringify(m.introspect()).length });
    ${STAY}
  `);
  const { pid, bytes } = await nextLine(b) as { pid: number; bytes: number };
  assert.ok(bytes > 512 * 1024, `snapshot of ${bytes} bytes`);
  const name = `dmabuf-info.${pid}.0`;
  // Long enough that a loaded machine does not stall the thread past it (it would read as
  // timed out: 1500 ms was once too short in a full run), short enough to end before the
  // thread drops the clients that hold its slots (INTROSPECTION_SEND_TIMEOUT after the first
  // of them connected; taking the 16 slots takes about a second).
  const BUSY_TIMEOUT = '2500';
  const hogs: number[] = [];
  const takeSlots = async (): Promise<void> => {
    // A client that got a slot gets the start of the snapshot; one that came while earlier
    // clients' slots were still being freed gets the busy notice: try again.
    const end = Date.now() + 10_000;
    while (hogs.length < MAX_INTROSPECTION_CLIENTS) {
      assert.ok(Date.now() < end, `only ${hogs.length} slots taken`);
      const fd = connect(name);
      if ((await readSome(fd, 3)) === '{"v') hogs.push(fd);
      else { native.close(fd); await sleep(20); }
    }
    // Once all are taken, one more connection gets the busy notice.
    const probe = connect(name);
    try {
      assert.equal(await readAll(probe), INTROSPECTION_BUSY);
    } finally {
      native.close(probe);
    }
  };
  const freeSlots = (): void => { for (const fd of hogs.splice(0)) native.close(fd); };
  /** The first `n` bytes of a connection (fewer at its end), without reading further. */
  const readSome = async (fd: number, n: number): Promise<string> => {
    let got = '';
    const end = Date.now() + 2000;
    while (got.length < n && Date.now() < end) {
      const r = native.recvmsg(fd, n - got.length, 0, native.constants.MSG_DONTWAIT, true);
      if (r === null) { await sleep(2); continue; }
      if (r.data.length === 0) break;
      got += r.data.toString('latin1');
    }
    return got;
  };
  try {
    await takeSlots();
    const r = infoJson(['--timeout', BUSY_TIMEOUT]);
    const ts = threadsOf(r, pid);
    assert.deepEqual(ts.map((t) => [t.status, t.error]), [['busy', `every answer slot is taken (${MAX_INTROSPECTION_CLIENTS} other clients are being answered)`]]);
    assert.equal(r.endpoints.busy, r.threads.filter((t) => t.status === 'busy').length);
    assert.ok(r.endpoints.busy >= 1);
    assert.ok(!r.buffers.some((x) => x.name === `${TAG}-busy` && x.exporterThread !== null), 'not described by its thread');
    assert.equal(byName(r, `${TAG}-victim`).exporterPid, pids.victim, 'the other threads still answer');
    freeSlots();

    await takeSlots();
    const text = runInfo(['--timeout', BUSY_TIMEOUT]).stdout;
    assert.match(text, new RegExp(`^pid ${pid} thread 0 is busy: every answer slot is taken`, 'm'));
    assert.doesNotMatch(text, /refused to answer/);
    freeSlots();

    // Free again, it answers.
    const free = infoJson();
    assert.deepEqual(threadsOf(free, pid).map((t) => t.status), ['answered']);
    assert.equal(byName(free, `${TAG}-busy`).attachments.length, 3000);
  } finally {
    freeSlots();
    b.kill('SIGKILL');
  }
});

test('a thread that does not accept: timed out while its queue has room, busy once its queue is full', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'dmabuf-info-fifo-'));
  const fifo = path.join(dir, 'release');
  assert.equal(spawnSync('mkfifo', [fifo]).status, 0, 'mkfifo');
  // Its event loop blocks on the FIFO until the test writes to it.
  const k = startChild(`
    import { readFileSync } from 'node:fs';
    const buf = m.systemHeap.allocate(4096, { name: '${TAG}-blocked' });
    globalThis.keep = [buf];
    await new Promise((r) => setTimeout(r, 50));
    out({ pid: process.pid });
    process.stdin.once('data', () => { out({ blocking: true }); readFileSync(${JSON.stringify(fifo)}); out({ resumed: true }); });
    ${STAY}
  `);
  const hogs: number[] = [];
  let released = false;
  const release = (): void => {
    if (released) return;
    released = true;
    // Without blocking: ENXIO when nobody reads the FIFO (the child never blocked, or is gone).
    try {
      const fd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
      closeSync(fd);
    } catch (err) {
      if ((err as { code?: string }).code !== 'ENXIO') throw err;
    }
  };
  try {
    const { pid } = await nextLine(k) as { pid: number };
    k.stdin!.write('block\n');
    await nextLine(k, (v) => 'blocking' in v);

    const r = infoJson(['--timeout', '500']);
    assert.deepEqual(threadsOf(r, pid).map((t) => [t.status, t.error]), [['timeout', 'no answer within 500 ms (is its event loop blocked?)']]);
    assert.equal(byName(r, `${TAG}-victim`).exporterPid, pids.victim);

    // Fill its connection queue (a backlog of 64) until the kernel refuses with EAGAIN.
    for (;;) {
      try {
        hogs.push(connect(`dmabuf-info.${pid}.0`));
      } catch (err) {
        assert.equal((err as { code?: string }).code, 'EAGAIN');
        break;
      }
      assert.ok(hogs.length < 1000, 'the queue has a limit');
    }
    const full = infoJson(['--timeout', '500']);
    assert.deepEqual(threadsOf(full, pid).map((t) => [t.status, t.error]),
      [['busy', 'its connection queue is full: it is not accepting connections (flooded, or its event loop is blocked)']]);
    const text = runInfo(['--timeout', '500']).stdout;
    assert.match(text, new RegExp(`^pid ${pid} thread 0 is busy: its connection queue is full`, 'm'));
    release();
    await nextLine(k, (v) => 'resumed' in v);
  } finally {
    release();
    for (const fd of hogs) native.close(fd);
    k.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
