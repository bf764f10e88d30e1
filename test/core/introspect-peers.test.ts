/**
 * Issue 8, item 5: the `dmabuf info` endpoint answers only its own user (or root) in its own
 * user namespace, never the overflow uid that stands for unmapped users. Real user namespaces
 * (`unshare -U`, `unshare -Ur`, `nsenter -U`) where this machine can make them; the decision
 * itself (`mayAnswerPeer`) is also checked against credentials that no process here can have.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { systemHeap } from '../../src/index.js';
import { introspectionAddress, mayAnswerPeer } from '../../src/remote/introspect.js';
import { overflowUid, peerIdentity, sameUserNamespace, userNamespaceOf } from '../../src/transport/credentials.js';
import { native } from '../../src/native/binding.js';
import { BINDING_URL, INDEX_URL, finish, nextLine, openFdCount, reapChildren } from '../helpers.js';

after(reapChildren);
const children: ChildProcess[] = [];
after(() => { for (const c of children) c.kill('SIGKILL'); });

const UNSHARE = ['/usr/bin/unshare', '/bin/unshare'].find((p) => existsSync(p));
const NSENTER = ['/usr/bin/nsenter', '/bin/nsenter'].find((p) => existsSync(p));

/** Why user namespaces cannot be used here, or '' when `unshare -U` works. */
function userNamespacesUnavailable(): string {
  if (!UNSHARE) return 'util-linux unshare is not installed';
  const r = spawnSync(UNSHARE, ['-U', 'true'], { encoding: 'utf8' });
  if (r.status !== 0) return `unshare -U fails here: ${(r.stderr || r.error?.message || '').trim()}`;
  return '';
}
const noUserNs = userNamespacesUnavailable();

/** Node on an inline module, optionally under a command prefix (unshare, nsenter). */
function node(body: string, prefix: string[] = []): ChildProcess {
  const script = `import * as m from ${JSON.stringify(INDEX_URL)};\nimport { native } from ${JSON.stringify(BINDING_URL)};\nconst out = (v) => console.log(JSON.stringify(v));\n${body}`;
  const args = ['--no-warnings', '--input-type=module', '-e', script];
  const child = prefix.length > 0 ? spawn(prefix[0]!, [...prefix.slice(1), process.execPath, ...args], { stdio: ['pipe', 'pipe', 'pipe'] }) : spawn(process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  children.push(child);
  return child;
}

/** A client of the info endpoint `name`: how many bytes it was answered. */
const CLIENT = (name: string): string => `
  const fd = native.socket(native.constants.SOCK_STREAM, false);
  let n = 0;
  try {
    native.connect(fd, '\\0' + ${JSON.stringify(name)});
    for (;;) { const r = native.recvmsg(fd, 65536, 0, 0); if (r.data.length === 0) break; n += r.data.length; }
    out({ bytes: n, uid: process.getuid() });
  } catch (e) { out({ error: e.code, bytes: n }); }`;

async function ask(name: string, prefix: string[] = []): Promise<{ bytes?: number; uid?: number; error?: string }> {
  const r = await finish(node(CLIENT(name), prefix));
  assert.equal(r.code, 0, r.stderr);
  return r.json[0] as { bytes?: number };
}

/** An exporter with one buffer, listening for `dmabuf info`, under `prefix`: its pid and name. */
async function exporter(prefix: string[]): Promise<{ child: ChildProcess; pid: number; name: string; uid: number }> {
  const child = node(`
    const { introspectionAddress } = await import(${JSON.stringify(INDEX_URL.replace(/index\.js$/, 'remote/introspect.js'))});
    globalThis.keep = m.systemHeap.allocate(4096, { name: 'in-a-namespace' });
    while (!introspectionAddress()) await new Promise((r) => setTimeout(r, 5));
    out({ pid: process.pid, name: introspectionAddress(), uid: process.getuid() });
    process.stdin.on('data', () => process.exit(0));
    setInterval(() => {}, 1 << 30);`, prefix);
  const line = await nextLine(child) as { pid: number; name: string; uid: number };
  return { child, ...line };
}

async function listening(): Promise<{ name: string; done: () => void }> {
  const buf = systemHeap.allocate(4096, { name: 'endpoint' });
  while (!introspectionAddress()) await sleep(2);
  return { name: introspectionAddress()!, done: () => buf.put() };
}

test('info endpoint: mayAnswerPeer refuses the overflow uid where it is ambiguous, other namespaces and invisible pids; answers its own user and root', () => {
  const me = { uid: 1000, overflowUid: 65534 };
  const cred = (uid: number, pid = 4242): { pid: number; uid: number; gid: number } => ({ pid, uid, gid: uid });
  assert.equal(mayAnswerPeer(cred(1000), true, me), true, 'the same user');
  assert.equal(mayAnswerPeer(cred(0), true, me), true, 'root');
  assert.equal(mayAnswerPeer(cred(1001), true, me), false, 'another user');
  assert.equal(mayAnswerPeer(cred(1000), false, me), false, 'the same uid in another user namespace');
  assert.equal(mayAnswerPeer(cred(0), false, me), false, 'root of another user namespace');
  assert.equal(mayAnswerPeer(cred(1000), null, me), false, 'a namespace that cannot be told');
  assert.equal(mayAnswerPeer(cred(1000, 0), true, me), false, 'a pid outside this pid namespace');
  // An exporter running as the overflow uid itself (an unmapped `unshare -U`): equal uids prove nothing.
  const unmapped = { uid: 65534, overflowUid: 65534 };
  assert.equal(mayAnswerPeer(cred(65534), true, unmapped), false, 'the overflow uid, even when it is the exporter\'s own');
  // In a namespace that maps every uid, 65534 is the real user nobody.
  assert.equal(mayAnswerPeer(cred(65534), true, { uid: 65534, overflowUid: null }), true, 'nobody, where every uid is mapped');
});

test('info endpoint: the identity helpers: own namespace, a child\'s, the overflow uid', async (t) => {
  assert.equal(typeof overflowUid(), 'number');
  assert.equal(userNamespaceOf('self'), userNamespaceOf(process.pid));
  assert.equal(sameUserNamespace(process.pid), true);
  assert.throws(() => userNamespaceOf(0), /not a process id/);
  if (noUserNs) {
    t.skip(noUserNs);
    return;
  }
  const child = node('out({ pid: process.pid }); process.stdin.on("data", () => process.exit(0));', [UNSHARE!, '-U']);
  const { pid } = await nextLine(child) as { pid: number };
  assert.notEqual(userNamespaceOf(pid), userNamespaceOf('self'));
  assert.equal(sameUserNamespace(pid), false);
  child.stdin!.write('x');
  await finish(child);
});

test('info endpoint: peerIdentity of a connection holds the peer\'s credentials and namespace (SO_PEERCRED, SO_PEERPIDFD)', () => {
  const c = native.constants;
  const [a, b] = native.socketpair(c.SOCK_STREAM, false);
  try {
    const id = peerIdentity(a);
    assert.deepEqual(id, { cred: { pid: process.pid, uid: process.getuid!(), gid: process.getgid!() }, sameUserNs: true });
  } finally {
    native.close(a);
    native.close(b);
  }
});

test('info endpoint: a client in the same namespace is answered (control)', async () => {
  const fds = openFdCount();
  const { name, done } = await listening();
  const r = await ask(name);
  assert.ok((r.bytes ?? 0) > 0, JSON.stringify(r));
  done();
  await sleep(20);
  assert.equal(openFdCount(), fds);
});

test('info endpoint: a client in another user namespace (unshare -U, unshare -Ur) is refused, even as a uid the old check answered', async (t) => {
  if (noUserNs) {
    t.skip(noUserNs);
    return;
  }
  const fds = openFdCount();
  const { name, done } = await listening();
  // unshare -U: the client's uid has no mapping inside, but this exporter sees its real uid.
  const unmapped = await ask(name, [UNSHARE!, '-U']);
  assert.equal(unmapped.uid, overflowUid(), 'inside, the client runs as the overflow uid');
  assert.equal(unmapped.bytes, 0, 'refused');
  const mapped = await ask(name, [UNSHARE!, '-Ur']);
  assert.equal(mapped.uid, 0, 'inside, the client is root');
  assert.equal(mapped.bytes, 0, 'refused');
  // The control again: the endpoint still answers its own.
  assert.ok(((await ask(name)).bytes ?? 0) > 0);
  done();
  await sleep(20);
  assert.equal(openFdCount(), fds);
});

test('info endpoint: an exporter in an unmapped user namespace (unshare -U) runs as the overflow uid and answers nobody outside', async (t) => {
  if (noUserNs) {
    t.skip(noUserNs);
    return;
  }
  const e = await exporter([UNSHARE!, '-U']);
  assert.equal(e.uid, overflowUid(), 'the exporter runs as the overflow uid');
  const r = await ask(e.name);
  assert.equal(r.bytes, 0, 'this process (root, outside) reads as the overflow uid there: refused');
  e.child.stdin!.write('x');
  await finish(e.child);
});

test('info endpoint: an exporter in a root-mapped user namespace (unshare -Ur) refuses root outside, and answers root inside (nsenter -U)', async (t) => {
  if (noUserNs) {
    t.skip(noUserNs);
    return;
  }
  const e = await exporter([UNSHARE!, '-Ur']);
  assert.equal(e.uid, 0);
  assert.equal((await ask(e.name)).bytes, 0, 'root of the parent namespace reads as uid 0 there, but lives elsewhere: refused');
  if (!NSENTER) {
    t.diagnostic('nsenter is not installed: the answer inside the namespace is not checked');
  } else {
    const inside = await ask(e.name, [NSENTER, '-U', '-t', String(e.pid)]);
    assert.ok((inside.bytes ?? 0) > 0, `a client in the exporter's namespace is answered: ${JSON.stringify(inside)}`);
  }
  e.child.stdin!.write('x');
  await finish(e.child);
});
