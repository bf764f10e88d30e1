/**
 * The command-line convention (cli/args.ts) and the benchmarks' options, which follow it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError, integerOption, parseOptions, positiveNumberOption, runCommand } from '../../cli/args.js';
import { FULL_SIZES, QUICK_SIZES, parseArgs as parseBenchArgs } from '../../bench/harness.js';

const specs = { json: { type: 'boolean' }, csv: { type: 'boolean' }, pid: { type: 'string' } } as const;

function usageError(pattern: RegExp) {
  return (e: unknown): boolean => e instanceof UsageError && pattern.test(e.message);
}

test('parseOptions takes --name VALUE, --name=VALUE and flags; --help and -h are always known', () => {
  assert.deepEqual({ ...parseOptions(['--pid', '42', '--json'], specs) }, { pid: '42', json: true });
  assert.deepEqual({ ...parseOptions(['--pid=42'], specs) }, { pid: '42' });
  assert.equal(parseOptions(['--help'], specs).help, true);
  assert.equal(parseOptions(['-h'], specs).help, true);
  assert.deepEqual({ ...parseOptions([], specs) }, {});
});

test('parseOptions refuses unknown options, stray arguments, missing values, valued flags and conflicts', () => {
  assert.throws(() => parseOptions(['--nope'], specs), usageError(/Unknown option '--nope'/));
  assert.throws(() => parseOptions(['extra'], specs), usageError(/unexpected argument 'extra'/));
  assert.throws(() => parseOptions(['--pid'], specs), usageError(/argument missing/));
  assert.throws(() => parseOptions(['--json=1'], specs), usageError(/does not take an argument/));
  assert.throws(() => parseOptions(['--json', '--csv'], specs, [['json', 'csv']]), usageError(/--json and --csv cannot be used together/));
  assert.deepEqual({ ...parseOptions(['--csv'], specs, [['json', 'csv']]) }, { csv: true });
});

test('integerOption and positiveNumberOption accept what they promise and refuse the rest', () => {
  assert.equal(integerOption(undefined, 'n'), undefined);
  assert.equal(integerOption('4096', 'n'), 4096);
  assert.equal(integerOption('10', 'n', 10), 10);
  for (const bad of ['0', '-1', '1.5', 'x', '', '1e3', '9007199254740993']) {
    assert.throws(() => integerOption(bad, 'n'), usageError(/--n needs a positive integer/), bad);
  }
  assert.throws(() => integerOption('9', 'frames', 10), usageError(/at least 10/));
  assert.equal(positiveNumberOption('0.5', 's'), 0.5);
  assert.equal(positiveNumberOption(undefined, 's'), undefined);
  for (const bad of ['0', '-2', 'x', '', 'Infinity']) assert.throws(() => positiveNumberOption(bad, 's'), usageError(/positive number/), bad);
});

test('runCommand: a usage error gives 2, a thrown error 1, a result its own code', async () => {
  const errors: string[] = [];
  const original = console.error;
  console.error = (...a: unknown[]) => { errors.push(a.join(' ')); };
  try {
    assert.equal(await runCommand('prog', 'usage: prog [--x]\nmore', () => { throw new UsageError('bad x'); }), 2);
    assert.equal(await runCommand('prog', 'usage: prog', () => { throw new Error('boom'); }), 1);
    assert.equal(await runCommand('prog', 'usage: prog', async () => 0), 0);
  } finally {
    console.error = original;
  }
  assert.match(errors[0]!, /^prog: bad x\nusage: prog \[--x\]\n\(--help says more\)$/);
  assert.match(errors[1]!, /boom/);
});

test('the benchmarks parse their options the same way', () => {
  assert.equal(parseBenchArgs(['--help']), null);
  const full = parseBenchArgs([])!;
  assert.deepEqual([full.quick, full.sizes, full.reps, full.frames, full.repsGiven], [false, FULL_SIZES, 7, 3000, false]);
  const quick = parseBenchArgs(['--quick', '--sizes=1M,4K', '--reps', '2', '--only=handoff,memory', '--frames=50'])!;
  assert.deepEqual([quick.sizes, quick.reps, quick.only, quick.frames, quick.repsGiven], [[4096, 1 << 20], 2, ['handoff', 'memory'], 50, true]);
  assert.match(quick.out, /bench[/]results[/]tmp$/);
  assert.deepEqual(parseBenchArgs(['--quick'])!.sizes, QUICK_SIZES);
  assert.throws(() => parseBenchArgs(['--reps=0']), usageError(/--reps/));
  assert.throws(() => parseBenchArgs(['--frames', '5']), usageError(/at least 10/));
  assert.throws(() => parseBenchArgs(['--only', 'nope']), usageError(/unknown case "nope"/));
  assert.throws(() => parseBenchArgs(['--sizes=1X']), usageError(/bad size/));
  assert.throws(() => parseBenchArgs(['--bogus']), usageError(/Unknown option/));
});
