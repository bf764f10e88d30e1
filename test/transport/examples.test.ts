/**
 * The descriptor-passing examples run to their end and print what they promise.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

function runExample(name: string): { status: number | null; stdout: string; stderr: string } {
  const file = fileURLToPath(new URL(`../../examples/${name}.js`, import.meta.url));
  const r = spawnSync(process.execPath, ['--no-warnings', file], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('examples/unix-socket: a client process maps every frame the server sends', () => {
  const r = runExample('unix-socket');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.match(/contents as sent/g)?.length, 3, r.stdout);
  assert.match(r.stdout, /\[server\] done/);
});

test('examples/child-process: the child inverts the frame and sends the result back', () => {
  const r = runExample('child-process');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /inverted as expected/);
  assert.match(r.stdout, /input frame released: true/);
});

test('examples/worker-thread: the worker sums every frame correctly', () => {
  const r = runExample('worker-thread');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.match(/\(correct\)/g)?.length, 4, r.stdout);
});
