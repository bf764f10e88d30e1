#!/usr/bin/env node
// Runs the compiled test suite with Node's own test runner, on whichever Node runs this script
// (so `npx -y node@22 scripts/test.mjs` runs it on Node 22).
//
// Node 20's `node --test` takes files and directories but no glob patterns, and Node 22 and
// later refuse a directory; both accept a list of files. So the files are listed here: every
// `*.test.js` under dist/test, and nothing else (helpers and fixtures are not tests). The run
// fails when no test file is found, and when the files hold no test (a second reporter writes
// TAP to a temporary file, whose `# tests N` line is read).
//
// Usage: node scripts/test.mjs [PATH_PREFIX...]
//   PATH_PREFIX narrows the run to test files under dist/test whose path starts with it,
//   e.g. `node scripts/test.mjs cli/ transport/channel`.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const testRoot = path.join(root, 'dist', 'test');

/** Every file under `dir` (relative to `testRoot`) whose name ends in `.test.js`, sorted. */
function testFiles(dir) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...testFiles(full));
    else if (entry.isFile() && entry.name.endsWith('.test.js')) out.push(path.relative(testRoot, full));
  }
  return out.sort();
}

if (!existsSync(testRoot)) {
  console.error(`scripts/test.mjs: ${path.relative(root, testRoot)} does not exist; build first (npm run build)`);
  process.exit(1);
}
const prefixes = process.argv.slice(2).map((p) => p.replace(/^(dist\/)?test\//, ''));
const files = testFiles(testRoot).filter((f) => prefixes.length === 0 || prefixes.some((p) => f.startsWith(p)));
if (files.length === 0) {
  console.error(`scripts/test.mjs: no test file (*.test.js) found under ${path.relative(root, testRoot)}${prefixes.length ? ` matching ${prefixes.join(', ')}` : ''}`);
  process.exit(1);
}

const tmp = mkdtempSync(path.join(os.tmpdir(), 'dmabuf-test-'));
const tap = path.join(tmp, 'report.tap');
const args = [
  '--test', '--test-concurrency=1', '--test-timeout=180000',
  '--test-reporter=spec', '--test-reporter-destination=stdout',
  '--test-reporter=tap', `--test-reporter-destination=${tap}`,
  ...files.map((f) => path.join('dist', 'test', f)),
];
console.log(`node ${process.version}: ${files.length} test files`);
const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' });
let status = r.status ?? 1;
if (r.error) {
  console.error(`scripts/test.mjs: could not start ${process.execPath}: ${r.error.message}`);
  status = 1;
} else {
  const count = /^# tests (\d+)$/m.exec(existsSync(tap) ? readFileSync(tap, 'utf8') : '');
  if (!count || Number(count[1]) === 0) {
    console.error(`scripts/test.mjs: the run reported ${count ? 'no test' : 'no summary'}; failing`);
    status = 1;
  }
}
rmSync(tmp, { recursive: true, force: true });
process.exit(status);
