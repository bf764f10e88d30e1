/**
 * The hook through which `DmaBuf.get` takes descriptors the framework does not own (kernel
 * dma-bufs, for one): a higher layer registers an importer; the core asks every registered
 * importer, in order, before it tries its own sockets, and never imports the layer itself.
 *
 * @module
 */
import type { DmaBuf, GetOptions } from './dma-buf.js';
import type { StatResult } from '../native/binding.js';

/**
 * Called by `DmaBuf.get(fd)` with the descriptor's `fstat`, before the framework's own
 * checks. Returns the buffer, with one more reference taken for the caller (who keeps `fd`),
 * when the descriptor is one it imports; `undefined` to let the next importer (then the
 * framework) decide.
 *
 * Throws: a `DmaBufError` when the descriptor is of its kind but cannot be imported.
 */
export type DescriptorImporter = (fd: number, st: StatResult, options: GetOptions) => DmaBuf | undefined | Promise<DmaBuf | undefined>;

const importers: DescriptorImporter[] = [];

/**
 * Registers an importer of foreign descriptors (once; registering it again does nothing).
 *
 * @example
 * ```ts
 * registerDescriptorImporter((fd, st) => isMine(st) ? wrap(fd) : undefined);
 * ```
 */
export function registerDescriptorImporter(importer: DescriptorImporter): void {
  if (!importers.includes(importer)) importers.push(importer);
}

/** Asks the registered importers in turn; the first buffer returned wins. */
export async function importForeignDescriptor(fd: number, st: StatResult, options: GetOptions): Promise<DmaBuf | undefined> {
  for (const importer of importers) {
    const buf = await importer(fd, st, options);
    if (buf !== undefined) return buf;
  }
  return undefined;
}
