/**
 * Every JavaScript and TypeScript snippet of README.md and docs/*.md runs against the built
 * package, and fails on an error or a hang.
 *
 * How a block is run is said by an HTML comment on the line just before its fence (not shown
 * when the Markdown is rendered):
 *
 * - no comment: a complete program. It runs alone and must exit with status 0.
 * - `<!-- snippet: process GROUP -->`: one process of a program made of several (an exporter
 *   and an importer, say). The blocks of one GROUP in one file run at the same time, in
 *   document order, each started once the one before it has printed a line (a server says
 *   it listens); every one must exit with status 0.
 * - `<!-- snippet: fragment -->`: not run. A piece of a larger program, shown for its shape
 *   (a signature, one step of a story). Use it only where a complete program would hide
 *   what the block is about; the examples/ programs are the complete versions.
 *
 * Each block is compiled with TypeScript (types stripped, `using` lowered for Node 20) and
 * run as an ES module in a temporary folder whose `node_modules/dmabuf` links to this
 * package, so `import ... from 'dmabuf'` loads the build, as it does for a user.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
/** Longest a snippet may run: longer is a hang. */
const TIMEOUT_MS = 30_000;

interface Block {
  file: string;
  line: number;
  lang: string;
  code: string;
  kind: 'program' | 'process' | 'fragment';
  group: string;
}

/** The js/ts blocks of one Markdown file, with how each is run. */
export function blocksOf(file: string, text: string): Block[] {
  const lines = text.split('\n');
  const out: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const open = /^```(js|ts|javascript|typescript)\s*$/.exec(lines[i]!);
    if (!open) {
      if (/^```/.test(lines[i]!)) { // another language: skip to its end
        for (i++; i < lines.length && !/^```\s*$/.test(lines[i]!); i++);
      }
      continue;
    }
    const marker = i > 0 ? /^<!--\s*snippet:\s*(.*?)\s*-->\s*$/.exec(lines[i - 1]!) : null;
    let kind: Block['kind'] = 'program';
    let group = '';
    if (marker) {
      const [what, name, ...rest] = marker[1]!.split(/\s+/);
      if (what === 'fragment' && name === undefined) kind = 'fragment';
      else if (what === 'process' && name !== undefined && rest.length === 0) { kind = 'process'; group = name; }
      else throw new Error(`${file}:${i}: unknown snippet marker "${marker[0]}"`);
    }
    const start = i + 1;
    const body: string[] = [];
    for (i++; i < lines.length && !/^```\s*$/.test(lines[i]!); i++) body.push(lines[i]!);
    if (i >= lines.length) throw new Error(`${file}:${start}: a code block that never ends`);
    out.push({ file, line: start, lang: open[1]!, code: body.join('\n'), kind, group });
  }
  return out;
}

function markdownFiles(): string[] {
  return ['README.md', ...readdirSync(path.join(ROOT, 'docs')).filter((f) => f.endsWith('.md')).sort().map((f) => `docs/${f}`)];
}

const blocks = markdownFiles().flatMap((f) => blocksOf(f, readFileSync(path.join(ROOT, f), 'utf8')));

let dir = '';
before(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'dmabuf-snippets-'));
  mkdirSync(path.join(dir, 'node_modules'));
  symlinkSync(ROOT, path.join(dir, 'node_modules', 'dmabuf'), 'dir');
});
after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Writes a block as an ES module in the temporary folder; returns its path. */
function write(block: Block): string {
  const js = ts.transpileModule(block.code, {
    fileName: `snippet.${block.lang.startsWith('t') ? 'ts' : 'js'}`,
    compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext, verbatimModuleSyntax: false },
    reportDiagnostics: true,
  });
  if (js.diagnostics?.length) {
    throw new Error(`${block.file}:${block.line}: ${js.diagnostics.map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n')).join('; ')}`);
  }
  const file = path.join(dir, `${block.file.replace(/[/.]/g, '_')}_${block.line}.mjs`);
  writeFileSync(file, js.outputText);
  return file;
}

interface Run { child: ChildProcess; done: Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>; firstLine: Promise<void> }

function start(block: Block): Run {
  const child = spawn(process.execPath, ['--no-warnings', write(block)], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  let sawLine!: () => void;
  const firstLine = new Promise<void>((resolve) => { sawLine = resolve; });
  child.stdout!.setEncoding('utf8').on('data', (d: string) => { stdout += d; if (stdout.includes('\n')) sawLine(); });
  child.stderr!.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
  const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS);
  const done = new Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>((resolve) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      sawLine();
      resolve({ code, signal, stdout, stderr });
    });
  });
  return { child, done, firstLine };
}

function check(block: Block, r: { code: number | null; signal: string | null; stdout: string; stderr: string }): void {
  const where = `${block.file}:${block.line}`;
  assert.notEqual(r.signal, 'SIGKILL', `${where} hung: still running after ${TIMEOUT_MS / 1000} s\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
  assert.equal(r.code, 0, `${where} failed (status ${r.code}, signal ${r.signal})\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`);
}

test('the docs have snippets, every one marked in a known way (an unknown marker fails the load)', () => {
  const counts = { program: 0, process: 0, fragment: 0 };
  for (const b of blocks) counts[b.kind]++;
  assert.ok(counts.program + counts.process > 0, `runnable snippets: ${JSON.stringify(counts)}`);
  assert.deepEqual(blocks.filter((b) => b.lang !== 'js' && b.lang !== 'ts').map((b) => `${b.file}:${b.line}`), [], 'blocks are ```js or ```ts');
});

for (const block of blocks.filter((b) => b.kind === 'program')) {
  test(`${block.file}:${block.line} runs to its end`, async () => {
    check(block, await start(block).done);
  });
}

const groups = new Map<string, Block[]>();
for (const b of blocks.filter((x) => x.kind === 'process')) {
  const key = `${b.file} ${b.group}`;
  groups.set(key, [...(groups.get(key) ?? []), b]);
}
for (const [key, members] of groups) {
  test(`${key.replace(' ', ': processes ')} (${members.map((m) => m.line).join(', ')}) run together to their end`, async () => {
    assert.ok(members.length >= 2, `${key}: a process group needs at least two blocks`);
    const runs: Run[] = [];
    try {
      for (const m of members) {
        const run = start(m);
        runs.push(run);
        await run.firstLine;
      }
      const results = await Promise.all(runs.map((r) => r.done));
      results.forEach((r, i) => check(members[i]!, r));
    } finally {
      for (const r of runs) if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill('SIGKILL');
    }
  });
}
