/**
 * Kernel dma-bufs: recognising their descriptors, buffer objects over them, sync_files.
 * Loading this module registers the importer through which `DmaBuf.get(fd)` takes kernel
 * dma-buf descriptors (the package root loads it).
 *
 * @module
 */
import { registerImporter } from '../core/hooks.js';
import { importKernelDescriptor } from './kernel-buffer.js';

registerImporter((desc) => importKernelDescriptor(desc.fd, desc.stat));

export { describeKernelDescriptor, type KernelDescriptorInfo } from './descriptor.js';
export { isKernelBuffer, adoptKernelDescriptor, type KernelBufferPriv } from './kernel-buffer.js';
export { SyncFile, type SyncFileStatus, type SyncFileWaitOptions } from './sync-file.js';
export { exportSyncFile, importSyncFile, type FenceAccess } from './buffer-fences.js';
