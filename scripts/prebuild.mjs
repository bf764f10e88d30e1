#!/usr/bin/env node
// `npm run prebuilds`: rebuilds the prebuilt addons that the package ships in prebuilds/.
//
// - The Node-API C addon `dmabuf`, one build per platform, architecture and C library (it
//   loads in every Node release): linux-x64 glibc (gcc), linux-x64 musl (musl-gcc), linux-arm64
//   glibc (aarch64-linux-gnu-gcc), with prebuildify:
//     prebuilds/<platform>-<arch>/dmabuf.napi.<libc>.node
// - The C++ views addon `dmabuf_views`, when binding.gyp has that target: one build per Node
//   ABI (V8's C++ API is not stable across Node majors), for Node 20, 22 and 24, on glibc
//   (x64 and arm64; Debian has no musl C++ compiler, so musl ships without it and falls back
//   to the C addon's views):
//     prebuilds/<platform>-<arch>/views/dmabuf_views.abi<ABI>.glibc.node
//   The headers of each Node version come from the npm registry's node-linux-<arch> package
//   (it holds include/node), cached in ~/.cache/dmabuf/node-headers.
//
// The cross-compilers come from Debian's packages:
//   apt-get install -y gcc-aarch64-linux-gnu g++-aarch64-linux-gnu musl-tools
// Afterwards the addon is built again from source for this machine (build/Release), so that
// a checkout keeps running what its sources say.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const prebuilds = path.join(root, 'prebuilds');
/** The Node versions whose ABI the views addon is built for (majors; the newest of each). */
const VIEWS_NODE_MAJORS = [20, 22, 24];
const APT = 'apt-get install -y gcc-aarch64-linux-gnu g++-aarch64-linux-gnu musl-tools';

/** node-gyp: npm's own (npm sets npm_config_node_gyp for scripts), else the one next to this node. */
function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  const found = candidates.find((c) => c && existsSync(c));
  if (!found) fail('node-gyp not found: run this through "npm run prebuilds"');
  return found;
}

/** The running Node's headers, as node-gyp's --nodedir (no download). */
function localNodeDir() {
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  return existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? prefix : null;
}

function fail(message) {
  console.error(`prebuild: ${message}`);
  process.exit(1);
}

function run(cmd, args, env = {}) {
  console.log(`$ ${Object.entries(env).map(([k, v]) => `${k}=${v} `).join('')}${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  if (r.status !== 0) fail(`${cmd} failed (${r.error?.message ?? `status ${r.status}`})`);
}

function have(tool) {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
}

const gyp = nodeGyp();
const nodedir = localNodeDir();
const baseEnv = {
  PREBUILD_NODE_GYP: gyp,
  ...(nodedir ? { npm_config_nodedir: nodedir } : {}),
};
const prebuildify = path.join(root, 'node_modules', 'prebuildify', 'bin.js');
if (!existsSync(prebuildify)) fail('prebuildify is missing: run "npm install" first');
for (const tool of ['gcc', 'musl-gcc', 'aarch64-linux-gnu-gcc', 'aarch64-linux-gnu-g++']) {
  if (!have(tool)) fail(`${tool} is missing; install the cross-compilers: ${APT}`);
}

// musl-gcc sees only musl's headers; the Linux UAPI headers (linux/falloc.h, ...) are the
// same for every C library, so it gets Debian's, after its own.
const uapi = path.join(os.tmpdir(), 'dmabuf-musl-uapi');
rmSync(uapi, { recursive: true, force: true });
mkdirSync(uapi);
for (const [name, target] of [['linux', '/usr/include/linux'], ['asm-generic', '/usr/include/asm-generic'], ['asm', '/usr/include/x86_64-linux-gnu/asm']]) {
  if (!existsSync(target)) fail(`${target} is missing (Debian's linux-libc-dev has it)`);
  symlinkSync(target, path.join(uapi, name));
}

// The C addon: a Node-API build for this Node's headers serves every Node release.
const napiTargets = [
  { arch: 'x64', libc: 'glibc', env: {} },
  { arch: 'x64', libc: 'musl', env: { CC: 'musl-gcc', CXX: 'musl-gcc', LINK: 'musl-gcc', CFLAGS: `-idirafter ${uapi}` } },
  {
    arch: 'arm64', libc: 'glibc',
    env: { CC: 'aarch64-linux-gnu-gcc', CXX: 'aarch64-linux-gnu-g++', LINK: 'aarch64-linux-gnu-g++', AR: 'aarch64-linux-gnu-ar', PREBUILD_STRIP_BIN: 'aarch64-linux-gnu-strip' },
  },
];
for (const t of napiTargets) {
  const dir = path.join(prebuilds, `linux-${t.arch}`);
  for (const f of existsSync(dir) ? readdirSync(dir) : []) if (f.startsWith(`dmabuf.napi.${t.libc}.`)) rmSync(path.join(dir, f));
  run(process.execPath, [prebuildify, '--napi', '--strip', '--tag-libc', '--name=dmabuf.napi', `--arch=${t.arch}`, `--target=${process.versions.node}`],
    // GYP_DEFINES: binding.gyp builds the views target only when dmabuf_views is 1 (its default).
    { ...baseEnv, PREBUILD_LIBC: t.libc, GYP_DEFINES: 'dmabuf_views=0', ...t.env });
}

// The views addon, once binding.gyp has it. binding.gyp is expected to guard that target with
// a variable, so that the C addon's passes above (and musl, which has no C++ compiler here)
// leave it out:
//   "variables": { "dmabuf_views%": 1 },
//   "conditions": [["dmabuf_views==1", { "targets": [{ "target_name": "dmabuf_views", ... }] }]]
const gypText = readFileSync(path.join(root, 'binding.gyp'), 'utf8');
if (/"target_name"\s*:\s*"dmabuf_views"/.test(gypText)) {
  const cache = path.join(os.homedir(), '.cache', 'dmabuf', 'node-headers');
  const viewsTargets = [
    { arch: 'x64', env: {} },
    { arch: 'arm64', env: napiTargets[2].env },
  ];
  for (const major of VIEWS_NODE_MAJORS) {
    for (const t of viewsTargets) {
      const pkg = `node-linux-${t.arch}@${major}`;
      const dir = path.join(cache, `${t.arch}-${major}`);
      if (!existsSync(path.join(dir, 'package', 'include', 'node', 'node.h'))) {
        mkdirSync(dir, { recursive: true });
        run('npm', ['pack', '--silent', pkg, '--pack-destination', dir]);
        const tgz = readdirSync(dir).find((f) => f.endsWith('.tgz'));
        if (!tgz) fail(`npm pack ${pkg} wrote no tarball`);
        run('tar', ['-xzf', path.join(dir, tgz), '-C', dir, 'package/include', 'package/package.json']);
        rmSync(path.join(dir, tgz));
      }
      const headers = path.join(dir, 'package');
      const { version } = JSON.parse(readFileSync(path.join(headers, 'package.json'), 'utf8'));
      const abi = /#define NODE_MODULE_VERSION (\d+)/.exec(readFileSync(path.join(headers, 'include', 'node', 'node_version.h'), 'utf8'))?.[1];
      if (!abi) fail(`no NODE_MODULE_VERSION in the headers of ${pkg}`);
      // npm_config_nodedir (npm may be set to the local headers) would win over --nodedir and
      // build every ABI against this Node's headers: point it at this version's too.
      run(process.execPath, [gyp, 'rebuild', `--nodedir=${headers}`, `--target=${version}`, `--arch=${t.arch}`], { ...t.env, npm_config_nodedir: headers });
      if (t.arch === process.arch) {
        // It says which ABI it was built for, even to a Node of another ABI: check it is this one.
        const probe = spawnSync(process.execPath, ['-p', `require(${JSON.stringify(path.join(root, 'build', 'Release', 'dmabuf_views.node'))}).moduleVersion`], { encoding: 'utf8' });
        if (probe.stdout.trim() !== abi) fail(`the views addon for Node ${major} was built for ABI ${probe.stdout.trim() || '?'}, not ${abi}`);
      }
      const out = path.join(prebuilds, `linux-${t.arch}`, 'views');
      mkdirSync(out, { recursive: true });
      const file = path.join(out, `dmabuf_views.abi${abi}.glibc.node`);
      copyFileSync(path.join(root, 'build', 'Release', 'dmabuf_views.node'), file);
      run(t.arch === 'x64' ? 'strip' : 'aarch64-linux-gnu-strip', ['--strip-all', file]);
    }
  }
}

// Back to a build from source for this machine.
run(process.execPath, [gyp, 'rebuild'], nodedir ? { npm_config_nodedir: nodedir } : {});
console.log('prebuild: done');
for (const dir of readdirSync(prebuilds)) {
  for (const f of readdirSync(path.join(prebuilds, dir), { recursive: true })) {
    const full = path.join(prebuilds, dir, String(f));
    if (full.endsWith('.node')) console.log(`  ${path.relative(root, full)}`);
  }
}
