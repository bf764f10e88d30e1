/**
 * A kernel sync_file: a descriptor that holds one fence (or several merged), signalled when
 * the work it stands for is done. Drivers hand them out (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`, KMS
 * out-fences, GPU submissions) and take them in. This class holds one descriptor of it, tells
 * its status (`SYNC_IOC_FILE_INFO`) and waits for it without blocking the event loop (the
 * descriptor polls readable once signalled).
 *
 * Knows nothing of buffers; see `buffer-fences.ts` for moving fences in and out of a dma-buf.
 *
 * @module
 */
import { readlinkSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { native, own, closeOwned } from '../native/binding.js';
import { DmaBufError } from '../core/errors.js';
import { waitForPoll } from './poll-wait.js';

/** `'active'`: not signalled yet; `'signaled'`: done; `'error'`: signalled with an error. */
export type SyncFileStatus = 'active' | 'signaled' | 'error';

/** Options of {@link SyncFile.wait}. */
export interface SyncFileWaitOptions {
  /** Gives up after this many milliseconds (`ETIMEDOUT`). Default: wait for ever. */
  timeout?: number;
  /** Gives up when aborted (`EINTR`). */
  signal?: AbortSignal;
}

const kAdopt = Symbol('dmabuf.syncFile.adopt');
const LINK = 'anon_inode:sync_file';

function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(osConstants.errno)) if (value === errno) return name;
  return `E${errno}`;
}

/**
 * One descriptor of a kernel sync_file.
 *
 * @example
 * ```ts
 * using fence = exportSyncFile(buf, 'read');
 * await fence.wait({ timeout: 1000 });
 * console.log(fence.status); // 'signaled'
 * ```
 */
export class SyncFile implements Disposable {
  #fd: number;

  /** @internal use {@link SyncFile.fromFd}. */
  constructor(token: symbol, fd: number) {
    if (token !== kAdopt) throw new DmaBufError('EINVAL', 'new SyncFile: use SyncFile.fromFd(fd) or exportSyncFile(buf, access)', { op: 'new SyncFile' });
    this.#fd = own(fd);
  }

  /**
   * Wraps a descriptor of a sync_file: takes its own `dup`, so the caller keeps (and closes)
   * `fd`.
   *
   * @throws {DmaBufError} `EBADF` when `fd` is not open; `EINVAL` when it is not a sync_file.
   * @example
   * ```ts
   * const fence = SyncFile.fromFd(outFenceFd);
   * ```
   */
  static fromFd(fd: number): SyncFile {
    const op = 'SyncFile.fromFd';
    if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw new DmaBufError('EBADF', `${op}: ${String(fd)} is not a file descriptor`, { op });
    native.fstat(fd); // EBADF
    let link = '';
    try {
      link = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      // unreadable /proc: fall through to EINVAL
    }
    if (link !== LINK) throw new DmaBufError('EINVAL', `${op}: descriptor ${fd} is not a sync_file (it is ${link || 'unknown'})`, { op });
    return new SyncFile(kAdopt, native.dup(fd, true));
  }

  /** The held descriptor (-1 after {@link close}); hand a `dup` of it to others, never close it. */
  get fd(): number {
    return this.#fd;
  }

  #heldFd(op: string): number {
    if (this.#fd < 0) throw new DmaBufError('EINVAL', `${op}: the sync_file is closed`, { op });
    return this.#fd;
  }

  /**
   * What `SYNC_IOC_FILE_INFO` says: the driver's name of the fence, its status and the number
   * of fences the file holds.
   *
   * @throws {DmaBufError} `EINVAL` after {@link close}.
   */
  info(): { name: string; status: SyncFileStatus; error: string | null; fences: number } {
    const r = native.syncFileInfo(this.#heldFd('info'));
    const status: SyncFileStatus = r.status > 0 ? 'signaled' : r.status === 0 ? 'active' : 'error';
    return { name: r.name, status, error: r.status < 0 ? errnoName(-r.status) : null, fences: r.numFences };
  }

  /** The status now. @throws {DmaBufError} `EINVAL` after {@link close}. */
  get status(): SyncFileStatus {
    return this.info().status;
  }

  /**
   * Resolves once the fence has signalled, without blocking the event loop (the watcher
   * keeps the loop alive while it waits).
   *
   * @throws {DmaBufError} `ETIMEDOUT` after `timeout`; `EINTR` when `signal` aborts; `EIO`
   *   when the fence signalled with an error (the message names it, e.g. `ETIMEDOUT` for a
   *   driver's timeout); `EINVAL` after {@link close} or for a bad timeout.
   * @example
   * ```ts
   * await fence.wait({ signal: AbortSignal.timeout(500) });
   * ```
   */
  async wait(options: SyncFileWaitOptions = {}): Promise<void> {
    const op = 'wait';
    await waitForPoll(this.#heldFd(op), 'readable', { op, what: 'the sync_file', signal: options?.signal, timeout: options?.timeout });
    const { status, error, name } = this.info();
    if (status === 'error') {
      throw new DmaBufError('EIO', `${op}: the fence "${name}" signalled with an error (${error}): the work it stands for failed`, { op });
    }
  }

  /** Closes the descriptor (idempotent). Waits in progress still complete. */
  close(): void {
    if (this.#fd >= 0) {
      closeOwned(this.#fd);
      this.#fd = -1;
    }
  }

  /** Closes the descriptor. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** @internal Wraps a new sync_file descriptor the caller hands over. */
export function adoptSyncFile(fd: number): SyncFile {
  return new SyncFile(kAdopt, fd);
}
