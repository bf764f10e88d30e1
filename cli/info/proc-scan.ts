/**
 * Reading `/proc`: which processes hold a buffer's file (a socket), its memfd storage
 * (`/memfd:dmabuf:<name>`) or a kernel dma-buf (`/dmabuf:<name>`, `anon_inode:dmabuf`, with
 * `fdinfo`), and which map them (`/proc/PID/maps`). Processes that cannot be read are listed
 * with the reason, never silently skipped.
 *
 * @module
 */
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { DmaBufError } from '../../src/core/errors.js';
import type { UnreadableProcess } from './report.js';

/** One mapping of a buffer's memory: `key` is the mapped file's `dev:ino`. */
export interface MapEntry { pid: number; key: string; path: string; bytes: number }
/** What `fdinfo` says of a kernel dma-buf. */
export interface KernelFdInfo { size: number; count: number | null; expName: string; name: string }

/** Everything one pass over `/proc` found. */
export interface ProcScan {
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

/** How the link of a system-heap storage memfd starts. */
export const MEMFD_PREFIX = '/memfd:dmabuf:';

/** Whether a descriptor's link (or a mapping's path) is a kernel dma-buf. */
export function isKernelDmaBuf(link: string): boolean {
  return link.startsWith('/dmabuf:') || link === 'anon_inode:dmabuf';
}

/** The buffer name in a storage memfd's link. */
export function memfdName(path: string): string {
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

/** Scans every process; `socketInos` are the inodes of the buffers' files to look for. */
export function scanProc(proc: string, socketInos: Set<string>): ProcScan {
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
