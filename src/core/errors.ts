/**
 * The one error type of the project.
 *
 * Every failure of every call is a {@link DmaBufError} with a stable {@link DmaBufError.code}
 * (an errno name where one fits, as the kernel's dma-buf returns `-EINVAL`, `-EBADF`, ...),
 * the operation that failed, and a message a person can act on. Where a system call failed,
 * `syscall` and `errno` say which and how.
 *
 * @module
 */

/** Stable error codes. See `docs/errors.md` for when each occurs. */
export type DmaBufErrorCode =
  | 'EINVAL'
  | 'EBADF'
  | 'EBUSY'
  | 'EINTR'
  | 'ENOMEM'
  | 'ENODEV'
  | 'EACCES'
  | 'EPERM'
  | 'ENOTTY'
  | 'EMFILE'
  | 'EPIPE'
  | 'ECONNRESET'
  | 'EPROTO'
  | 'EMSGSIZE'
  | 'EAGAIN'
  | 'EIO'
  | 'ERANGE'
  | 'ENOTSUP'
  | 'ETIMEDOUT'
  | 'ESHUTDOWN'
  | 'EFBIG'
  | 'ENOSPC'
  | (string & {});

/** Options of {@link DmaBufError}. */
export interface DmaBufErrorOptions {
  /** The failed system call, when one failed (`'mmap'`, `'sendmsg'`, ...). */
  syscall?: string;
  /** The positive errno number, when a system call failed. */
  errno?: number;
  /** The operation of this library that failed (`'export'`, `'get'`, `'map'`, ...). */
  op?: string;
  /** The underlying error. */
  cause?: unknown;
}

/**
 * A failure of a dma-buf operation.
 *
 * @example
 * ```ts
 * try { await DmaBuf.get(fd); }
 * catch (err) { if (err instanceof DmaBufError && err.code === 'EBADF') console.log('closed'); }
 * ```
 */
export class DmaBufError extends Error {
  /** Stable code: an errno name (`'EINVAL'`, `'EBADF'`, ...). */
  readonly code: DmaBufErrorCode;
  /** The failed system call, if a system call failed. */
  readonly syscall: string | undefined;
  /** The errno number, if a system call failed. */
  readonly errno: number | undefined;
  /** The library operation that failed. */
  readonly op: string | undefined;

  constructor(code: DmaBufErrorCode, message: string, options: DmaBufErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'DmaBufError';
    this.code = code;
    this.syscall = options.syscall;
    this.errno = options.errno;
    this.op = options.op;
  }

  /** Whether `err` is a {@link DmaBufError}, optionally with the given code. */
  static is(err: unknown, code?: DmaBufErrorCode): err is DmaBufError {
    return err instanceof DmaBufError && (code === undefined || err.code === code);
  }
}

