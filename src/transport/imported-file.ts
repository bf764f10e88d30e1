/**
 * An importer's reference to a buffer's file: one descriptor (a `dup` of the one it was
 * given), held while the importer holds the buffer. Knows nothing of buffers.
 *
 * @module
 */
import { native, own, closeOwned } from '../native/binding.js';
import { DmaBufError } from '../core/errors.js';

/** An importer's hold on a buffer's file. */
export class ImportedFile {
  #fd: number;
  /** `dev:ino` of the file. */
  readonly key: string;

  /**
   * Takes its own reference: duplicates `fd` (the caller keeps `fd`), or with `take` takes
   * `fd` itself over (a descriptor just received, close-on-exec, that nobody else holds).
   */
  constructor(fd: number, key: string, take = false) {
    this.#fd = own(take ? fd : native.dup(fd, true));
    this.key = key;
  }

  /** The held descriptor, or -1 once dropped. */
  get fileFd(): number {
    return this.#fd;
  }

  /** A new descriptor of the file, owned by the caller. */
  dup(cloexec: boolean): number {
    if (this.#fd < 0) throw new DmaBufError('EINVAL', 'fd: the buffer holds no reference to its file', { op: 'fd' });
    return native.dup(this.#fd, cloexec);
  }

  /** Takes a reference again from another descriptor of the same file. */
  adoptFile(fd: number): void {
    if (this.#fd < 0) this.#fd = own(native.dup(fd, true));
  }

  /** Drops the reference; for an importer the buffer is then done. */
  dropFile(): boolean {
    this.close();
    return true;
  }

  /** Whether the reference is dropped. */
  checkEof(): boolean {
    return this.#fd < 0;
  }

  /** Closes the descriptor (idempotent). */
  close(): void {
    if (this.#fd >= 0) {
      closeOwned(this.#fd);
      this.#fd = -1;
    }
  }
}
