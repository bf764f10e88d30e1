/**
 * The `dmabuf` command line, run as a user runs it: --help and --version, the `=` form,
 * conflicting flags, and usage errors with exit code 2.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const CLI = path.join(ROOT, 'dist', 'cli', 'dmabuf.js');

function dmabuf(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['--no-warnings', CLI, ...args], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function assertUsageError(r: ReturnType<typeof dmabuf>, pattern: RegExp): void {
  assert.equal(r.status, 2, `exit 2 expected: ${r.stderr}`);
  assert.match(r.stderr, pattern);
  assert.match(r.stderr, /^usage: dmabuf/m);
  assert.equal(r.stdout, '');
}

test('dmabuf --help lists every command with its options, info --timeout included; exit 0', () => {
  const r = dmabuf('--help');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /demo +\[--frame-size BYTES\] \[--seconds S\] \[--pool N\]/);
  assert.match(r.stdout, /tour +\[--size BYTES\]/);
  assert.match(r.stdout, /info +\[--pid PID\] \[--json \| --csv\] \[--timeout MS\]/);
  assert.equal(dmabuf('help').stdout, r.stdout);
  assert.equal(dmabuf('-h').stdout, r.stdout);
});

test('dmabuf --version prints the package version', () => {
  const { version } = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
  const r = dmabuf('--version');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), version);
});

test('every command takes --help (exit 0, its usage on stdout); help COMMAND says the same', () => {
  for (const command of ['demo', 'tour', 'info']) {
    const r = dmabuf(command, '--help');
    assert.equal(r.status, 0, `${command} --help: ${r.stderr}`);
    assert.match(r.stdout, new RegExp(`^usage: dmabuf ${command}`));
    assert.match(r.stdout, /-h, --help/);
    assert.equal(dmabuf('help', command).stdout, r.stdout);
    assert.equal(dmabuf(command, '-h').stdout, r.stdout);
  }
});

test('options take the = form: tour --size=65536', () => {
  const r = dmabuf('tour', '--size=65536');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\(64\.0 KiB\)/);
  assert.match(r.stdout, /released=true/);
});

test('info --json --csv is refused, not silently one of them', () => {
  assertUsageError(dmabuf('info', '--json', '--csv'), /--json and --csv cannot be used together/);
});

test('usage errors exit 2 with the message and the usage line', () => {
  assertUsageError(dmabuf(), /a command is needed/);
  assertUsageError(dmabuf('nope'), /unknown command "nope"/);
  assertUsageError(dmabuf('--bogus'), /Unknown option '--bogus'/);
  assertUsageError(dmabuf('help', 'nope'), /no command "nope"/);
  assertUsageError(dmabuf('demo', '--seconds=x'), /--seconds needs a positive number/);
  assertUsageError(dmabuf('demo', '--pool', '0'), /--pool needs a positive integer/);
  assertUsageError(dmabuf('tour', '--size'), /argument missing/);
  assertUsageError(dmabuf('tour', '--size=1.5'), /--size needs a positive integer/);
  assertUsageError(dmabuf('tour', 'extra'), /unexpected argument 'extra'/);
  assertUsageError(dmabuf('info', '--pid=abc'), /--pid needs a positive integer/);
  assertUsageError(dmabuf('info', '--timeout'), /argument missing/);
  assertUsageError(dmabuf('info', '--json=yes'), /does not take an argument/);
});
