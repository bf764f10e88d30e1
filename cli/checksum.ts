/**
 * The demo's frame checksum: a 32-bit FNV-style fold of the frame's 32-bit words (and tail
 * bytes). Every byte counts, so a consumer that checks it has read the whole frame.
 */
export function checksum(bytes: Uint8Array): number {
  const n = bytes.byteLength >>> 2;
  let h = 0x811c9dc5;
  if (bytes.byteOffset % 4 === 0) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, n);
    for (let i = 0; i < n; i++) h = Math.imul(h ^ words[i]!, 0x01000193);
  } else {
    // Same little-endian words, read unaligned (a message's bytes may start anywhere).
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) h = Math.imul(h ^ dv.getUint32(i * 4, true), 0x01000193);
  }
  for (let i = n << 2; i < bytes.byteLength; i++) h = Math.imul(h ^ bytes[i]!, 0x01000193);
  return h >>> 0;
}

/** Fills a frame with a pattern that depends on the frame number (cheap, not constant). */
export function paint(bytes: Uint8Array, frame: number): void {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  const step = 4096 >>> 2;
  // Change one word per page and a stripe at the start: enough to make every frame distinct.
  for (let i = 0; i < words.length; i += step) words[i] = (frame * 2654435761 + i) >>> 0;
  words.fill(frame, 0, Math.min(words.length, 1024));
}

/**
 * Seals a painted frame: its last 4 bytes become the checksum of the bytes before them, so
 * that a reader can tell a whole frame from a torn one without being told the checksum.
 */
export function seal(bytes: Uint8Array): void {
  const end = bytes.byteLength - 4;
  new DataView(bytes.buffer, bytes.byteOffset + end, 4).setUint32(0, checksum(bytes.subarray(0, end)), true);
}

/**
 * Whether `bytes` holds frame `frame`, whole: painted for that frame (its first word, see
 * {@link paint}) and sealed (see {@link seal}).
 */
export function verifySealed(bytes: Uint8Array, frame: number): boolean {
  const end = bytes.byteLength - 4;
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return dv.getUint32(0, true) === frame >>> 0 && dv.getUint32(end, true) === checksum(bytes.subarray(0, end));
}
