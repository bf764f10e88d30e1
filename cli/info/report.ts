/**
 * The `dmabuf info` listing as data: what `--json` prints, and what the text and CSV forms
 * are made from.
 *
 * @module
 */
import type { AttachmentSnapshot, Snapshot, StorageSnapshot } from '../../src/remote/introspect.js';

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
