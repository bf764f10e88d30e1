/**
 * Helpers shared by the descriptor-passing helpers (channel, server, worker): Unix socket
 * addresses, abort signals, descriptor arguments. Internal: not exported by the package.
 *
 * @module
 */
import { constants as osConstants } from 'node:os';
import { DmaBufError } from '../core/errors.js';

/** Bytes of `sun_path` in `struct sockaddr_un` on Linux. */
const SUN_PATH_SIZE = 108;

/**
 * Normalises a Unix socket address: a path, or an abstract name given as `'\0name'` or, as
 * `ss(8)` prints them, `'@name'`. Returns the form the addon takes (`'\0name'` or the path).
 *
 * @throws {DmaBufError} `EINVAL` for a non-string, an empty address or name, a path with a
 *   NUL byte; `ENAMETOOLONG` when it does not fit `sun_path` (107 bytes).
 */
export function normalizeAddress(address: unknown, op: string): string {
  if (typeof address !== 'string') {
    throw new DmaBufError('EINVAL', `${op}: the address must be a string (a socket path, or an abstract name starting with "@" or "\\0"), not ${typeof address}`, { op });
  }
  let addr = address;
  if (addr.startsWith('@')) addr = '\0' + addr.slice(1);
  if (addr.length === 0) {
    throw new DmaBufError('EINVAL', `${op}: the address is empty; give a socket path or an abstract name such as "@my-service"`, { op });
  }
  if (addr[0] === '\0') {
    if (addr.length === 1) {
      throw new DmaBufError('EINVAL', `${op}: the abstract name is empty; give a name after "@" (or "\\0")`, { op });
    }
  } else if (addr.includes('\0')) {
    throw new DmaBufError('EINVAL', `${op}: the socket path ${JSON.stringify(address)} contains a NUL byte`, { op });
  }
  const bytes = Buffer.byteLength(addr, 'utf8');
  if (bytes > SUN_PATH_SIZE - 1) {
    throw new DmaBufError('ENAMETOOLONG', `${op}: the address ${displayAddress(addr)} is ${bytes} bytes; a Unix socket address holds at most ${SUN_PATH_SIZE - 1}. Use a shorter path (e.g. under /tmp or $XDG_RUNTIME_DIR) or an abstract name`, { op });
  }
  return addr;
}

/** Whether a normalised address is an abstract name. */
export function isAbstract(address: string): boolean {
  return address.startsWith('\0');
}

/** An address as a person reads it: abstract names as `@name`. */
export function displayAddress(address: string): string {
  return isAbstract(address) ? `"@${address.slice(1)}"` : JSON.stringify(address);
}

/** Checks `options.signal`; returns it (or undefined). */
export function checkSignal(options: unknown, op: string): AbortSignal | undefined {
  if (options === undefined || options === null) return undefined;
  if (typeof options !== 'object') {
    throw new DmaBufError('EINVAL', `${op}: options must be an object, not ${typeof options}`, { op });
  }
  const signal = (options as { signal?: unknown }).signal;
  if (signal === undefined) return undefined;
  if (!(signal instanceof AbortSignal)) {
    throw new DmaBufError('EINVAL', `${op}: options.signal must be an AbortSignal`, { op });
  }
  return signal;
}

/** The `EINTR` error of an aborted operation. */
export function abortError(op: string, signal: AbortSignal, what: string): DmaBufError {
  return new DmaBufError('EINTR', `${op}: aborted ${what}`, { op, cause: signal.reason });
}

/** Checks that `fd` is a plausible descriptor number. */
export function checkFd(fd: unknown, op: string): number {
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) {
    throw new DmaBufError('EBADF', `${op}: ${String(fd)} is not a file descriptor`, { op });
  }
  return fd;
}

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(osConstants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** The errno name of a libuv status (negative errno), e.g. -9 -> 'EBADF'. */
export function uvErrorName(status: number): string {
  return errnoNames.get(-status) ?? 'EIO';
}

/** Yields `next()` until it fails with `EPIPE` (the end of a channel or a server). */
export async function* untilClosed<T>(next: () => Promise<T>): AsyncGenerator<T, void, undefined> {
  for (;;) {
    let item: T;
    try {
      item = await next();
    } catch (err) {
      if (DmaBufError.is(err, 'EPIPE')) return;
      throw err;
    }
    yield item;
  }
}
