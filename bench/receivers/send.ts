/**
 * The child_process.send receiver (forked with serialization 'advanced'): reads the
 * Uint8Array it is sent (first and last byte, or every byte) and answers with the time.
 */
import { readEnds, sumAll } from './wire.js';

process.on('message', (m: { data: Uint8Array; read: string }) => {
  const [first, last] = readEnds(m.data);
  const sum = m.read === 'all' ? sumAll(m.data) : 0;
  const tRead = process.hrtime.bigint();
  process.send!({ first, last, sum, tRead, offset: m.data.byteOffset });
});
process.on('disconnect', () => process.exit(0));
process.send!({ ready: true });
