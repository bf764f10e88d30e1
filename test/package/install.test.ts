/**
 * The package as a user gets it: `npm pack`, then `npm install` of the tarball into an empty
 * folder with no compiler on the PATH (only node, npm and sh): the prebuilt addon is used,
 * nothing is built or downloaded beyond the npm registry's packages, and an example and the
 * command run from the installed package. Also: what the tarball holds, the build from
 * source when asked for, and the pure-JS import when no addon fits.
 *
 * npm is asked to prefer its cache (`--prefer-offline`): after the project's own install,
 * the one dependency (node-gyp-build) is there.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const x64glibc = process.arch === 'x64' && !existsSync('/etc/alpine-release');

let work = '';
let tarball = '';
/** A PATH with node, npm, npx and sh only: no gcc, cc, make or python3. */
let bareBin = '';

function which(name: string): string {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  assert.equal(r.status, 0, `${name} is on the PATH`);
  return r.stdout.trim();
}

function npm(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  return spawnSync('npm', args, { cwd, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 300_000 });
}

before(() => {
  work = mkdtempSync(path.join(tmpdir(), 'dmabuf-install-'));
  bareBin = path.join(work, 'bin');
  mkdirSync(bareBin);
  symlinkSync(process.execPath, path.join(bareBin, 'node'));
  for (const tool of ['npm', 'npx', 'sh']) symlinkSync(which(tool), path.join(bareBin, tool));
  // dist is built by `npm test`; --ignore-scripts skips prepare (a build from source).
  const r = npm(['pack', '--ignore-scripts', '--json', '--pack-destination', work], ROOT);
  assert.equal(r.status, 0, r.stderr);
  tarball = path.join(work, (JSON.parse(r.stdout) as Array<{ filename: string }>)[0]!.filename);
});

after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Installs the tarball into a new empty folder; returns the folder. */
function install(name: string, env: NodeJS.ProcessEnv): { dir: string; r: SpawnSyncReturns<string>; seconds: number } {
  const dir = path.join(work, name);
  mkdirSync(dir);
  const t0 = process.hrtime.bigint();
  const r = npm(['install', '--no-audit', '--no-fund', '--prefer-offline', '--no-package-lock', tarball], dir, env);
  return { dir, r, seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
}

test('the tarball holds the library, its types, the command, the examples, the docs, the addon sources and the prebuilds, and nothing else', () => {
  const r = spawnSync('tar', ['-tzf', tarball], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const files = r.stdout.split('\n').filter(Boolean).map((f) => f.replace(/^package\//, ''));
  for (const want of [
    'package.json', 'README.md', 'LICENSE', 'CHANGELOG.md', 'binding.gyp',
    'dist/src/index.js', 'dist/src/index.d.ts', 'dist/src/native/addon.js', 'dist/cli/dmabuf.js', 'dist/cli/info/collect.js',
    'dist/examples/child-process.js', 'native/binding.c', 'native/sys.c', 'native/sys.h', 'docs/guide.md', 'docs/errors.md',
    'prebuilds/linux-x64/dmabuf.napi.glibc.node', 'prebuilds/linux-x64/dmabuf.napi.musl.node', 'prebuilds/linux-arm64/dmabuf.napi.glibc.node',
  ]) assert.ok(files.includes(want), `${want} is in the tarball`);
  const unwanted = files.filter((f) => /^(dist\/test|dist\/bench|test|bench|\.ci|scripts|src|cli|examples|build|node_modules)\//.test(f) || f.endsWith('.map'));
  assert.deepEqual(unwanted, []);
});

test('npm install of the tarball with no compiler on the PATH uses the prebuilt addon; an example and the command run from it', { skip: x64glibc ? false : 'the check uses the linux-x64 glibc prebuild', timeout: 300_000 }, () => {
  for (const tool of ['gcc', 'cc', 'g++', 'make', 'python3']) {
    assert.notEqual(spawnSync('sh', ['-c', `command -v ${tool}`], { env: { PATH: bareBin } }).status, 0, `${tool} is not on the bare PATH`);
  }
  const env = { PATH: bareBin };
  const { dir, r, seconds } = install('no-compiler', env);
  assert.equal(r.status, 0, `npm install failed without a compiler:\n${r.stdout}\n${r.stderr}`);
  console.log(`# npm install of the tarball, no compiler: ${seconds.toFixed(1)} s`);
  const pkg = path.join(dir, 'node_modules', 'dmabuf');
  assert.equal(existsSync(path.join(pkg, 'build')), false, 'nothing was built');
  const example = spawnSync(process.execPath, ['--no-warnings', path.join(pkg, 'dist', 'examples', 'child-process.js')], { cwd: dir, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000 });
  assert.equal(example.status, 0, example.stderr);
  assert.match(example.stdout, /inverted as expected/);
  const tour = spawnSync(path.join(dir, 'node_modules', '.bin', 'dmabuf'), ['tour', '--size=65536'], { cwd: dir, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000 });
  assert.equal(tour.status, 0, tour.stderr);
  assert.match(tour.stdout, /released=true/);

  // Without any addon that fits, the import still works: available is false, with the reason.
  renameSync(path.join(pkg, 'prebuilds'), path.join(pkg, 'prebuilds-away'));
  const script = "import('dmabuf').then((m) => console.log(JSON.stringify({ available: m.available, reason: m.unavailableReason })))";
  const bare = spawnSync(process.execPath, ['--no-warnings', '-e', script], { cwd: dir, encoding: 'utf8' });
  assert.equal(bare.status, 0, bare.stderr);
  const out = JSON.parse(bare.stdout) as { available: boolean; reason: string };
  assert.equal(out.available, false);
  assert.match(out.reason, /native addon failed to load \(No native build was found/);
});

test('with --build-from-source (or no prebuild that loads), npm install builds the addon with node-gyp', { timeout: 300_000 }, () => {
  const { dir, r, seconds } = install('from-source', { npm_config_build_from_source: 'true' });
  assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
  console.log(`# npm install of the tarball, building from source: ${seconds.toFixed(1)} s`);
  const pkg = path.join(dir, 'node_modules', 'dmabuf');
  assert.ok(existsSync(path.join(pkg, 'build', 'Release', 'dmabuf.node')), `built: ${readdirSync(pkg).join(', ')}`);
  const script = "import('dmabuf').then(async (m) => { const b = m.systemHeap.allocate(4096); b.put(); console.log(m.available, b.released); })";
  const run = spawnSync(process.execPath, ['--no-warnings', '-e', script], { cwd: dir, encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  assert.equal(run.stdout.trim(), 'true true');
});
