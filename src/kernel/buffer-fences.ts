/**
 * Moving fences between a kernel dma-buf and sync_files: the buffer's implicit fences out
 * (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`) and a sync_file's fence in
 * (`DMA_BUF_IOCTL_IMPORT_SYNC_FILE`), both Linux 6.0 and later.
 *
 * @module
 */
import type { DmaBuf } from '../core/dma-buf.js';
import type { FenceAccess } from '../core/cpu-access.js';
import { DmaBufError } from '../core/errors.js';
import { kernelDescriptorOf } from './kernel-buffer.js';
import { exportSyncFd, importSyncFd } from './fence-ioctls.js';
import { SyncFile, adoptSyncFile } from './sync-file.js';

export type { FenceAccess };

/**
 * The fences that CPU or device access of this kind must wait for, as a new sync_file:
 * `'read'`, the buffer's write fences (what a reader waits for); `'write'`, all its fences
 * (what a writer waits for). A buffer without such fences gives a signalled file.
 *
 * @throws {DmaBufError} `EINVAL` for a buffer that is not a kernel dma-buf, or a bad access;
 *   `ENOTTY` on kernels before 6.0.
 * @example
 * ```ts
 * using done = exportSyncFile(frame, 'read');
 * await done.wait();
 * ```
 */
export function exportSyncFile(buf: DmaBuf, access: FenceAccess): SyncFile {
  const op = 'exportSyncFile';
  return adoptSyncFile(exportSyncFd(kernelDescriptorOf(buf, op), access, op));
}

/**
 * Adds a sync_file's fence to the buffer: as a `'write'` fence, readers and writers of the
 * buffer wait for it (`beginCpuAccess`, and drivers that honour implicit fences); as a `'read'`
 * fence, only writers do.
 *
 * @throws {DmaBufError} `EINVAL` for a buffer that is not a kernel dma-buf, a closed or bad
 *   sync_file, or a bad access; `ENOTTY` on kernels before 6.0.
 * @example
 * ```ts
 * importSyncFile(buf, renderDone, 'write'); // readers now wait for the render
 * ```
 */
export function importSyncFile(buf: DmaBuf, file: SyncFile, access: FenceAccess): void {
  const op = 'importSyncFile';
  const fd = kernelDescriptorOf(buf, op);
  if (!(file instanceof SyncFile) || file.fd < 0) {
    throw new DmaBufError('EINVAL', `${op}: expected an open SyncFile`, { op });
  }
  importSyncFd(fd, access, file.fd, op);
}
