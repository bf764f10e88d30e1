import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const distSrc = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src');
const indexUrl = pathToFileURL(path.join(distSrc, 'index.js')).href;

test('without the native addon every call fails with ENODEV, saying why', () => {
  const root = mkdtempSync(path.join(tmpdir(), 'dmabuf-nodev-'));
  try {
    cpSync(distSrc, path.join(root, 'dist', 'src'), { recursive: true });
    writeFileSync(path.join(root, 'package.json'), '{"type":"module"}');
    const script = `
      const m = await import(${JSON.stringify(pathToFileURL(path.join(root, 'dist', 'src', 'index.js')).href)});
      const out = { available: m.available, reason: m.unavailableReason, codes: [] };
      const tryIt = async (fn) => { try { await fn(); out.codes.push('none'); } catch (e) { out.codes.push(e.code + ':' + (e instanceof m.DmaBufError)); } };
      await tryIt(() => m.systemHeap.allocate(4096));
      await tryIt(() => m.DmaBuf.get(0));
      await tryIt(() => m.DmaBuf.export({ ops: {}, size: 1, priv: {} }));
      console.log(JSON.stringify(out));`;
    const res = execFileSync(process.execPath, ['--no-warnings', '--input-type=module', '-e', script], { encoding: 'utf8' });
    const out = JSON.parse(res) as { available: boolean; reason: string; codes: string[] };
    assert.equal(out.available, false);
    assert.match(out.reason, /native addon failed to load.*npm install/);
    assert.deepEqual(out.codes, ['ENODEV:true', 'ENODEV:true', 'ENODEV:true']);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('the first use emits one ExperimentalWarning per process', () => {
  const script = `
    const m = await import(${JSON.stringify(indexUrl)});
    for (let i = 0; i < 3; i++) m.systemHeap.allocate(4096).put();
    await m.DmaBuf.get(0).catch(() => {});`;
  const res = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(res.status, 0, res.stderr);
  const warnings = res.stderr.split('\n').filter((l) => /ExperimentalWarning: dmabuf is an experimental feature/.test(l));
  assert.equal(warnings.length, 1, res.stderr);
});
