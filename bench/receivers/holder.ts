/**
 * The memory case's copy holder: on "fill SIZE" (stdin), allocates a Buffer of SIZE bytes,
 * fills it (every page exists) and says "filled"; exits when stdin ends.
 */
import { createInterface } from 'node:readline';

let held: Buffer | null = null;
const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const m = /^fill (\d+)$/.exec(line.trim());
  if (m) {
    held = Buffer.alloc(Number(m[1]), 0x2a);
    process.stdout.write(`filled ${held.length}\n`);
  }
});
lines.on('close', () => process.exit(0));
process.stdout.write('ready\n');
