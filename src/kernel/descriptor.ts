/**
 * Recognising a kernel dma-buf descriptor and reading what the kernel tells about it.
 *
 * A kernel dma-buf is a file of the kernel's `dmabuf` pseudo file system: `/proc/self/fd/N`
 * reads `/dmabuf:<name>` (Linux 5.3 and later; `anon_inode:dmabuf` before), and
 * `/proc/self/fdinfo/N` lists `size`, `exp_name` (the exporter: `udmabuf`, `system` for the
 * dma-heap, `drm` for DRM/GEM drivers, `videobuf2_vmalloc` for V4L2, ...), `ino`, `flags`
 * and, once set, `name`. Only dma-bufs print `exp_name`, so fdinfo decides; the link is the
 * fallback where fdinfo cannot be read.
 *
 * @module
 */
import { readFileSync, readlinkSync } from 'node:fs';
import { native, type StatResult } from '../native/binding.js';
import { statKey } from '../transport/buffer-file.js';

/** What the kernel tells about a dma-buf descriptor. */
export interface KernelDescriptorInfo {
  /** `dev:ino` of the dma-buf's file: the same for every descriptor of the buffer. */
  readonly key: string;
  /** The dma-buf's inode number (fdinfo `ino`): unique per buffer while it lives. */
  readonly inode: number;
  /** Size in bytes (fdinfo `size`, else `fstat`). */
  readonly size: number;
  /** The exporter (fdinfo `exp_name`), or `'unknown'` where fdinfo cannot be read. */
  readonly exporter: string;
  /** The name set with `DMA_BUF_SET_NAME` (fdinfo `name`, or the link's suffix), else `''`. */
  readonly name: string;
  /** Whether the descriptor was opened read-only (`O_RDONLY`): it can only be mapped for reading. */
  readonly readOnly: boolean;
}

const LINK_PREFIX = '/dmabuf:';
const OLD_LINK = 'anon_inode:dmabuf';

function readFdinfo(fd: number): Map<string, string> | null {
  let text: string;
  try {
    text = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  } catch {
    return null;
  }
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  return fields;
}

function readLink(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return '';
  }
}

/**
 * Describes `fd` when it is a kernel dma-buf, else returns null (a socket, a regular file, a
 * pipe, any other device). `st` is the descriptor's `fstat` when the caller has it.
 *
 * @throws {DmaBufError} `EBADF` when `fd` is not open (from `fstat`).
 * @example
 * ```ts
 * const info = describeKernelDescriptor(fd);
 * if (info) console.log(info.exporter, info.size);
 * ```
 */
export function describeKernelDescriptor(fd: number, st: StatResult = native.fstat(fd)): KernelDescriptorInfo | null {
  const c = native.constants;
  if ((st.mode & c.S_IFMT) === c.S_IFSOCK || (st.mode & c.S_IFMT) === c.S_IFIFO) return null;
  const fdinfo = readFdinfo(fd);
  const expName = fdinfo?.get('exp_name');
  let link: string | null = null;
  if (expName === undefined) {
    link = readLink(fd);
    if (fdinfo !== null || !(link.startsWith(LINK_PREFIX) || link === OLD_LINK)) return null;
  }
  const number = (key: string, fallback: number): number => {
    const v = Number(fdinfo?.get(key));
    return Number.isSafeInteger(v) && v >= 0 ? v : fallback;
  };
  const flags = parseInt(fdinfo?.get('flags') ?? '2', 8);
  let name = fdinfo?.get('name');
  if (name === undefined) {
    link ??= readLink(fd);
    name = link.startsWith(LINK_PREFIX) ? link.slice(LINK_PREFIX.length) : '';
  }
  return {
    key: statKey(st),
    inode: number('ino', Number(st.ino)),
    size: number('size', st.size),
    exporter: expName ?? 'unknown',
    name,
    readOnly: (flags & native.kernelConstants.O_ACCMODE) === native.kernelConstants.O_RDONLY,
  };
}
