import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const cli = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'cli', 'dmabuf.js');
const run = promisify(execFile);

test('dmabuf demo moves frames zero-copy to a worker and a child, verifies them, and compares with copies', async () => {
  const { stdout } = await run(process.execPath, ['--no-warnings', cli, 'demo', '--seconds', '0.5', '--frame-size', '262144', '--pool', '3'], { timeout: 60_000 });
  const row = (mode: string): string[] => {
    const line = stdout.split('\n').find((l) => l.startsWith(`| ${mode} |`));
    assert.ok(line, `a ${mode} row in:\n${stdout}`);
    return line.split('|').slice(1, -1).map((c) => c.trim());
  };
  const zero = row('zero-copy');
  const copy = row('copy');
  assert.ok(Number(zero[2]) > 0 && Number(copy[2]) > 0, 'both pipelines moved frames');
  assert.equal(zero[3], '0 MiB', 'zero-copy copies no frame bytes');
  assert.ok(Number(copy[3]!.split(' ')[0]) > 0, 'the copy pipeline copies frame bytes');
  assert.equal(zero[6], '0');
  assert.equal(copy[6], '0', 'every checksum matched');
});

test('dmabuf tour prints every step and ends released', async () => {
  const { stdout } = await run(process.execPath, ['--no-warnings', cli, 'tour', '--size', '65536'], { timeout: 30_000 });
  for (const step of ['1. export', '2. fd', '3. get', '4. attach', '5. map', '6. share', '7. unmap', '8. release']) {
    assert.ok(stdout.includes(step), `step ${step} in:\n${stdout}`);
  }
  assert.match(stdout, /released=true/);
});

test('dmabuf rejects bad options with usage and exit code 2', async () => {
  await assert.rejects(run(process.execPath, ['--no-warnings', cli, 'demo', '--seconds', 'x']), (e: { code?: number; stderr?: string }) => e.code === 2 && /usage/.test(e.stderr ?? ''));
  await assert.rejects(run(process.execPath, ['--no-warnings', cli, 'nope']), (e: { code?: number }) => e.code === 2);
});
