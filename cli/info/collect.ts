/**
 * Putting `dmabuf info` together: the threads' snapshots cross-referenced with what `/proc`
 * says (holders, mappers, storage), storage and kernel dma-bufs that no thread described,
 * the `--pid` filter, and the per-process and per-exporter totals.
 *
 * @module
 */
import { statSync } from 'node:fs';
import { DmaBufError } from '../../src/core/errors.js';
import { assertAvailable } from '../../src/native/binding.js';
import type { Snapshot } from '../../src/remote/introspect.js';
import { findEndpoints, queryAll } from './endpoints.js';
import { MEMFD_PREFIX, isKernelDmaBuf, memfdName, scanProc, type ProcScan } from './proc-scan.js';
import {
  DEFAULT_QUERY_TIMEOUT, REPORT_VERSION,
  type BufferReport, type ExporterReport, type InfoOptions, type Mapping, type ProcessReport, type Report, type ThreadReport,
} from './report.js';

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
    // A thread that imported this kernel dma-buf described it as its own: list it once, here.
    const described = buffers.get(k);
    buffers.delete(k);
    buffers.set(`kernel:${k}`, {
      kind: 'kernel', key: k, name: info.name, exporter: info.expName || 'unknown', size: info.size,
      exporterPid: null, exporterThread: null, id: null, refs: null, count: info.count, flags: null, sealed: null,
      storage: null, attachments: described?.attachments ?? [], maps: mappings.reduce((n, m) => n + m.count, 0), importers: [],
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
