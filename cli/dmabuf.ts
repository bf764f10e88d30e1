#!/usr/bin/env node
/**
 * The `dmabuf` command: `dmabuf demo` runs the demo; `dmabuf help` lists the commands.
 */
import { demo } from './demo.js';
import { DmaBufError } from '../src/index.js';

const usage = `usage: dmabuf <command>

commands:
  demo [--size BYTES]   export a buffer, share it between two CPU devices, print each step
  help                  this text`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'demo': {
      let size: number | undefined;
      for (let i = 0; i < rest.length; i++) {
        if (rest[i] === '--size') size = Number(rest[++i]);
        else { console.error(`dmabuf demo: unknown option ${rest[i]}\n${usage}`); return 2; }
      }
      if (size !== undefined && (!Number.isSafeInteger(size) || size <= 0)) {
        console.error('dmabuf demo: --size must be a positive integer');
        return 2;
      }
      await demo(size === undefined ? {} : { size });
      return 0;
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
