/**
 * Helpers of the synchronisation tests: a child process that creates, signals, imports,
 * merges and watches fences on command (an "agent"), fence files passed over a
 * BufferChannel (SCM_RIGHTS), and descriptor counts.
 */
import assert from 'node:assert/strict';
import { closeSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { BufferChannel, DmaFence } from '../../src/index.js';
import { afterEach, beforeEach } from 'node:test';
import { openFdCount, startChild, waitFor } from '../helpers.js';

/**
 * The agent's program: one JSON command a line on stdin, one JSON line a reply or event on
 * stdout. `extra` is more code run before the first command, which may add to `handlers`.
 */
const agentScript = (extra: string): string => `
import readline from 'node:readline';
import { readdirSync } from 'node:fs';
const { DmaFence, DmaFenceTimeline, DmaBufError, BufferChannel } = m;
const channel = BufferChannel.fromFd(3);
const fences = new Map();
const timelines = new Map();
const fence = (id) => { const f = fences.get(id); if (!f) throw new Error('no fence ' + id); return f; };
const outcome = (f) => ({ signaled: f.signaled, code: f.error?.code ?? null });
const handlers = {
  create: ({ id }) => { fences.set(id, new DmaFence({ name: id })); },
  timeline: ({ id }) => { timelines.set(id, new DmaFenceTimeline(id)); },
  at: ({ id, timeline, seqno }) => { fences.set(id, timelines.get(timeline).create(seqno, { name: id })); },
  signal: ({ id, code }) => ({ first: fence(id).signal(code ? new DmaBufError(code, 'signalled by the test') : undefined) }),
  send: async ({ id }) => {
    const fd = fence(id).toFd();
    try { await channel.sendFd(fd, { id }); } finally { native.close(fd); }
  },
  receive: async () => {
    const { fd, meta } = await channel.receiveFd();
    try { fences.set(meta.id, await DmaFence.fromFd(fd, { name: meta.id })); } finally { native.close(fd); }
    return { id: meta.id };
  },
  merge: ({ id, of }) => { fences.set(id, DmaFence.merge(of.map(fence), { name: id })); },
  watch: ({ id }) => {
    const f = fence(id);
    f.wait().then(() => out({
      event: 'signaled', id, code: f.error?.code ?? null, at: String(process.hrtime.bigint()),
      // What every other fence of this process says at that moment.
      others: Object.fromEntries([...fences].map(([k, g]) => [k, g.signaled])),
    }));
  },
  state: ({ id }) => outcome(fence(id)),
  fds: () => ({ fds: readdirSync('/proc/self/fd').length }),
  exit: () => { channel.close(); process.exit(0); },
};
${extra}
readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const cmd = JSON.parse(line);
  try {
    const r = await handlers[cmd.op](cmd);
    out({ reply: cmd.seq, ok: true, ...(r ?? {}) });
  } catch (e) {
    out({ reply: cmd.seq, ok: false, code: e.code ?? null, message: e.message });
  }
});
out({ ready: true });
`;

type Line = Record<string, unknown>;

/** A child process that holds fences and acts on command. */
export class Agent {
  readonly child: ChildProcess;
  readonly channel: BufferChannel;
  #lines: Line[] = [];
  /** Callers of next() waiting for a new line. */
  #waiting = new Set<() => void>();
  #seq = 0;
  #partial = '';
  #stderr = '';

  private constructor(child: ChildProcess, channel: BufferChannel) {
    this.child = child;
    this.channel = channel;
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      this.#partial += d;
      let i;
      while ((i = this.#partial.indexOf('\n')) >= 0) {
        const text = this.#partial.slice(0, i);
        this.#partial = this.#partial.slice(i + 1);
        try {
          this.#lines.push(JSON.parse(text) as Line);
        } catch {
          // not a line of ours
        }
      }
      this.#wakeAll();
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => { this.#stderr += d; });
    // A write to an agent that has just died fails with EPIPE; its exit says more.
    child.stdin!.on('error', () => {});
    child.once('exit', () => this.#wakeAll());
  }

  /** Starts an agent (with `extra` code that may add handlers) and waits until it is ready. */
  static async start(extra = ''): Promise<Agent> {
    const [channel, theirs] = BufferChannel.pair();
    const child = startChild(agentScript(extra), [theirs]);
    closeSync(theirs);
    const agent = new Agent(child, channel);
    await agent.next((l) => l.ready === true);
    return agent;
  }

  #wakeAll(): void {
    const waiting = [...this.#waiting];
    this.#waiting.clear();
    for (const wake of waiting) wake();
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** The first line (reply or event) that satisfies `pred`, taken out of the queue. */
  async next(pred: (l: Line) => boolean): Promise<Line> {
    for (;;) {
      const i = this.#lines.findIndex(pred);
      if (i >= 0) return this.#lines.splice(i, 1)[0]!;
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`agent ${this.pid} ended (${this.child.exitCode ?? this.child.signalCode}) without the expected line; stderr: ${this.#stderr}`);
      }
      await new Promise<void>((resolve) => { this.#waiting.add(resolve); });
    }
  }

  /** Runs one command; throws when the agent answers with an error. */
  async call(op: string, args: Line = {}): Promise<Line> {
    const line = await this.try(op, args);
    assert.equal(line.ok, true, `agent ${op}: ${String(line.code)} ${String(line.message)}`);
    return line;
  }

  /** Runs one command and returns its reply, failed or not. */
  async try(op: string, args: Line = {}): Promise<Line> {
    const seq = ++this.#seq;
    this.child.stdin!.write(`${JSON.stringify({ ...args, op, seq })}\n`);
    return this.next((l) => l.reply === seq);
  }

  /** Gives the agent a fence of this process, as fence `id` there. */
  async give(fence: DmaFence, id: string): Promise<void> {
    const fd = fence.toFd();
    try {
      await this.channel.sendFd(fd, { id });
    } finally {
      closeSync(fd);
    }
    await this.call('receive');
  }

  /** Imports the agent's fence `id` here. */
  async take(id: string): Promise<DmaFence> {
    const [, received] = await Promise.all([this.call('send', { id }), this.channel.receiveFd()]);
    try {
      return await DmaFence.fromFd(received.fd, { name: id });
    } finally {
      closeSync(received.fd);
    }
  }

  /** The event line of fence `id` signalling (after `watch`). */
  signaled(id: string): Promise<Line> {
    return this.next((l) => l.event === 'signaled' && l.id === id);
  }

  /** Asks the agent to exit (unless it was killed) and waits for it; closes the channel. */
  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      if (!this.child.killed) this.child.stdin!.write(`${JSON.stringify({ op: 'exit', seq: 0 })}\n`);
      await exited;
    }
    this.channel.close();
  }
}

/** Runs `fn` and checks that this process has as many descriptors afterwards as before. */
export async function fdNeutral<T>(fn: () => Promise<T>): Promise<T> {
  const before = openFdCount();
  const result = await fn();
  // Descriptors of ended children's pipes close on the loop's next turns.
  for (let i = 0; i < 50 && openFdCount() !== before; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(openFdCount(), before, 'descriptors back to their count before the test');
  return result;
}

/**
 * Checks, after each test of the file, that this process has as many descriptors as before
 * the test (signalled fences close theirs about a millisecond later: it waits for that).
 */
export function checkDescriptorsAfterEach(): void {
  let before = 0;
  beforeEach(() => { before = openFdCount(); });
  afterEach(async () => {
    try {
      await waitFor(() => openFdCount() === before, 2000, 'descriptors to come back to their count');
    } catch {
      assert.equal(openFdCount(), before, 'descriptors back to their count before the test');
    }
  });
}
