/**
 * Backing memory as exporters hand it to devices.
 *
 * @module
 */

/**
 * A piece of backing storage: a sealed memfd that a device maps. Exporters create them;
 * devices map them and may cache their mappings until the memory is invalidated.
 */
export interface MemoryObject {
  /** Unique in this thread; a new storage (after a migration) gets a new id. */
  readonly id: number;
  /** The memfd; owned by the exporter, valid until the memory is invalidated for good. */
  readonly fd: number;
  /** Bytes of storage (the buffer's size rounded up to {@link pageSize}). */
  readonly size: number;
  /** Page size of the storage: 4096, or 2 MiB for hugetlb storage. */
  readonly pageSize: number;
  /** Whether the storage is sealed against writes: only read mappings are possible. */
  readonly writeSealed: boolean;
  /**
   * Whether the memory can only be mapped shared (`MAP_SHARED`), as a kernel dma-buf, whose
   * exporters refuse private mappings. Absent means false.
   */
  readonly sharedOnly?: boolean;
  /**
   * Registers `drop`, called when cached mappings of this memory must go (before a migration,
   * a seal or the release). Returns a function that unregisters it.
   */
  onInvalidate(drop: () => void): () => void;
}

/**
 * The callbacks registered with {@link MemoryObject.onInvalidate}, for exporters' memory
 * objects: {@link add} is `onInvalidate`; {@link run} calls them all once and forgets them.
 */
export class Invalidations {
  #drops = new Set<() => void>();

  /** Registers `drop`; returns a function that unregisters it. */
  add(drop: () => void): () => void {
    this.#drops.add(drop);
    return () => this.#drops.delete(drop);
  }

  /** Calls every registered callback, then forgets them. */
  run(): void {
    const drops = [...this.#drops];
    this.#drops.clear();
    for (const drop of drops) drop();
  }
}
