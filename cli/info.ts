/**
 * `dmabuf info`: every buffer on this machine that the user may see (the user-space
 * `dmabuf_dump`).
 *
 * - This project's buffers: every thread that exports or imports buffers listens on an
 *   abstract Unix socket `@dmabuf-info.<pid>.<threadId>` (see `src/core/introspect.ts`); the
 *   command finds them in `/proc/net/unix` and asks each for a snapshot (same user or root
 *   only). Which processes hold each buffer's file and map its storage comes from
 *   `/proc/PID/fd` and `/proc/PID/maps`.
 * - The kernel's dma-bufs: descriptors whose link is `/dmabuf:<name>` (or `anon_inode:dmabuf`),
 *   with `/proc/PID/fdinfo/N` (`size`, `count`, `exp_name`, `name`), and their mappings in
 *   `/proc/PID/maps`.
 * - Processes that cannot be read (other users) and threads that refuse to answer are counted
 *   and said, never silently skipped.
 *
 * @module
 */
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { DmaBufError } from '../src/core/errors.js';
import { native, assertAvailable, type PollHandle } from '../src/native/binding.js';
import { INTROSPECTION_PREFIX, type AttachmentSnapshot, type Snapshot, type StorageSnapshot } from '../src/remote/introspect.js';

/** Version of the `--json` format. */
export const REPORT_VERSION = 1;
/** Default time each thread has to answer, in milliseconds. */
export const DEFAULT_QUERY_TIMEOUT = 1000;

/** Options of {@link collect}. */
export interface InfoOptions {
  /** Only buffers this process exports, imports, holds or maps, and its totals. */
  pid?: number;
  /** Time each thread has to answer, in milliseconds. */
  timeout?: number;
  /** Where procfs is mounted (default `/proc`). */
  proc?: string;
}

/** A process that maps a buffer, with its mappings. */
export interface Mapping {
  pid: number;
  /** Number of mappings (lines of `/proc/PID/maps`). */
  count: number;
  /** Bytes of address space they cover. */
  bytes: number;
}

/** One thread that imports a buffer. */
export interface ImporterReport {
  pid: number;
  threadId: number;
  refs: number;
  attachments: AttachmentSnapshot[];
  maps: number;
}

/** One buffer of the listing. */
export interface BufferReport {
  /**
   * `'dmabuf'`: a buffer of this project (its file is a socket); `'kernel'`: a kernel dma-buf;
   * `'storage'`: memfd storage named `dmabuf:` whose buffer no thread described (its exporter
   * is gone, blocked or of another user), found through holders and mappers only.
   */
  kind: 'dmabuf' | 'kernel' | 'storage';
  /** `dev:ino` of the buffer's file (for `'storage'`, of the memfd). */
  key: string;
  name: string;
  /** The exporter's name (`system`, ...); for kernel buffers `exp_name` (`udmabuf`, ...). */
  exporter: string;
  size: number;
  /** The exporting process, when known. */
  exporterPid: number | null;
  /** The exporting thread (`threadId`), when known. */
  exporterThread: number | null;
  /** The exporter's id of the buffer (in its thread). */
  id: number | null;
  /** The exporter thread's JavaScript references (not the descriptors: see {@link holders}). */
  refs: number | null;
  /** For kernel buffers: the file's reference count (`count:` in fdinfo). */
  count: number | null;
  flags: number | null;
  sealed: boolean | null;
  /** The storage, when the exporter describes it (system heap). */
  storage: StorageSnapshot | null;
  /** Attachments as the exporter sees them (a remote importer's device carries its pid). */
  attachments: AttachmentSnapshot[];
  /** Live maps over every attachment (for kernel buffers: mappings in every process). */
  maps: number;
  /** Threads of other processes (or threads) that imported the buffer. */
  importers: ImporterReport[];
  /** Processes with a descriptor of the buffer's file. */
  holders: number[];
  /** Processes that map the buffer's memory (its storage memfd, or the kernel dma-buf). */
  mappers: number[];
  /** The mappings, per process. */
  mappings: Mapping[];
  /** Processes with a descriptor of the storage memfd (the exporter, importers while mapping). */
  storageHolders: number[];
}

/** Totals of one process. */
export interface ProcessReport {
  pid: number;
  comm: string;
  exported: { count: number; bytes: number };
  imported: { count: number; bytes: number };
  held: { count: number; bytes: number };
  mapped: { count: number; bytes: number };
}

/** Totals of one exporter. */
export interface ExporterReport {
  exporter: string;
  kind: BufferReport['kind'];
  buffers: number;
  bytes: number;
  attachments: number;
  maps: number;
  pids: number[];
}

/** What one thread's listener said. */
export interface ThreadReport {
  pid: number;
  threadId: number;
  /** The abstract name, as `/proc/net/unix` shows it. */
  address: string;
  /** `'answered'`; `'refused'`: closed without data (another user's); `'failed'`: see error. */
  status: 'answered' | 'refused' | 'failed';
  /** The listener's user (SO_PEERCRED), when known. */
  uid: number | null;
  error?: string;
  exported?: number;
  imported?: number;
  serviceChannels?: Snapshot['serviceChannels'];
  importChannels?: Snapshot['importChannels'];
}

/** An unreadable process. */
export interface UnreadableProcess {
  pid: number;
  uid: number | null;
  comm: string;
  /** What could not be read (`fd`, `maps`) and why (`EACCES`, ...). */
  what: string;
}

/** The whole listing (`--json`). */
export interface Report {
  version: number;
  time: string;
  /** The effective user of the command. */
  uid: number;
  /** The `--pid` filter, or null. */
  pid: number | null;
  buffers: BufferReport[];
  processes: ProcessReport[];
  exporters: ExporterReport[];
  threads: ThreadReport[];
  endpoints: { found: number; answered: number; refused: number; failed: number };
  unreadable: { count: number; processes: UnreadableProcess[] };
}

// ---------------------------------------------------------------------------------------------
// Finding and asking the threads

interface Endpoint { address: string; name: string; pid: number; threadId: number }

const ENDPOINT_RE = /^@(dmabuf-info\.(\d+)\.(\d+)(?:\.\d+)?)$/;

/** The listening introspection sockets in `/proc/net/unix` (this network namespace). */
export function findEndpoints(proc = '/proc'): Endpoint[] {
  let text: string;
  try {
    text = readFileSync(`${proc}/net/unix`, 'utf8');
  } catch (err) {
    throw new DmaBufError('EIO', `info: cannot read ${proc}/net/unix: ${(err as Error).message}`, { op: 'info', cause: err });
  }
  const seen = new Map<string, Endpoint>();
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const path = f.slice(7).join(' ');
    if (!path.startsWith(`@${INTROSPECTION_PREFIX}`)) continue;
    const m = ENDPOINT_RE.exec(path);
    if (!m) continue;
    // Listening sockets carry __SO_ACCEPTCON (0x10000) in Flags.
    if ((parseInt(f[3]!, 16) & 0x10000) === 0) continue;
    seen.set(path, { address: path, name: m[1]!, pid: Number(m[2]), threadId: Number(m[3]) });
  }
  return [...seen.values()];
}

type QueryResult =
  | { status: 'answered'; snapshot: Snapshot; pid: number; uid: number }
  | { status: 'refused'; pid: number | null; uid: number | null }
  | { status: 'failed'; error: string; pid: number | null; uid: number | null };

/** Asks one thread for its snapshot. Never throws. */
export function query(name: string, timeout: number): Promise<QueryResult> {
  const c = native.constants;
  let fd: number;
  try {
    fd = native.socket(c.SOCK_STREAM, true);
  } catch (err) {
    return Promise.resolve({ status: 'failed', error: (err as Error).message, pid: null, uid: null });
  }
  let pid: number | null = null;
  let uid: number | null = null;
  try {
    native.connect(fd, `\0${name}`);
    const cred = native.peerCred(fd);
    pid = cred.pid;
    uid = cred.uid;
  } catch (err) {
    native.close(fd);
    const e = err as DmaBufError;
    const why = e.code === 'ECONNREFUSED' ? 'the thread stopped listening' : e.code === 'EAGAIN' ? 'the thread is not accepting connections (busy or blocked)' : e.message;
    return Promise.resolve({ status: 'failed', error: why, pid, uid });
  }
  return new Promise<QueryResult>((resolve) => {
    const chunks: Buffer[] = [];
    let poll: PollHandle | null = null;
    let finished = false;
    const finish = (r: QueryResult): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      if (poll) native.pollClose(poll);
      native.close(fd);
      resolve(r);
    };
    const timer = setTimeout(() => finish({ status: 'failed', error: `no answer within ${timeout} ms (is its event loop blocked?)`, pid, uid }), timeout);
    const onEof = (): void => {
      const data = Buffer.concat(chunks);
      if (data.length === 0) {
        finish({ status: 'refused', pid, uid });
        return;
      }
      try {
        const snapshot = JSON.parse(data.toString('utf8')) as Snapshot;
        if (typeof snapshot !== 'object' || snapshot === null || !Array.isArray(snapshot.exported) || !Array.isArray(snapshot.imported)) {
          throw new Error('not a snapshot');
        }
        finish({ status: 'answered', snapshot, pid: pid ?? snapshot.pid, uid: uid ?? -1 });
      } catch (err) {
        finish({ status: 'failed', error: `a malformed answer: ${(err as Error).message}`, pid, uid });
      }
    };
    const drain = (): void => {
      for (;;) {
        let r;
        try {
          r = native.recvmsg(fd, 1 << 20, 0, c.MSG_DONTWAIT);
        } catch (err) {
          const e = err as DmaBufError;
          if (e.code === 'EAGAIN') return;
          if (e.code === 'ECONNRESET') { onEof(); return; }
          finish({ status: 'failed', error: e.message, pid, uid });
          return;
        }
        if (r.data.length === 0) { onEof(); return; }
        chunks.push(Buffer.from(r.data));
      }
    };
    try {
      poll = native.pollStart(fd, c.UV_READABLE | c.UV_DISCONNECT, () => drain());
      drain();
    } catch (err) {
      finish({ status: 'failed', error: (err as Error).message, pid, uid });
    }
  });
}

async function queryAll(endpoints: Endpoint[], timeout: number): Promise<QueryResult[]> {
  const out: QueryResult[] = new Array(endpoints.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < endpoints.length) {
      const i = next++;
      out[i] = await query(endpoints[i]!.name, timeout);
    }
  };
  await Promise.all(Array.from({ length: Math.min(32, endpoints.length) }, worker));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading /proc

interface MapEntry { pid: number; key: string; path: string; bytes: number }
interface KernelFdInfo { size: number; count: number | null; expName: string; name: string }

interface ProcScan {
  comm: Map<number, string>;
  /** Sockets: ino -> holder pids. */
  sockets: Map<string, Set<number>>;
  /** memfd `dmabuf:` storage: key -> holders, with name and size. */
  memfds: Map<string, { pids: Set<number>; name: string; size: number }>;
  /** Kernel dma-bufs: key -> holders, fdinfo. */
  kernel: Map<string, { pids: Set<number>; info: KernelFdInfo }>;
  /** Mappings of `/memfd:dmabuf:` storage and of kernel dma-bufs. */
  maps: MapEntry[];
  unreadable: UnreadableProcess[];
}

/** `st_dev` as glibc encodes it, from a `/proc/PID/maps` device `maj:min` (hex). */
function devFromMaps(dev: string): string {
  const [ma, mi] = dev.split(':').map((x) => BigInt(`0x${x}`)) as [bigint, bigint];
  const d = (mi & 0xffn) | ((ma & 0xfffn) << 8n) | ((mi & ~0xffn) << 12n) | ((ma & ~0xfffn) << 32n);
  return d.toString();
}

const MEMFD_PREFIX = '/memfd:dmabuf:';

function isKernelDmaBuf(link: string): boolean {
  return link.startsWith('/dmabuf:') || link === 'anon_inode:dmabuf';
}

function memfdName(path: string): string {
  return path.slice(MEMFD_PREFIX.length).replace(/ \(deleted\)$/, '');
}

function errCode(err: unknown): string {
  return (err as { code?: string }).code ?? 'EIO';
}

function parseFdinfo(text: string): KernelFdInfo {
  const field = (k: string): string | undefined => new RegExp(`^${k}:\\s*(.*)$`, 'm').exec(text)?.[1]?.trim();
  const count = field('count');
  return { size: Number(field('size') ?? 0), count: count === undefined ? null : Number(count), expName: field('exp_name') ?? '', name: field('name') ?? '' };
}

function scanProc(proc: string, socketInos: Set<string>): ProcScan {
  const scan: ProcScan = { comm: new Map(), sockets: new Map(), memfds: new Map(), kernel: new Map(), maps: [], unreadable: [] };
  let pids: number[];
  try {
    pids = readdirSync(proc).filter((n) => /^\d+$/.test(n)).map(Number);
  } catch (err) {
    throw new DmaBufError('EIO', `info: cannot list ${proc}: ${(err as Error).message}`, { op: 'info', cause: err });
  }
  for (const pid of pids) {
    const dir = `${proc}/${pid}`;
    let comm = '';
    try {
      comm = readFileSync(`${dir}/comm`, 'utf8').trim();
    } catch {
      // gone, or hidden
    }
    scan.comm.set(pid, comm);
    const unreadable = (what: string, err: unknown): void => {
      let uid: number | null = null;
      try {
        uid = statSync(dir).uid;
      } catch {
        // gone
      }
      const prev = scan.unreadable.find((u) => u.pid === pid);
      if (prev) prev.what += `, ${what} (${errCode(err)})`;
      else scan.unreadable.push({ pid, uid, comm, what: `${what} (${errCode(err)})` });
    };
    let fds: string[] = [];
    try {
      fds = readdirSync(`${dir}/fd`);
    } catch (err) {
      const code = errCode(err);
      if (code === 'ENOENT' || code === 'ESRCH') continue; // exited while we looked
      unreadable('fd', err);
      fds = [];
    }
    for (const n of fds) {
      let link: string;
      try {
        link = readlinkSync(`${dir}/fd/${n}`);
      } catch {
        continue; // closed while we looked
      }
      if (link.startsWith('socket:[')) {
        const ino = link.slice(8, -1);
        if (!socketInos.has(ino)) continue;
        let set = scan.sockets.get(ino);
        if (!set) scan.sockets.set(ino, (set = new Set()));
        set.add(pid);
        continue;
      }
      const memfd = link.startsWith(MEMFD_PREFIX);
      const kernel = isKernelDmaBuf(link);
      if (!memfd && !kernel) continue;
      let key: string;
      let size = 0;
      try {
        const st = statSync(`${dir}/fd/${n}`, { bigint: true });
        key = `${st.dev}:${st.ino}`;
        size = Number(st.size);
      } catch {
        continue;
      }
      if (memfd) {
        let e = scan.memfds.get(key);
        if (!e) scan.memfds.set(key, (e = { pids: new Set(), name: memfdName(link), size }));
        e.pids.add(pid);
        continue;
      }
      let info: KernelFdInfo = { size, count: null, expName: '', name: link.startsWith('/dmabuf:') ? link.slice(8) : '' };
      try {
        info = parseFdinfo(readFileSync(`${dir}/fdinfo/${n}`, 'utf8'));
      } catch {
        // closed while we looked: keep what stat said
      }
      let e = scan.kernel.get(key);
      if (!e) scan.kernel.set(key, (e = { pids: new Set(), info }));
      e.pids.add(pid);
    }
    let maps: string;
    try {
      maps = readFileSync(`${dir}/maps`, 'utf8');
    } catch (err) {
      const code = errCode(err);
      if (code !== 'ENOENT' && code !== 'ESRCH') unreadable('maps', err);
      continue;
    }
    for (const line of maps.split('\n')) {
      if (!line.includes('/memfd:dmabuf:') && !line.includes('dmabuf')) continue;
      const m = /^([0-9a-f]+)-([0-9a-f]+)\s+\S+\s+\S+\s+([0-9a-f]+:[0-9a-f]+)\s+(\d+)\s+(.*)$/.exec(line);
      if (!m) continue;
      const path = m[5]!;
      if (!path.startsWith(MEMFD_PREFIX) && !isKernelDmaBuf(path)) continue;
      const bytes = Number(BigInt(`0x${m[2]}`) - BigInt(`0x${m[1]}`));
      scan.maps.push({ pid, key: `${devFromMaps(m[3]!)}:${m[4]}`, path, bytes });
    }
  }
  return scan;
}

// ---------------------------------------------------------------------------------------------
// Putting it together

function sorted(s: Iterable<number>): number[] {
  return [...new Set(s)].sort((a, b) => a - b);
}

function mappingsOf(scan: ProcScan, key: string | null): Mapping[] {
  if (!key) return [];
  const by = new Map<number, Mapping>();
  for (const m of scan.maps) {
    if (m.key !== key) continue;
    let e = by.get(m.pid);
    if (!e) by.set(m.pid, (e = { pid: m.pid, count: 0, bytes: 0 }));
    e.count += 1;
    e.bytes += m.bytes;
  }
  return [...by.values()].sort((a, b) => a.pid - b.pid);
}

/** Collects the listing. */
export async function collect(options: InfoOptions = {}): Promise<Report> {
  assertAvailable('info');
  const proc = options.proc ?? '/proc';
  const timeout = options.timeout ?? DEFAULT_QUERY_TIMEOUT;
  if (options.pid !== undefined) {
    try {
      statSync(`${proc}/${options.pid}`);
    } catch {
      throw new DmaBufError('ESRCH', `info: no process with pid ${options.pid}`, { op: 'info' });
    }
  }
  const endpoints = findEndpoints(proc);
  const results = await queryAll(endpoints, timeout);

  const threads: ThreadReport[] = [];
  const buffers = new Map<string, BufferReport>();
  const importedSeen: { snap: Snapshot; pid: number; imp: Snapshot['imported'][number] }[] = [];
  endpoints.forEach((ep, i) => {
    const r = results[i]!;
    const pid = r.pid ?? ep.pid;
    const t: ThreadReport = { pid, threadId: ep.threadId, address: ep.address, status: r.status, uid: r.uid };
    if (r.status === 'failed') t.error = r.error;
    if (r.status === 'answered') {
      const s = r.snapshot;
      t.exported = s.exported.length;
      t.imported = s.imported.length;
      t.serviceChannels = s.serviceChannels;
      t.importChannels = s.importChannels;
      for (const b of s.exported) {
        buffers.set(b.key, {
          kind: 'dmabuf', key: b.key, name: b.name, exporter: b.exporter, size: b.size,
          exporterPid: pid, exporterThread: s.threadId, id: b.id, refs: b.refs, count: null,
          flags: b.flags, sealed: b.sealed, storage: b.storage ?? null, attachments: b.attachments,
          maps: b.maps, importers: [], holders: [], mappers: [], mappings: [], storageHolders: [],
        });
      }
      for (const imp of s.imported) importedSeen.push({ snap: s, pid, imp });
    }
    threads.push(t);
  });
  for (const { snap, pid, imp } of importedSeen) {
    let b = buffers.get(imp.key);
    if (!b) {
      // The exporter did not answer: describe the buffer from its importers.
      b = {
        kind: 'dmabuf', key: imp.key, name: imp.name, exporter: imp.exporter, size: imp.size,
        exporterPid: imp.exporterPid, exporterThread: null, id: null, refs: null, count: null,
        flags: imp.flags, sealed: imp.sealed, storage: null, attachments: [], maps: 0,
        importers: [], holders: [], mappers: [], mappings: [], storageHolders: [],
      };
      buffers.set(imp.key, b);
    }
    b.importers.push({ pid, threadId: snap.threadId, refs: imp.refs, attachments: imp.attachments, maps: imp.maps });
  }
  for (const b of buffers.values()) {
    if (b.exporterThread === null) {
      // Without the exporter's view, the importers' own attachments are what is known.
      b.attachments = b.importers.flatMap((i) => i.attachments.map((a) => ({ ...a, pid: i.pid })));
      b.maps = b.importers.reduce((n, i) => n + i.maps, 0);
    }
  }

  const socketInos = new Set([...buffers.keys()].map((k) => k.slice(k.indexOf(':') + 1)));
  const scan = scanProc(proc, socketInos);
  const storageKeys = new Set<string>();
  for (const b of buffers.values()) {
    b.holders = sorted(scan.sockets.get(b.key.slice(b.key.indexOf(':') + 1)) ?? []);
    const file = b.storage?.file ?? null;
    if (file) {
      storageKeys.add(file);
      b.mappings = mappingsOf(scan, file);
      b.storageHolders = sorted(scan.memfds.get(file)?.pids ?? []);
    } else {
      // Storage the exporter did not describe: the importers' mappings of memfds whose name
      // is this buffer's, in the importers' processes.
      const name = b.name || null;
      if (name !== null) {
        const pids = new Set(b.importers.map((i) => i.pid));
        const keys = new Set(scan.maps.filter((m) => pids.has(m.pid) && m.path.startsWith(MEMFD_PREFIX) && memfdName(m.path) === name).map((m) => m.key));
        if (keys.size === 1) {
          const k = [...keys][0]!;
          storageKeys.add(k);
          b.mappings = mappingsOf(scan, k);
          b.storageHolders = sorted(scan.memfds.get(k)?.pids ?? []);
        }
      }
    }
    b.mappers = b.mappings.map((m) => m.pid);
  }
  // memfd storage named dmabuf: that no thread described.
  const orphanKeys = new Set<string>();
  for (const k of scan.memfds.keys()) if (!storageKeys.has(k)) orphanKeys.add(k);
  for (const m of scan.maps) if (m.path.startsWith(MEMFD_PREFIX) && !storageKeys.has(m.key)) orphanKeys.add(m.key);
  for (const k of orphanKeys) {
    const held = scan.memfds.get(k);
    const mappings = mappingsOf(scan, k);
    const path = scan.maps.find((m) => m.key === k)?.path;
    const name = held?.name ?? (path ? memfdName(path) : '');
    const size = held?.size || Math.max(0, ...mappings.map((m) => m.bytes));
    buffers.set(`storage:${k}`, {
      kind: 'storage', key: k, name, exporter: 'unknown', size, exporterPid: null, exporterThread: null,
      id: null, refs: null, count: null, flags: null, sealed: null, storage: null, attachments: [], maps: 0,
      importers: [], holders: [], mappers: mappings.map((m) => m.pid), mappings, storageHolders: sorted(held?.pids ?? []),
    });
  }
  // Kernel dma-bufs.
  const kernelKeys = new Set<string>([...scan.kernel.keys()]);
  for (const m of scan.maps) if (isKernelDmaBuf(m.path)) kernelKeys.add(m.key);
  for (const k of kernelKeys) {
    const held = scan.kernel.get(k);
    const mappings = mappingsOf(scan, k);
    const path = scan.maps.find((m) => m.key === k)?.path ?? '';
    const info = held?.info ?? { size: Math.max(0, ...mappings.map((m) => m.bytes)), count: null, expName: '', name: path.startsWith('/dmabuf:') ? path.slice(8) : '' };
    buffers.set(`kernel:${k}`, {
      kind: 'kernel', key: k, name: info.name, exporter: info.expName || 'unknown', size: info.size,
      exporterPid: null, exporterThread: null, id: null, refs: null, count: info.count, flags: null, sealed: null,
      storage: null, attachments: [], maps: mappings.reduce((n, m) => n + m.count, 0), importers: [],
      holders: sorted(held?.pids ?? []), mappers: mappings.map((m) => m.pid), mappings, storageHolders: [],
    });
  }

  let list = [...buffers.values()];
  const filter = options.pid;
  if (filter !== undefined) {
    list = list.filter((b) => involves(b, filter));
  }
  const kindOrder = { dmabuf: 0, storage: 1, kernel: 2 };
  list.sort((a, b) => kindOrder[a.kind] - kindOrder[b.kind] || (a.exporterPid ?? 0) - (b.exporterPid ?? 0) || a.name.localeCompare(b.name) || a.key.localeCompare(b.key));

  const processes = processTotals(list, scan, filter);
  const exporters = exporterTotals(list);
  const shownThreads = filter === undefined ? threads : threads.filter((t) => t.pid === filter);
  return {
    version: REPORT_VERSION,
    time: new Date().toISOString(),
    uid: process.geteuid?.() ?? -1,
    pid: filter ?? null,
    buffers: list,
    processes,
    exporters,
    threads: shownThreads,
    endpoints: {
      found: shownThreads.length,
      answered: shownThreads.filter((t) => t.status === 'answered').length,
      refused: shownThreads.filter((t) => t.status === 'refused').length,
      failed: shownThreads.filter((t) => t.status === 'failed').length,
    },
    unreadable: { count: scan.unreadable.length, processes: scan.unreadable },
  };
}

function involves(b: BufferReport, pid: number): boolean {
  return b.exporterPid === pid || b.holders.includes(pid) || b.mappers.includes(pid)
    || b.storageHolders.includes(pid) || b.importers.some((i) => i.pid === pid);
}

function processTotals(list: BufferReport[], scan: ProcScan, filter: number | undefined): ProcessReport[] {
  const by = new Map<number, ProcessReport>();
  const get = (pid: number): ProcessReport => {
    let p = by.get(pid);
    if (!p) {
      const comm = scan.comm.get(pid) ?? '';
      by.set(pid, (p = { pid, comm, exported: { count: 0, bytes: 0 }, imported: { count: 0, bytes: 0 }, held: { count: 0, bytes: 0 }, mapped: { count: 0, bytes: 0 } }));
    }
    return p;
  };
  if (filter !== undefined) get(filter);
  for (const b of list) {
    if (b.exporterPid !== null && b.exporterThread !== null) {
      const p = get(b.exporterPid);
      p.exported.count += 1;
      p.exported.bytes += b.size;
    }
    for (const pid of new Set(b.importers.map((i) => i.pid))) {
      const p = get(pid);
      p.imported.count += 1;
      p.imported.bytes += b.size;
    }
    for (const pid of b.holders) {
      const p = get(pid);
      p.held.count += 1;
      p.held.bytes += b.size;
    }
    for (const m of b.mappings) {
      const p = get(m.pid);
      p.mapped.count += 1;
      p.mapped.bytes += m.bytes;
    }
  }
  let out = [...by.values()];
  if (filter !== undefined) out = out.filter((p) => p.pid === filter);
  return out.sort((a, b) => a.pid - b.pid);
}

function exporterTotals(list: BufferReport[]): ExporterReport[] {
  const by = new Map<string, ExporterReport>();
  for (const b of list) {
    const id = `${b.kind}\0${b.exporter}`;
    let e = by.get(id);
    if (!e) by.set(id, (e = { exporter: b.exporter, kind: b.kind, buffers: 0, bytes: 0, attachments: 0, maps: 0, pids: [] }));
    e.buffers += 1;
    e.bytes += b.size;
    e.attachments += b.attachments.length;
    e.maps += b.maps;
    if (b.exporterPid !== null && !e.pids.includes(b.exporterPid)) e.pids.push(b.exporterPid);
  }
  for (const e of by.values()) e.pids.sort((a, b) => a - b);
  return [...by.values()].sort((a, b) => a.kind.localeCompare(b.kind) || a.exporter.localeCompare(b.exporter));
}

// ---------------------------------------------------------------------------------------------
// Output

/** `1.5 MiB`. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

function attachmentsText(b: BufferReport): string {
  if (b.attachments.length === 0) return '-';
  return b.attachments.map((a) => `${a.device} (${a.kind}${a.maps ? `, ${a.maps} map${a.maps > 1 ? 's' : ''}` : ''})`).join(', ');
}

function pidsText(p: number[]): string {
  return p.length ? p.join(',') : '-';
}

function uidSummary(uids: (number | null)[]): string {
  const by = new Map<string, number>();
  for (const u of uids) by.set(u === null ? '?' : String(u), (by.get(u === null ? '?' : String(u)) ?? 0) + 1);
  return [...by.entries()].map(([u, n]) => `uid ${u}: ${n}`).join(', ');
}

/** The human listing. */
export function formatText(r: Report): string {
  const out: string[] = [];
  const scope = r.pid === null ? '' : ` held, mapped, exported or imported by pid ${r.pid}`;
  if (r.buffers.length === 0) {
    out.push(`No dma-bufs${scope}.`);
  } else {
    out.push(`Buffers${scope}:`);
    out.push(table(
      ['KIND', 'NAME', 'EXPORTER', 'PID', 'SIZE', 'REFS', 'MAPS', 'HOLDERS', 'MAPPERS', 'ATTACHMENTS'],
      r.buffers.map((b) => [
        b.kind,
        b.name || '-',
        b.exporter,
        b.exporterPid === null ? '-' : String(b.exporterPid),
        formatBytes(b.size),
        b.kind === 'kernel' ? (b.count === null ? '-' : `count ${b.count}`) : (b.refs === null ? '-' : String(b.refs)),
        String(b.maps),
        pidsText(b.holders),
        pidsText(b.mappers),
        attachmentsText(b),
      ]),
    ));
  }
  if (r.processes.length) {
    out.push('', 'Per process:');
    out.push(table(
      ['PID', 'COMMAND', 'EXPORTED', 'IMPORTED', 'HELD', 'MAPPED'],
      r.processes.map((p) => [
        String(p.pid), p.comm || '?',
        `${p.exported.count} (${formatBytes(p.exported.bytes)})`,
        `${p.imported.count} (${formatBytes(p.imported.bytes)})`,
        `${p.held.count} (${formatBytes(p.held.bytes)})`,
        `${p.mapped.count} (${formatBytes(p.mapped.bytes)})`,
      ]),
    ));
  }
  if (r.exporters.length) {
    out.push('', 'Per exporter:');
    out.push(table(
      ['EXPORTER', 'KIND', 'BUFFERS', 'SIZE', 'ATTACHMENTS', 'MAPS', 'PIDS'],
      r.exporters.map((e) => [e.exporter, e.kind, String(e.buffers), formatBytes(e.bytes), String(e.attachments), String(e.maps), pidsText(e.pids)]),
    ));
  }
  out.push('');
  const ep = r.endpoints;
  out.push(`${ep.found} thread${ep.found === 1 ? '' : 's'} with buffers found, ${ep.answered} answered.`);
  const refused = r.threads.filter((t) => t.status === 'refused');
  if (refused.length) {
    out.push(`${refused.length} thread${refused.length === 1 ? '' : 's'} refused to answer (another user's; ${uidSummary(refused.map((t) => t.uid))}): ${refused.map((t) => `pid ${t.pid}`).join(', ')}. Run as that user or as root to see their buffers.`);
  }
  for (const t of r.threads.filter((x) => x.status === 'failed')) {
    out.push(`pid ${t.pid} thread ${t.threadId} did not answer: ${t.error}`);
  }
  const u = r.unreadable;
  if (u.count) {
    const hint = r.uid === 0 ? 'even for root (another namespace, or a protected process)' : 'run as their user or as root to see them';
    out.push(`${u.count} process${u.count === 1 ? '' : 'es'} could not be read (${uidSummary(u.processes.map((p) => p.uid))}): the descriptors and mappings they hold are not counted; ${hint}.`);
  } else {
    out.push('Every process could be read.');
  }
  return out.join('\n');
}

function csvField(v: string): string {
  return /[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
}

/** One row per buffer, with a header. Lists are separated by spaces. */
export function formatCsv(r: Report): string {
  const header = ['kind', 'key', 'name', 'exporter', 'exporter_pid', 'exporter_thread', 'size', 'refs', 'count', 'maps', 'attachments', 'importers', 'holders', 'mappers', 'storage_size', 'page_size'];
  const rows = r.buffers.map((b) => [
    b.kind, b.key, b.name, b.exporter,
    b.exporterPid ?? '', b.exporterThread ?? '', b.size, b.refs ?? '', b.count ?? '', b.maps,
    b.attachments.map((a) => `${a.device}:${a.kind}:${a.maps}`).join(' '),
    b.importers.map((i) => `${i.pid}/${i.threadId}`).join(' '),
    b.holders.join(' '), b.mappers.join(' '),
    b.storage?.allocated ? b.storage.size : '', b.storage?.allocated ? b.storage.pageSize : '',
  ].map((v) => csvField(String(v))).join(','));
  return [header.join(','), ...rows].join('\n');
}

export const infoUsage = `usage: dmabuf info [--pid PID] [--json | --csv] [--timeout MS]

Lists every dma-buf on this machine that you may see: this project's buffers in every
process (name, exporter, size, references, attachments and their devices, maps, which
processes hold and map them) and the kernel's dma-bufs, with per-process and per-exporter
totals. Processes of other users that cannot be read are counted and said.

  --pid PID     only buffers that PID exports, imports, holds or maps, and its totals
  --json        the whole listing as JSON
  --csv         one line per buffer, with a header
  --timeout MS  how long each thread has to answer (default ${DEFAULT_QUERY_TIMEOUT})`;

/** Runs `dmabuf info` with its arguments; returns the exit code. */
export async function info(argv: string[]): Promise<number> {
  let format: 'text' | 'json' | 'csv' = 'text';
  const options: InfoOptions = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string | undefined => argv[++i];
    if (a === '--json') format = 'json';
    else if (a === '--csv') format = 'csv';
    else if (a === '--pid' || a === '--timeout') {
      const v = value();
      const n = Number(v);
      if (v === undefined || !/^\d+$/.test(v) || !Number.isSafeInteger(n) || n <= 0) {
        console.error(`dmabuf info: ${a} needs a positive integer, got ${v === undefined ? 'nothing' : JSON.stringify(v)}\n${infoUsage}`);
        return 2;
      }
      if (a === '--pid') options.pid = n; else options.timeout = n;
    } else if (a === '--help' || a === '-h') {
      console.log(infoUsage);
      return 0;
    } else {
      console.error(`dmabuf info: unknown option ${a}\n${infoUsage}`);
      return 2;
    }
  }
  const report = await collect(options);
  const text = format === 'json' ? JSON.stringify(report, null, 2) : format === 'csv' ? formatCsv(report) : formatText(report);
  process.stdout.write(text + '\n');
  return 0;
}
