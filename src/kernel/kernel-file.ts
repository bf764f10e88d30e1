/**
 * The reference a kernel dma-buf's buffer object holds on the kernel's file: one descriptor
 * of its own (a `dup` of the one it was given, or one it was handed), as `dma_buf_get` takes a
 * reference on the file.
 *
 * The descriptor stays open while the buffer is attached, even after the last `put`: in the
 * kernel an attachment holds the buffer too. It is closed when the buffer is released.
 *
 * @module
 */
import { native, own, closeOwned } from '../native/binding.js';
import { DmaBufError } from '../core/errors.js';
import type { FileRef } from '../core/dma-buf.js';

/** This thread's hold on a kernel dma-buf's file. */
export class KernelFile implements FileRef {
  #fd: number;
  #dropped = false;
  /** `dev:ino` of the dma-buf's file. */
  readonly key: string;

  /**
   * Holds `fd`: a `dup` of it (the caller keeps `fd`), or `fd` itself with `adopt` (the
   * caller hands it over).
   */
  constructor(fd: number, key: string, adopt: boolean) {
    this.#fd = own(adopt ? fd : native.dup(fd, true));
    this.key = key;
  }

  /** The held descriptor, for mmap and ioctls; -1 once released. */
  get fd(): number {
    return this.#fd;
  }

  /** A new descriptor of the dma-buf, owned by the caller. */
  dup(cloexec: boolean): number {
    if (this.#fd < 0 || this.#dropped) {
      throw new DmaBufError('EINVAL', 'fd: the buffer holds no reference to its kernel dma-buf', { op: 'fd' });
    }
    return native.dup(this.#fd, cloexec);
  }

  /** Takes the reference again (a `get` after the last `put`). */
  adoptFile(fd: number): void {
    this.#dropped = false;
    if (this.#fd < 0) this.#fd = own(native.dup(fd, true));
  }

  /** The last `put`: the descriptor closes at release, once no attachment holds the buffer. */
  dropFile(): boolean {
    this.#dropped = true;
    return true;
  }

  /** Whether this thread's references are all put. */
  checkEof(): boolean {
    return this.#dropped || this.#fd < 0;
  }

  /** Closes the descriptor (idempotent). */
  close(): void {
    if (this.#fd >= 0) {
      closeOwned(this.#fd);
      this.#fd = -1;
    }
  }
}
