/**
 * The command-line convention of `dmabuf` and of the benchmarks, on `node:util` `parseArgs`:
 *
 * - options are `--name VALUE` or `--name=VALUE`; flags are `--name`;
 * - every command takes `--help` (`-h`): its usage on stdout, exit 0;
 * - an unknown option, a stray argument, a missing or bad value, or two options that
 *   exclude each other (`info --json --csv`) is a {@link UsageError}: the message and the
 *   usage line on stderr, exit 2;
 * - any other failure exits with 1.
 *
 * @module
 */
import { parseArgs } from 'node:util';
import { DmaBufError } from '../src/core/errors.js';

/** A mistake on the command line. The command prints it with its usage and exits with 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** One option of a command, as `parseArgs` takes it. */
export interface OptionSpec {
  type: 'string' | 'boolean';
  short?: string;
}

/** The options of a command, by long name (without `--`). */
export type OptionSpecs = Record<string, OptionSpec>;

type WithHelp<O extends OptionSpecs> = O & { help: { type: 'boolean'; short: 'h' } };

/** What {@link parseOptions} returns: a string or `true` per given option (`help` included). */
export type OptionValues<O extends OptionSpecs> = ReturnType<
  typeof parseArgs<{ args: string[]; options: WithHelp<O>; strict: true; allowPositionals: false }>
>['values'];

/**
 * Parses `argv` strictly: only the given options (plus `--help`), no positional arguments.
 * `exclusive` lists groups of options of which at most one may be given.
 *
 * @throws {UsageError} for an unknown option, a stray argument, a string option without a
 *   value, a flag with one (`--json=1`), or two options of one exclusive group.
 * @example
 * ```ts
 * const v = parseOptions(['--json', '--pid=42'], { json: { type: 'boolean' }, csv: { type: 'boolean' }, pid: { type: 'string' } }, [['json', 'csv']]);
 * // v.json === true, v.pid === '42'
 * ```
 */
export function parseOptions<const O extends OptionSpecs>(
  argv: readonly string[],
  options: O,
  exclusive: ReadonlyArray<ReadonlyArray<(keyof O & string) | 'help'>> = [],
): OptionValues<O> {
  const specs = { ...options, help: { type: 'boolean', short: 'h' } } as WithHelp<O>;
  let values: OptionValues<O>;
  try {
    ({ values } = parseArgs({ args: [...argv], options: specs, strict: true, allowPositionals: false }));
  } catch (err) {
    throw new UsageError(parseArgsMessage(err));
  }
  const given = values as Record<string, unknown>;
  for (const group of exclusive) {
    const both = group.filter((name) => given[name] !== undefined);
    if (both.length > 1) throw new UsageError(`${both.map((n) => `--${n}`).join(' and ')} cannot be used together`);
  }
  return values;
}

/** `parseArgs`' own message, without its advice about `--` (our commands take no positionals). */
function parseArgsMessage(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return message.replace(/\. To specify a positional argument.*$/s, '').replace(/^Unexpected argument/, 'unexpected argument');
}

/**
 * An integer option at least `min` (default 1), or `undefined` when it was not given.
 *
 * @throws {UsageError} when the value is not such an integer.
 */
export function integerOption(value: string | undefined, flag: string, min = 1): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min) {
    const what = min === 1 ? 'a positive integer' : `an integer of at least ${min}`;
    throw new UsageError(`--${flag} needs ${what}, got ${JSON.stringify(value)}`);
  }
  return n;
}

/**
 * A positive number option (fractions allowed), or `undefined` when it was not given.
 *
 * @throws {UsageError} when the value is not a positive finite number.
 */
export function positiveNumberOption(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n <= 0) {
    throw new UsageError(`--${flag} needs a positive number, got ${JSON.stringify(value)}`);
  }
  return n;
}

/** A subcommand of `dmabuf`. */
export interface Command {
  /** The name typed after `dmabuf`. */
  name: string;
  /** Its options, for the list of commands: `[--size BYTES]`. */
  synopsis: string;
  /** One line: what it does. */
  summary: string;
  /** The full text `--help` prints. */
  usage: string;
  /** Runs it with the arguments after its name; resolves to the exit code. May throw {@link UsageError}. */
  run(argv: string[]): Promise<number>;
}

/**
 * Runs a command's body the conventional way: a {@link UsageError} prints `prog: message`,
 * the usage's first line and a pointer to `--help` on stderr and gives 2; a
 * {@link DmaBufError} prints its message and code and gives 1; anything else is printed
 * whole and gives 1.
 */
export async function runCommand(prog: string, usage: string, body: () => Promise<number> | number): Promise<number> {
  try {
    return await body();
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`${prog}: ${err.message}\n${usage.split('\n')[0]}\n(--help says more)`);
      return 2;
    }
    if (err instanceof DmaBufError) console.error(`${prog}: ${err.message} (${err.code})`);
    else console.error(err);
    return 1;
  }
}
