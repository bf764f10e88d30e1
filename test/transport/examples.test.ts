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
  const child = /\[child\] pid (\d+) sent the inverted frame to pid (\d+)/.exec(r.stdout);
  const parent = /\[parent\] pid (\d+):.* from pid (\d+)/.exec(r.stdout);
  assert.ok(child && parent, r.stdout);
  assert.notEqual(child[1], parent[1], 'two processes');
  assert.equal(parent[2], child[1], 'the parent\'s channel.peer is the child');
  assert.equal(child[2], parent[1], 'the child\'s channel.peer is the parent');
});

test('examples/worker-thread: the worker sums every frame correctly', () => {
  const r = runExample('worker-thread');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.match(/\(correct\)/g)?.length, 4, r.stdout);
});

test('examples/fenced-ring: a worker and a child read every frame once, whole, through a ring with fences only', () => {
  const r = runExample('fenced-ring');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /the worker verified 300 of 300 frames: 0 torn or misplaced, 0 duplicated, 0 lost/);
  assert.match(r.stdout, /the child verified 300 of 300 frames: 0 torn or misplaced, 0 duplicated, 0 lost/);
  assert.match(r.stdout, /every frame arrived once, whole/);
});
