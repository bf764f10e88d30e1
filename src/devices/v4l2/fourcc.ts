/**
 * V4L2 pixel formats as four-character codes (`'YUYV'`, `'RGB3'`, `'NV12'`, ...).
 *
 * @module
 */
import { DmaBufError } from '../../core/errors.js';

/**
 * The number of a four-character code, as `v4l2_fourcc(a, b, c, d)`.
 *
 * @throws {DmaBufError} `EINVAL` for anything but four ASCII characters.
 * @example
 * ```ts
 * fourcc('YUYV'); // 0x56595559
 * ```
 */
export function fourcc(code: string): number {
  if (typeof code !== 'string' || !/^[\x20-\x7e]{4}$/.test(code)) {
    throw new DmaBufError('EINVAL', `fourcc: a pixel format is four ASCII characters (e.g. 'YUYV'), got ${JSON.stringify(code)}`, { op: 'fourcc' });
  }
  return (code.charCodeAt(0) | (code.charCodeAt(1) << 8) | (code.charCodeAt(2) << 16) | (code.charCodeAt(3) << 24)) >>> 0;
}

/**
 * The four characters of a pixel format number.
 *
 * @example
 * ```ts
 * fourccName(0x56595559); // 'YUYV'
 * ```
 */
export function fourccName(value: number): string {
  return String.fromCharCode(value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff);
}
