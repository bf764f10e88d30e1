#!/usr/bin/env node
/**
 * The `dmabuf` command: `dmabuf <command> [options]`. Each command takes `--help`; usage
 * mistakes exit with 2 (see `cli/args.ts` for the convention), failures with 1.
 */
import { readFileSync } from 'node:fs';
import { demoCommand } from './demo.js';
import { tourCommand } from './tour.js';
import { infoCommand } from './info.js';
import { UsageError, parseOptions, runCommand, type Command } from './args.js';

const commands: readonly Command[] = [demoCommand, tourCommand, infoCommand];

function usage(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  const lines = commands.flatMap((c) => [
    `  ${c.name.padEnd(width)}  ${c.synopsis}`,
    `  ${' '.repeat(width)}    ${c.summary}`,
  ]);
  return `usage: dmabuf <command> [options]
       dmabuf --help | --version

commands:
${lines.join('\n')}
  ${'help'.padEnd(width)}  [COMMAND]
  ${' '.repeat(width)}    this text, or a command's

Every command takes --help. Options take their value as --name VALUE or --name=VALUE.`;
}

/** The package's version, from its package.json (dist/cli -> the package root). */
function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function main(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  const command = commands.find((c) => c.name === first);
  if (command) return runCommand(`dmabuf ${command.name}`, command.usage, () => command.run(rest));
  return runCommand('dmabuf', usage(), () => {
    if (first === undefined) throw new UsageError('a command is needed');
    if (first === 'help') {
      const topic = rest[0] === undefined ? undefined : commands.find((c) => c.name === rest[0]);
      if (rest.length > 1 || (rest[0] !== undefined && !topic)) throw new UsageError(`help: no command ${JSON.stringify(rest.join(' '))}`);
      console.log(topic ? topic.usage : usage());
      return 0;
    }
    if (!first.startsWith('-')) throw new UsageError(`unknown command ${JSON.stringify(first)}`);
    const v = parseOptions(argv, { version: { type: 'boolean' } }, [['version', 'help']]);
    if (v.version) console.log(version());
    else console.log(usage());
    return 0;
  });
}

process.exitCode = await main(process.argv.slice(2));
