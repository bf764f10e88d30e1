/**
 * libuv poll watchers: readiness, disconnect, update/ref/close, exceptions, teardown.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { thrown } from './util.js';
import { native, type PollHandle } from '../../src/native/binding.js';

const K = native.constants;
const BINDING_URL = new URL('../../src/native/binding.js', import.meta.url).href;


/** Runs an ES module in a child node; returns its status, stdout and stderr. */
function runChild(body: string): { status: number | null; stdout: string; stderr: string } {
  const code = `const { native } = await import(${JSON.stringify(BINDING_URL)});\n${body}`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A watcher whose events are delivered through a queue; ref'd while waiting. */
class Watch {
  readonly handle: PollHandle;
  private readonly queue: Array<[number, number]> = [];
  private waiter: (() => void) | undefined;

  constructor(fd: number, events: number) {
    this.handle = native.pollStart(fd, events, (status, ev) => {
      this.queue.push([status, ev]);
      this.waiter?.();
    });
  }

  /** The next [status, events], keeping the loop alive meanwhile. */
  async next(timeoutMs = 5000): Promise<[number, number]> {
    native.pollRef(this.handle, true);
    try {
      while (this.queue.length === 0) {
        await new Promise<void>((resolve, reject) => {
          const t = setTimeout(() => reject(new Error('poll timed out')), timeoutMs);
          this.waiter = () => {
            clearTimeout(t);
            resolve();
          };
        });
      }
      return this.queue.shift()!;
    } finally {
      this.waiter = undefined;
      native.pollRef(this.handle, false);
    }
  }

  /** Whether nothing arrives within ms. */
  async quiet(ms: number): Promise<boolean> {
    await new Promise((r) => setTimeout(r, ms));
    return this.queue.length === 0;
  }

  close(): void {
    native.pollClose(this.handle);
  }
}

test('readable when data arrives; disconnect/readable when the peer closes', async () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
  let aOpen = true;
  const w = new Watch(b, K.UV_READABLE | K.UV_DISCONNECT);
  try {
    assert.ok(await w.quiet(50));
    native.sendmsg(a, Buffer.from('hello'), [], 0);
    const [status, events] = await w.next();
    assert.equal(status, 0);
    assert.equal(events & K.UV_READABLE, K.UV_READABLE);
    assert.equal(native.recvmsg(b, 16, 0, 0).data.toString(), 'hello');

    native.close(a);
    aOpen = false;
    const [s2, e2] = await w.next();
    assert.equal(s2, 0);
    assert.ok((e2 & (K.UV_DISCONNECT | K.UV_READABLE)) !== 0, `events ${e2}`);
    assert.equal(native.recvmsg(b, 16, 0, 0).data.length, 0); // EOF
  } finally {
    w.close();
    w.close(); // idempotent
    if (aOpen) native.close(a);
    native.close(b);
  }
});

test('writable fires at once on an empty socket; pollUpdate(0) stops, then restarts', async () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
  const w = new Watch(a, K.UV_WRITABLE);
  try {
    const [status, events] = await w.next();
    assert.equal(status, 0);
    assert.equal(events & K.UV_WRITABLE, K.UV_WRITABLE);
    native.pollUpdate(w.handle, 0);
    await new Promise((r) => setTimeout(r, 20));
    // drain whatever was queued before the stop
    while (!(await w.quiet(30))) {
      await w.next();
    }
    assert.ok(await w.quiet(50));
    native.pollUpdate(w.handle, K.UV_READABLE);
    native.sendmsg(b, Buffer.from('x'), [], 0);
    const [, ev] = await w.next();
    assert.equal(ev & K.UV_READABLE, K.UV_READABLE);
  } finally {
    w.close();
    native.close(a);
    native.close(b);
  }
});

test('after pollClose the handle is EBADF for update/ref; close stays idempotent', () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
  try {
    const h = native.pollStart(a, K.UV_READABLE, () => assert.fail('no event expected'));
    native.pollClose(h);
    const e = thrown(() => native.pollUpdate(h, K.UV_READABLE));
    assert.equal(e.code, 'EBADF');
    assert.equal(e.syscall, undefined);
    assert.equal(thrown(() => native.pollRef(h, true)).code, 'EBADF');
    native.pollClose(h);
    // A mapping handle is not a poll handle, and vice versa.
    const mfd = native.memfdCreate('x', 0);
    try {
      native.ftruncate(mfd, K.PAGE_SIZE);
      const m = native.mmap(mfd, K.PAGE_SIZE, 0, K.PROT_READ, K.MAP_SHARED);
      assert.equal(thrown(() => native.pollClose(m as unknown as PollHandle)).code, 'EINVAL');
      native.munmap(m);
    } finally {
      native.close(mfd);
    }
  } finally {
    native.close(a);
    native.close(b);
  }
});

test('pollStart errors: bad fd, a regular file, a second watcher on the same fd', () => {
  const e = thrown(() => native.pollStart(-1, K.UV_READABLE, () => {}));
  assert.equal(e.syscall, 'uv_poll_init');
  assert.equal(e.code, 'EBADF');
  const mfd = native.memfdCreate('poll-file', 0);
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
  try {
    assert.equal(thrown(() => native.pollStart(mfd, K.UV_READABLE, () => {})).code, 'EPERM');
    const h = native.pollStart(a, K.UV_READABLE, () => {});
    try {
      assert.equal(thrown(() => native.pollStart(a, K.UV_READABLE, () => {})).code, 'EEXIST');
    } finally {
      native.pollClose(h);
    }
  } finally {
    native.close(mfd);
    native.close(a);
    native.close(b);
  }
});

test('pollClose from inside the callback', async () => {
  const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
  try {
    let calls = 0;
    await new Promise<void>((resolve) => {
      const h: PollHandle = native.pollStart(b, K.UV_READABLE, () => {
        calls++;
        native.pollClose(h);
        native.pollClose(h);
        resolve();
      });
      native.pollRef(h, true);
      native.sendmsg(a, Buffer.from('x'), [], 0);
    });
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(calls, 1);
  } finally {
    native.close(a);
    native.close(b);
  }
});

test('an exception thrown by the callback is an uncaught exception', () => {
  const r = runChild(`
    const K = native.constants;
    const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
    let h;
    process.on('uncaughtException', (err) => {
      console.log('uncaught:' + err.message);
      native.pollClose(h);
      native.close(a);
      native.close(b);
    });
    h = native.pollStart(b, K.UV_READABLE, () => { throw new Error('boom'); });
    native.pollRef(h, true);
    native.sendmsg(a, Buffer.from('x'), [], 0);
  `);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /uncaught:boom/);

  const r2 = runChild(`
    const K = native.constants;
    const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
    const h = native.pollStart(b, K.UV_READABLE, () => { throw new Error('unhandled-boom'); });
    native.pollRef(h, true);
    native.sendmsg(a, Buffer.from('x'), [], 0);
  `);
  assert.notEqual(r2.status, 0);
  assert.match(r2.stderr, /unhandled-boom/);
});

test('callbacks run in an async context: promises and nextTicks settle after them', () => {
  const r = runChild(`
    const K = native.constants;
    const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
    const order = [];
    const h = native.pollStart(b, K.UV_READABLE, () => {
      order.push('cb');
      process.nextTick(() => order.push('tick'));
      Promise.resolve().then(() => order.push('micro'));
      native.pollClose(h);
      setImmediate(() => {
        console.log(order.join(','));
        native.close(a);
        native.close(b);
      });
    });
    native.pollRef(h, true);
    native.sendmsg(a, Buffer.from('x'), [], 0);
  `);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'cb,tick,micro');
});

test('a process exits normally with open, unref\'d watchers and a GC\'d handle', () => {
  const r = runChild(`
    const K = native.constants;
    const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
    native.pollStart(a, K.UV_READABLE | K.UV_WRITABLE, () => {});
    native.pollStart(b, K.UV_READABLE, () => {});
    setTimeout(() => console.log('done'), 20);
  `);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'done');
});

test('an unref\'d watcher does not keep the loop alive; a ref\'d one does until closed', () => {
  const r = runChild(`
    const K = native.constants;
    const [a, b] = native.socketpair(K.SOCK_SEQPACKET, true);
    const h = native.pollStart(b, K.UV_READABLE, (status, events) => {
      console.log('event ' + status + ' ' + (events & K.UV_READABLE));
      native.pollClose(h);
      native.close(a);
      native.close(b);
    });
    native.pollRef(h, true);
    setTimeout(() => native.sendmsg(a, Buffer.from('x'), [], 0), 50);
  `);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'event 0 1');
});
