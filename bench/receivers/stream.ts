/**
 * The Unix socket stream receiver: listens on the path given as argument; each message is a
 * 24-byte header (size u64, t0 u64, read-all u32) and `size` bytes, assembled into one
 * buffer (what a user of a stream does), then read; answers 16 bytes (tRead u64, first,
 * last).
 */
import net from 'node:net';
import { readEnds, sumAll } from './wire.js';

const server = net.createServer((sock) => {
  let header: Buffer | null = null;
  let pending: Buffer = Buffer.alloc(0);
  let buf: Buffer | null = null;
  let filled = 0;
  let all = false;
  sock.on('data', (chunk: Buffer) => {
    let d = chunk;
    while (d.length > 0) {
      if (!buf) {
        pending = pending.length ? Buffer.concat([pending, d]) : d;
        if (pending.length < 24) return;
        header = pending.subarray(0, 24);
        const size = Number(header.readBigUInt64LE(0));
        all = header.readUInt32LE(16) === 1;
        buf = Buffer.allocUnsafeSlow(size);
        filled = 0;
        d = pending.subarray(24);
        pending = Buffer.alloc(0);
        continue;
      }
      const n = Math.min(d.length, buf.length - filled);
      d.copy(buf, filled, 0, n);
      filled += n;
      d = d.subarray(n);
      if (filled === buf.length) {
        const [first, last] = readEnds(buf);
        if (all) sumAll(buf);
        const tRead = process.hrtime.bigint();
        const reply = Buffer.alloc(16);
        reply.writeBigUInt64LE(tRead, 0);
        reply[8] = first;
        reply[9] = last;
        sock.write(reply);
        buf = null;
      }
    }
  });
  sock.on('end', () => { sock.end(); server.close(); });
});
server.listen(process.argv[2], () => process.stdout.write('ready\n'));
