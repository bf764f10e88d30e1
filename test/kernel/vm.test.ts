/**
 * Runs the kernel suite (test/kernel/guest/) inside a throw-away VM booting a real Linux 6.12
 * with udmabuf, dma-heaps, vgem and vivid (test/kernel/vm/run-in-kernel-vm.sh), whenever this
 * machine can run it: Linux on x86-64, bash, and either qemu installed or root with apt (the
 * tool then installs qemu and fetches the kernel, about 300 MB, on first use). Skips, saying
 * why, where it cannot. `DMABUF_KERNEL_VM=0` skips it on purpose.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { arch } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url)); // dist/test/kernel
const ROOT = path.resolve(HERE, '..', '..', '..');
const TOOL = path.join(ROOT, 'test', 'kernel', 'vm', 'run-in-kernel-vm.sh');
const GUEST_SUITE = path.join('dist', 'test', 'kernel', 'guest');

/** The guest suite's test files, relative to the project root. */
function guestFiles(): string[] {
  return readdirSync(path.join(ROOT, GUEST_SUITE)).filter((f) => f.endsWith('.test.js')).sort().map((f) => path.join(GUEST_SUITE, f));
}

interface Run { code: number | null; stdout: string; stderr: string }

function run(args: string[], timeoutMs: number): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn('bash', [TOOL, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ code: null, stdout, stderr: stderr + String(err) });
    });
  });
}

const lastLines = (text: string, n: number): string => text.trim().split('\n').slice(-n).join('\n');

/** Why the VM cannot run here, or null. Runs the tool's setup (idempotent; quick once cached). */
async function unavailable(): Promise<string | null> {
  if (process.env.DMABUF_KERNEL_VM === '0') return 'DMABUF_KERNEL_VM=0';
  if (process.platform !== 'linux' || arch() !== 'x64') return `the kernel VM needs Linux on x86-64 (this is ${process.platform} ${arch()})`;
  if (!existsSync(TOOL)) return `${TOOL} is missing`;
  if (!existsSync(path.join(ROOT, GUEST_SUITE))) return `${GUEST_SUITE} is not built (npm run build)`;
  const setup = await run(['--setup'], 10 * 60_000);
  if (setup.code !== 0) return `the kernel VM tool could not set up (exit ${setup.code}): ${lastLines(setup.stderr, 3)}`;
  return null;
}

const reason = await unavailable();
if (reason) console.log(`# kernel VM suite skipped: ${reason}`);

test('the kernel suite passes inside a VM running Linux 6.12 (udmabuf, dma-heaps, vgem, vivid)', { skip: reason ?? false, timeout: 10 * 60_000 }, async (t) => {
  const started = Date.now();
  const r = await run([
    '-b', process.execPath, '-s', `${ROOT}:${ROOT}:ro`, '-C', ROOT, '-M', 'vivid', '-t', '540',
    // The files, not the folder: Node 22 and later take no directory after --test; TAP, which
    // the counts below read (Node 23 and later default to the spec reporter).
    '--', process.execPath, '--test', '--test-reporter=tap', '--test-concurrency=1', '--test-timeout=300000', ...guestFiles(),
  ], 10 * 60_000);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  const count = (name: string): number => Number(new RegExp(`^# ${name} (\\d+)$`, 'm').exec(r.stdout)?.[1] ?? NaN);
  const results = r.stdout.split('\n').filter((l) => /^(not )?ok \d+ - /.test(l));
  for (const line of results) t.diagnostic(line);
  t.diagnostic(`guest: ${count('tests')} tests, ${count('pass')} passed, ${count('fail')} failed, ${count('skipped')} skipped; VM run ${seconds} s`);
  const tail = `\n--- guest stdout (tail) ---\n${lastLines(r.stdout, 60)}\n--- stderr (tail) ---\n${lastLines(r.stderr, 20)}`;
  assert.equal(r.code, 0, `the guest suite failed (exit ${r.code})${tail}`);
  assert.ok(count('tests') > 0 && count('fail') === 0, `no guest test ran, or one failed${tail}`);
  assert.equal(count('skipped'), 0, `a guest test skipped inside the VM: the VM lacks an interface${tail}`);
});
