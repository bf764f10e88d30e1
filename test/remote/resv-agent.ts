/**
 * Helpers of the tests of buffers' reservation objects across processes: agents (the fence
 * agents of test/sync/agent.ts) that also hold buffers, add fences to their reservation
 * objects, query and wait on them, bracket CPU access and move sync files; and fence keys,
 * which name a fence in every process (the inode of its fence file's pipe).
 */
import { native } from '../../src/native/binding.js';
import type { DmaFence } from '../../src/index.js';
import { Agent } from '../sync/agent.js';

/** The agent's handlers for buffers (added to the fence agent's). */
const BUFFER_HANDLERS = `
const bufs = new Map();
const views = new Map();
const buf = (id) => { const b = bufs.get(id); if (!b) throw new Error('no buffer ' + id); return b; };
const keyOf = (f) => { const fd = f.toFd(); try { return String(native.fstat(fd).ino); } finally { native.close(fd); } };
const settle = (event, tag, p) => p.then((result) => out({ event, tag, result: result ?? null }), (e) => out({ event, tag, code: e.code ?? String(e) }));
Object.assign(handlers, {
  receiveBuffer: async ({ id }) => {
    const { buffer, attachment, sgt } = await channel.receive({ map: { device: new m.CpuDevice({ name: 'agent' }), direction: 'bidirectional' } });
    bufs.set(id, buffer);
    views.set(id, { attachment, view: sgt.views()[0] });
    return { size: buffer.size };
  },
  getBuffer: async ({ id }) => {
    // Through the buffer's file (a HELLO): the exporter's channel then knows this process.
    const { fd } = await channel.receiveFd();
    try { bufs.set(id, await m.DmaBuf.get(fd)); } finally { native.close(fd); }
  },
  add: async ({ buf: b, id, usage }) => { await buf(b).resv.add(fence(id), usage); },
  fences: async ({ buf: b, usage }) => ({ keys: (await buf(b).resv.fences(usage)).map(keyOf) }),
  key: ({ id }) => ({ key: keyOf(fence(id)) }),
  test: async ({ buf: b, usage }) => ({ result: await buf(b).resv.test(usage) }),
  waitResv: ({ buf: b, usage, tag, timeout }) => { settle('waited', tag, buf(b).resv.wait(usage, timeout === undefined ? undefined : { timeout })); },
  begin: ({ buf: b, access, tag, timeout, fence: id }) => {
    const options = {};
    if (timeout !== undefined) options.timeout = timeout;
    if (id !== undefined) options.fence = fence(id);
    settle('began', tag, buf(b).beginCpuAccess(access, options));
  },
  end: async ({ buf: b, access }) => { await buf(b).endCpuAccess(access); },
  exportSync: async ({ buf: b, access, id }) => {
    const fd = await buf(b).exportSyncFile(access);
    try { fences.set(id, await DmaFence.fromFd(fd, { name: id })); } finally { native.close(fd); }
    return { key: keyOf(fences.get(id)) };
  },
  importSync: async ({ buf: b, id, access }) => {
    const fd = fence(id).toFd();
    try { await buf(b).importSyncFile(fd, access); } finally { native.close(fd); }
  },
  poke: ({ buf: b, at, value }) => { views.get(b).view[at] = value; },
  peek: ({ buf: b, at }) => ({ value: views.get(b).view[at] }),
  put: async ({ buf: b }) => { await views.get(b)?.attachment.detach(); views.delete(b); buf(b).put(); bufs.delete(b); },
  // A hostile holder: adds new fences it never signals until refused.
  flood: async ({ buf: b, usage, max }) => {
    for (let n = 0; n < max; n++) {
      const f = new DmaFence({ name: 'flood ' + n });
      try { await buf(b).resv.add(f, usage); } catch (e) { return { added: n, code: e.code }; }
      flooded.push(f);
    }
    return { added: max, code: null };
  },
  // An exporter: allocates a buffer and sends it over the channel.
  allocate: ({ id, size }) => { bufs.set(id, m.systemHeap.allocate(size, { name: id })); },
  giveBuffer: async ({ buf: b }) => { await channel.send(buf(b)); },
});
const flooded = [];
`;

/** An agent that holds buffers too. */
export function startBufferAgent(): Promise<Agent> {
  return Agent.start(BUFFER_HANDLERS);
}

/** The key of a fence in every process: the inode of its fence file's pipe. */
export function fenceKey(fence: DmaFence): string {
  const fd = fence.toFd();
  try {
    return String(native.fstat(fd).ino);
  } finally {
    native.close(fd);
  }
}

/** Runs `fn` with `n` buffer agents, stopping them afterwards whatever happens. */
export async function withBufferAgents<T>(n: number, fn: (...agents: Agent[]) => Promise<T>): Promise<T> {
  const agents: Agent[] = [];
  try {
    for (let i = 0; i < n; i++) agents.push(await startBufferAgent());
    return await fn(...agents);
  } finally {
    for (const a of agents) await a.stop();
  }
}
