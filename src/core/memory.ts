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
   * Registers `drop`, called when cached mappings of this memory must go (before a migration,
   * a seal or the release). Returns a function that unregisters it.
   */
  onInvalidate(drop: () => void): () => void;
}
