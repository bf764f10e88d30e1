/**
 * The two ioctls that move fences between a kernel dma-buf's descriptor and sync_files:
 * `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` and `DMA_BUF_IOCTL_IMPORT_SYNC_FILE` (Linux 6.0 and
 * later), on descriptors. `buffer-fences.ts` offers them on buffer objects, `kernel-resv.ts`
 * builds a kernel dma-buf's reservation object on them.
 *
 * @module
 */
import type { FenceAccess } from '../core/cpu-access.js';
import { DmaBufError } from '../core/errors.js';
import { native } from '../native/binding.js';

function accessFlag(op: string, access: FenceAccess): number {
  const k = native.kernelConstants;
  if (access === 'read') return k.DMA_BUF_SYNC_READ;
  if (access === 'write') return k.DMA_BUF_SYNC_WRITE;
  throw new DmaBufError('EINVAL', `${op}: access must be 'read' or 'write', got ${String(access)}`, { op });
}

function tooOld(op: string, err: unknown): unknown {
  if (!DmaBufError.is(err, 'ENOTTY')) return err;
  return new DmaBufError('ENOTTY', `${op}: this kernel cannot move fences between dma-bufs and sync_files (DMA_BUF_IOCTL_EXPORT_SYNC_FILE and IMPORT_SYNC_FILE need Linux 6.0)`, { op, cause: err, syscall: err.syscall, errno: err.errno });
}

/**
 * `DMA_BUF_IOCTL_EXPORT_SYNC_FILE` on the dma-buf descriptor `fd`: a new sync_file
 * descriptor, owned by the caller.
 *
 * @throws {DmaBufError} `EINVAL` for a bad access; `ENOTTY` on kernels before 6.0.
 */
export function exportSyncFd(fd: number, access: FenceAccess, op: string): number {
  const flag = accessFlag(op, access);
  try {
    return native.dmaBufExportSyncFile(fd, flag);
  } catch (err) {
    throw tooOld(op, err);
  }
}

/**
 * `DMA_BUF_IOCTL_IMPORT_SYNC_FILE` on the dma-buf descriptor `fd`: adds the fence of the
 * sync_file `syncFd` (the caller keeps it) as a read or write fence.
 *
 * @throws {DmaBufError} `EINVAL` for a bad access or sync_file; `ENOTTY` on kernels before 6.0.
 */
export function importSyncFd(fd: number, access: FenceAccess, syncFd: number, op: string): void {
  const flag = accessFlag(op, access);
  try {
    native.dmaBufImportSyncFile(fd, flag, syncFd);
  } catch (err) {
    throw tooOld(op, err);
  }
}
