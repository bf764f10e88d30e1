/**
 * What vivid's default test pattern (75% colour bars, YUYV, limited range BT.601) looks like
 * below its on-screen text: eight vertical bars, white to black, with these Y, Cb, Cr.
 */

/** [Y, Cb, Cr] of the eight bars, left to right, as vivid draws them (measured on Linux 6.12). */
export const VIVID_BARS: ReadonlyArray<readonly [number, number, number]> = [
  [179, 128, 128], // white (75%)
  [160, 44, 141], // yellow
  [130, 156, 44], // cyan
  [111, 72, 58], // green
  [83, 183, 197], // magenta
  [64, 99, 211], // red
  [34, 211, 114], // blue
  [16, 128, 128], // black
];

/**
 * [Y, Cb, Cr] at the middle of each bar, on the line 3/4 down a YUYV frame (the text vivid
 * draws stays in the top lines).
 */
export function sampleBars(frame: Uint8Array, width: number, height: number, bytesPerLine: number): Array<[number, number, number]> {
  const line = Math.floor((height * 3) / 4) * bytesPerLine;
  const out: Array<[number, number, number]> = [];
  for (let bar = 0; bar < 8; bar++) {
    const x = Math.floor(((bar + 0.5) * width) / 8) & ~1; // a macropixel's first pixel
    const p = line + x * 2;
    out.push([frame[p]!, frame[p + 1]!, frame[p + 3]!]);
  }
  return out;
}

/** Whether every sample is within `tolerance` of the bars. */
export function looksLikeBars(samples: ReadonlyArray<readonly number[]>, tolerance = 4): boolean {
  return samples.length === 8 && samples.every((s, i) => s.every((v, j) => Math.abs(v - VIVID_BARS[i]![j]!) <= tolerance));
}

/** FNV-1a over the bytes (to compare what two processes read). */
export function fnv1a(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193) >>> 0;
  return h;
}
