/**
 * Where higher layers plug into the core. The core knows nothing of other threads, processes
 * or kernel objects; the layers that do (the cross-process importer and service in
 * `src/remote/`, kernel dma-bufs in `src/kernel/`, `dmabuf info`) register here when the
 * package root loads, and the core calls them at three points:
 *
 * - a buffer object was created in this thread (exported or imported): `onCreate`;
 * - a message arrived through the file of a buffer this thread exported: `onFileMessage`;
 * - `DmaBuf.get` of a descriptor that is not the file of a buffer of this thread:
 *   `importers`, tried in order of registration until one claims the descriptor.
 *
 * @module
 * @internal
 */
import type { DmaBuf, GetOptions } from './dma-buf.js';
import type { Device } from './device.js';
import type { DmaDirection } from './direction.js';
import type { StatResult } from '../native/binding.js';

/** An attach and a map the caller wants along with a get (`DmaBuf.getMapped`). */
export interface Prefetch {
  readonly device: Device;
  readonly direction: DmaDirection;
}

/** What `DmaBuf.get` knows of a descriptor before it asks the importers. */
export interface ForeignDescriptor {
  readonly fd: number;
  /** `fstat` of the descriptor. */
  readonly stat: StatResult;
  /** `dev:ino`, the registry's key. */
  readonly key: string;
  /** The live buffer of this thread with this key, if one appeared meanwhile. */
  lookup(): DmaBuf | undefined;
}

/**
 * Turns a descriptor into a buffer of this thread. Returns `undefined` when the descriptor is
 * not of its kind (the next importer is tried); throws a {@link DmaBufError} when it is of its
 * kind but the import fails.
 */
export type DescriptorImporter = (desc: ForeignDescriptor, options: GetOptions, prefetch: Prefetch | undefined) => Promise<DmaBuf | undefined> | DmaBuf | undefined;

/** The hooks; see the module description. */
export interface CoreHooks {
  onCreate: ((buf: DmaBuf) => void)[];
  /** `cred`: the sender as the kernel recorded it (`SCM_CREDENTIALS`), null if unknown. */
  onFileMessage: ((buf: DmaBuf, data: Buffer, fds: number[], flags: number, cred: { pid: number; uid: number; gid: number } | null) => void) | null;
  importers: DescriptorImporter[];
}

/** The registered hooks (one set per thread: every thread loads its own copy of the package). */
export const hooks: CoreHooks = { onCreate: [], onFileMessage: null, importers: [] };

/** Registers an importer of foreign descriptors (tried after those registered before it). */
export function registerImporter(importer: DescriptorImporter): void {
  if (!hooks.importers.includes(importer)) hooks.importers.push(importer);
}
