/**
 * dmabuf: the Linux dma-buf buffer-sharing framework in user space.
 *
 * Experimental: the API of the first release may change.
 *
 * @module
 */
import './remote/index.js'; // the cross-process layer registers into the core's hooks
export { DmaBuf, O_RDONLY, O_RDWR, O_CLOEXEC } from './core/dma-buf.js';
export type { ExportInfo, FdOptions, GetOptions, WaitOptions } from './core/dma-buf.js';
export { DmaBufAttachment } from './core/attachment.js';
export type { MapOptions } from './core/attachment.js';
export type { CpuAccess, CpuAccessContext, DmaBufOps, OpContext } from './core/ops.js';
export type { CpuAccessOptions, CpuAccessEndOptions } from './core/cpu-access.js';
export { SgTable } from './core/sg-table.js';
export type { SgSegment } from './core/sg-table.js';
export { Device, collateConstraints, forgetOnLastDetach, planSegments, BASE_PAGE_SIZE, HUGE_PAGE_SIZE, DEFAULT_CONSTRAINTS } from './core/device.js';
export type { DeviceConstraints, DeviceOptions, DeviceMapping, DeviceAccess, MapMemoryRequest, SegmentPlan } from './core/device.js';
export type { MemoryObject } from './core/memory.js';
export type { DmaDirection } from './core/direction.js';
export { DmaBufError } from './core/errors.js';
export type { DmaBufErrorCode, DmaBufErrorOptions } from './core/errors.js';
export { SystemHeap, systemHeap, hugePagesAvailable } from './heaps/system.js';
export type { AllocateOptions, Heap, StorageInfo, SystemBufferPriv } from './heaps/system.js';
export { CpuDevice } from './devices/cpu.js';
export { available, unavailableReason, viewsUncounted, countedViewsReason } from './native/binding.js';
// Descriptor-passing helpers (issue 3): buffer channels, servers, worker threads.
export { BufferChannel, CHANNEL_RECV_MAX_BYTES, CHANNEL_RECV_MAX_FDS } from './share/channel.js';
export type { ChannelOperationOptions, ConnectOptions, ReceivedBuffer, ReceivedFd } from './share/channel.js';
export { BufferServer } from './share/server.js';
export type { ListenOptions, AcceptOptions } from './share/server.js';
export { postBuffer, isBufferMessage, receiveBuffer, receiveBufferFd, BUFFER_MESSAGE_MARKER } from './share/worker.js';
export type { BufferMessage, MessageTarget } from './share/worker.js';
export { encodeChannelMessage, decodeChannelMessage, CHANNEL_MAGIC, CHANNEL_VERSION, CHANNEL_HEADER_SIZE, CHANNEL_MAX_META, ChannelMessageType } from './transport/channel-wire.js';
export type { ChannelMessage } from './transport/channel-wire.js';
export { setServiceLimits, serviceLimits, DEFAULT_SERVICE_LIMITS } from './remote/limits.js';
export type { ServiceLimits } from './remote/limits.js';
export { introspect, type Snapshot, type ExportedSnapshot, type ImportedSnapshot, type AttachmentSnapshot, type StorageSnapshot } from './remote/introspect.js'; // dmabuf info
// Kernel dma-bufs (issue 10): loading src/kernel registers DmaBuf.get's importer of kernel descriptors.
export { describeKernelDescriptor, isKernelBuffer, SyncFile, exportSyncFile, importSyncFile } from './kernel/index.js';
export type { KernelDescriptorInfo, KernelBufferPriv, SyncFileStatus, SyncFileWaitOptions, FenceAccess } from './kernel/index.js';
export { toKernelDmaBuf, udmabufSizeLimit, UDMABUF_PATH } from './heaps/udmabuf.js';
export type { ToKernelOptions } from './heaps/udmabuf.js';
export { DmaHeap, dmaHeap, dmaHeaps, DMA_HEAP_DIR } from './heaps/dma-heap.js';
export { V4l2Capture } from './devices/v4l2/capture.js';
export type { CaptureOptions, CaptureFormat, NextFrameOptions, V4l2Frame } from './devices/v4l2/capture.js';
export { fourcc, fourccName } from './devices/v4l2/fourcc.js';
// Synchronisation (issue 9): fences, timelines, fence files, reservation objects.
export * from './sync/index.js';
