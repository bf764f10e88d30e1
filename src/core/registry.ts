/**
 * The buffers exported by this thread, by the key of their file (`dev:ino`), so that `get` of
 * one of their descriptors in this thread returns the very same object.
 *
 * @module
 */

/** What the registry holds: anything with a file key. */
export interface Registered {
  readonly key: string;
}

const byKey = new Map<string, Registered>();

/** Adds a buffer. */
export function register(entry: Registered): void {
  byKey.set(entry.key, entry);
}

/** Removes a buffer (at release). */
export function unregister(entry: Registered): void {
  if (byKey.get(entry.key) === entry) byKey.delete(entry.key);
}

/** The buffer of this thread whose file has this key. */
export function lookup(key: string): Registered | undefined {
  return byKey.get(key);
}

/** Every buffer exported by this thread and not yet released. */
export function registered(): Registered[] {
  return [...byKey.values()];
}
