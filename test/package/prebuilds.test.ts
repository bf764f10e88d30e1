/**
 * The prebuilt addons in prebuilds/: one per platform, architecture and C library, for the
 * right machine, up to date with the C sources, and the one node-gyp-build picks for each
 * platform.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { addonPath, viewsAddonPath } from '../../src/native/addon.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const require = createRequire(import.meta.url);

/** The prebuilds the package ships, with the ELF machine each must be (EM_X86_64, EM_AARCH64). */
const PREBUILDS = [
  { file: 'prebuilds/linux-x64/dmabuf.napi.glibc.node', machine: 62, libc: 'glibc', arch: 'x64' },
  { file: 'prebuilds/linux-x64/dmabuf.napi.musl.node', machine: 62, libc: 'musl', arch: 'x64' },
  { file: 'prebuilds/linux-arm64/dmabuf.napi.glibc.node', machine: 183, libc: 'glibc', arch: 'arm64' },
] as const;

/** The functions a build from source of this checkout exports (build/Release, made by npm install). */
function sourceFunctions(): string[] {
  const built = path.join(ROOT, 'build', 'Release', 'dmabuf.node');
  assert.ok(existsSync(built), `${built} is missing: npm install builds it from source`);
  const binding = require(built) as Record<string, unknown>;
  return Object.keys(binding).filter((k) => typeof binding[k] === 'function').sort();
}

/** Whether a C string `name` is in the binary (a linker may store it as the tail of a longer one). */
function mentions(bytes: Buffer, name: string): boolean {
  return bytes.includes(Buffer.from(`${name}\0`, 'latin1'));
}

test('every prebuild exists, is an ELF shared object for its machine and C library', () => {
  for (const p of PREBUILDS) {
    const bytes = readFileSync(path.join(ROOT, p.file));
    assert.equal(bytes.subarray(0, 4).toString('latin1'), '\x7fELF', p.file);
    assert.equal(bytes[4], 2, `${p.file}: 64-bit`);
    assert.equal(bytes.readUInt16LE(16), 3, `${p.file}: ET_DYN`);
    assert.equal(bytes.readUInt16LE(18), p.machine, `${p.file}: e_machine`);
    if (p.libc === 'musl') {
      assert.ok(mentions(bytes, '\0libc.so') && !mentions(bytes, 'libc.so.6'), `${p.file} links musl's libc.so, not glibc's libc.so.6`);
    } else {
      assert.ok(mentions(bytes, 'libc.so.6'), `${p.file} links glibc's libc.so.6`);
    }
  }
});

test('every prebuild is up to date with the C sources: it has every function of a build from source (else: npm run prebuilds)', () => {
  const names = sourceFunctions();
  assert.ok(names.length > 40, `the source build exports its functions: ${names.length}`);
  for (const p of PREBUILDS) {
    const bytes = readFileSync(path.join(ROOT, p.file));
    const missing = names.filter((n) => !mentions(bytes, n));
    assert.deepEqual(missing, [], `${p.file} lacks functions of the sources; run "npm run prebuilds"`);
  }
});

test('the prebuild for this machine loads and exports what the source build does', { skip: process.arch !== 'x64' || existsSync('/etc/alpine-release') ? 'not an x64 glibc machine' : false }, () => {
  const file = path.join(ROOT, 'prebuilds', 'linux-x64', 'dmabuf.napi.glibc.node');
  const script = `
    const b = require(${JSON.stringify(file)});
    const fd = b.memfdCreate('prebuild-check', b.constants.MFD_ALLOW_SEALING);
    b.ftruncate(fd, 4096);
    const size = b.fstat(fd).size;
    b.close(fd);
    console.log(JSON.stringify({ size, names: Object.keys(b).filter((k) => typeof b[k] === 'function').sort() }));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { size: number; names: string[] };
  assert.equal(out.size, 4096);
  assert.deepEqual(out.names, sourceFunctions());
});

test('node-gyp-build picks the right prebuild for each platform', () => {
  const cases: Array<{ arch: string; libc: string; want: string }> = PREBUILDS.map((p) => ({ arch: p.arch, libc: p.libc, want: p.file }));
  for (const c of cases) {
    const script = `console.log(require('node-gyp-build').path(${JSON.stringify(ROOT)}))`;
    const r = spawnSync(process.execPath, ['-e', script], {
      encoding: 'utf8',
      cwd: ROOT,
      env: { ...process.env, PREBUILDS_ONLY: '1', npm_config_arch: c.arch, npm_config_platform: 'linux', LIBC: c.libc },
    });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(path.relative(ROOT, r.stdout.trim()), c.want, `${c.arch} ${c.libc}`);
  }
  const none = spawnSync(process.execPath, ['-e', `require('node-gyp-build').path(${JSON.stringify(ROOT)})`], {
    encoding: 'utf8', cwd: ROOT, env: { ...process.env, PREBUILDS_ONLY: '1', npm_config_arch: 'riscv64' },
  });
  assert.notEqual(none.status, 0, 'no prebuild for riscv64');
  assert.match(none.stderr, /No native build was found/);
});

test('the layout for the per-ABI views addon: its prebuilds sit in views/, where node-gyp-build never takes them for the C addon', () => {
  const root = mkdtempSync(path.join(tmpdir(), 'dmabuf-layout-'));
  try {
    const dir = path.join(root, 'prebuilds', `linux-${process.arch}`);
    mkdirSync(path.join(dir, 'views'), { recursive: true });
    writeFileSync(path.join(root, 'package.json'), '{"name":"dmabuf"}');
    const napi = path.join(dir, 'dmabuf.napi.glibc.node');
    copyFileSync(path.join(ROOT, 'prebuilds', 'linux-x64', 'dmabuf.napi.glibc.node'), napi);
    assert.equal(viewsAddonPath(root), null, 'no views build for this ABI: fall back');
    // An ABI-tagged file beside the Node-API one would win in node-gyp-build; in views/ it cannot.
    const views = path.join(dir, 'views', `dmabuf_views.abi${process.versions.modules}.glibc.node`);
    writeFileSync(views, 'not loaded here');
    writeFileSync(path.join(dir, 'views', 'dmabuf_views.abi1.glibc.node'), 'another ABI');
    assert.equal(addonPath(root), napi);
    assert.equal(viewsAddonPath(root), existsSync('/etc/alpine-release') ? null : views);
    // A build from source comes first for both.
    mkdirSync(path.join(root, 'build', 'Release'), { recursive: true });
    writeFileSync(path.join(root, 'build', 'Release', 'dmabuf.node'), '');
    writeFileSync(path.join(root, 'build', 'Release', 'dmabuf_views.node'), '');
    assert.equal(addonPath(root), path.join(root, 'build', 'Release', 'dmabuf.node'));
    assert.equal(viewsAddonPath(root), path.join(root, 'build', 'Release', 'dmabuf_views.node'));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

/** The views addon's prebuilds: one per Node ABI (20, 22, 24) and glibc architecture. */
const VIEWS_PREBUILDS = ['x64', 'arm64'].flatMap((arch) => [115, 127, 137].map((abi) => ({ arch, abi, file: `prebuilds/linux-${arch}/views/dmabuf_views.abi${abi}.glibc.node`, machine: arch === 'x64' ? 62 : 183 })));

test('the views addon ships prebuilt for Node 20, 22 and 24 (x64 and arm64 glibc), and this Node\'s one makes uncounted views', { skip: process.arch !== 'x64' || existsSync('/etc/alpine-release') ? 'not an x64 glibc machine' : false }, () => {
  for (const p of VIEWS_PREBUILDS) {
    const bytes = readFileSync(path.join(ROOT, p.file));
    assert.equal(bytes.subarray(0, 4).toString('latin1'), '\x7fELF', p.file);
    assert.equal(bytes.readUInt16LE(18), p.machine, `${p.file}: e_machine`);
  }
  const own = VIEWS_PREBUILDS.find((p) => p.arch === 'x64' && String(p.abi) === process.versions.modules);
  if (!own) return; // a Node without a views prebuild: the C addon's counted views are used
  // Loaded from the prebuilds alone (no build/Release), the factory is accepted and views are uncounted.
  const script = `
    const v = require(${JSON.stringify(path.join(ROOT, own.file))});
    console.log(JSON.stringify({ factory: typeof v.factory, reason: v.reason ?? '' }));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { factory: 'object', reason: '' });
});
