#!/usr/bin/env node
/**
 * The `dmabuf` command: `dmabuf demo` runs the demo; `dmabuf help` lists the commands.
 */
import { demo } from './demo.js';
import { tour } from './tour.js';
import { DmaBufError } from '../src/index.js';

const usage = `usage: dmabuf <command>

commands:
  demo [--frame-size BYTES] [--seconds S] [--pool N]
                        frames to a worker and a child process, zero-copy vs copies
  tour [--size BYTES]   one buffer, step by step: export, fd, get, attach, map, share, release
  info [--pid PID] [--json | --csv]
                        list the buffers on this machine (this project's and the kernel's)
  help                  this text`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'demo': {
      const opts: { frameSize?: number; seconds?: number; pool?: number } = {};
      for (let i = 0; i < rest.length; i++) {
        const flag = rest[i];
        const value = Number(rest[++i]);
        const key = flag === '--frame-size' ? 'frameSize' : flag === '--seconds' ? 'seconds' : flag === '--pool' ? 'pool' : null;
        if (!key || !(value > 0) || (key !== 'seconds' && !Number.isSafeInteger(value))) {
          console.error(`dmabuf demo: bad option ${flag ?? ''} ${rest[i] ?? ''}\n${usage}`);
          return 2;
        }
        opts[key] = value;
      }
      await demo(opts);
      return 0;
    }
    case 'tour': {
      let size: number | undefined;
      for (let i = 0; i < rest.length; i++) {
        if (rest[i] === '--size') size = Number(rest[++i]);
        else { console.error(`dmabuf tour: unknown option ${rest[i]}\n${usage}`); return 2; }
      }
      if (size !== undefined && (!Number.isSafeInteger(size) || size <= 0)) {
        console.error('dmabuf tour: --size must be a positive integer');
        return 2;
      }
      await tour(size === undefined ? {} : { size });
      return 0;
    }
    case 'info': { // dmabuf info (cli/info.ts)
      const { info } = await import('./info.js');
      return info(rest);
    }
    case 'help': case '--help': case '-h': case undefined:
      console.log(usage);
      return cmd === undefined ? 2 : 0;
    default:
      console.error(`dmabuf: unknown command ${cmd}\n${usage}`);
      return 2;
  }
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (err: unknown) => {
  if (err instanceof DmaBufError) console.error(`dmabuf: ${err.message} (${err.code})`);
  else console.error(err);
  process.exitCode = 1;
});
