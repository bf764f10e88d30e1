/**
 * `npm run bench`: runs the benchmarks, prints a table and writes
 * `bench/results/inprocess-<date>.json` and `.md`.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { runInProcess, table } from './inprocess.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const outDir = path.resolve(here, '..', '..', 'bench', 'results');

const rows = await runInProcess();
const machine = `${os.cpus()[0]?.model ?? 'cpu'} x${os.cpus().length}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${os.release()}, Node ${process.version}`;
const date = new Date().toISOString().slice(0, 10);
const md = `# In-process costs (${date})\n\nMachine: ${machine}\n\n${table(rows)}\n`;
console.log(md);
mkdirSync(outDir, { recursive: true });
writeFileSync(path.join(outDir, `inprocess-${date}.json`), JSON.stringify({ date, machine, rows }, null, 2));
writeFileSync(path.join(outDir, `inprocess-${date}.md`), md);
