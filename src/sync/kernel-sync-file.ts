/**
 * Kernel sync_files as fence descriptors: recognising one, and reading its outcome.
 *
 * A kernel `sync_file` (`anon_inode:sync_file` in `/proc/self/fd`) holds one or more kernel
 * fences: drivers hand them out (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`, KMS out-fences, GPU
 * submissions). It polls readable once every fence it holds has signalled, and
 * `SYNC_IOC_FILE_INFO` tells its status: 1 signalled, 0 active, a negative errno when a fence
 * failed. `DmaFence.fromFd` accepts one as it accepts a fence file, so kernel fences are
 * merged and awaited with this package's own.
 *
 * Unlike a fence file, a sync_file has no identity to find it by (every anonymous inode is
 * the same inode), and its signaller is the kernel, which never dies: a driver's fence always
 * signals, at worst with an error after its own timeout.
 *
 * Knows nothing of buffers.
 *
 * @module
 */
import { readlinkSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { native } from '../native/binding.js';
import type { FenceFileState } from './fence-file.js';

/** What `/proc/self/fd/N` reads for a kernel sync_file. */
export const SYNC_FILE_LINK = 'anon_inode:sync_file';

/**
 * Whether `fd` (an open descriptor) is a kernel sync_file. `false` when `/proc` cannot tell.
 *
 * @example
 * ```ts
 * if (isKernelSyncFile(fd)) console.log('a kernel fence');
 * ```
 */
export function isKernelSyncFile(fd: number): boolean {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`) === SYNC_FILE_LINK;
  } catch {
    return false;
  }
}

const codeOfErrno = new Map<number, string>();
for (const [name, n] of Object.entries(osConstants.errno)) if (!codeOfErrno.has(n)) codeOfErrno.set(n, name);

/**
 * What a kernel sync_file says now (`SYNC_IOC_FILE_INFO`): not signalled, signalled, or
 * signalled with the error of its first failed fence (`EIO` for an errno without a name,
 * such as the kernel's internal `ENOTSUPP`).
 *
 * @throws {DmaBufError} `EBADF` when `fd` is not open; `ENOTTY` when it is not a sync_file.
 */
export function readKernelSyncFile(fd: number): FenceFileState {
  const { status } = native.syncFileInfo(fd);
  if (status === 0) return { signaled: false };
  if (status > 0) return { signaled: true, code: undefined, died: false };
  return { signaled: true, code: codeOfErrno.get(-status) ?? 'EIO', died: false };
}
