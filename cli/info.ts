/**
 * `dmabuf info`: every buffer on the machine that the user may see (the user-space
 * `dmabuf_dump`). This module is the command line; the listing is made in `cli/info/`:
 * `endpoints.ts` asks the threads that export or import buffers, `proc-scan.ts` reads
 * `/proc`, `collect.ts` puts both together into a {@link Report} (`report.ts`), and
 * `format.ts` prints it as text or CSV.
 *
 * @module
 */
import { integerOption, parseOptions, type Command } from './args.js';
import { collect } from './info/collect.js';
import { formatCsv, formatText } from './info/format.js';
import { DEFAULT_QUERY_TIMEOUT, type InfoOptions } from './info/report.js';

export type {
  BufferReport, ExporterReport, ImporterReport, InfoOptions, Mapping, ProcessReport, Report, ThreadReport, UnreadableProcess,
} from './info/report.js';
export { REPORT_VERSION, DEFAULT_QUERY_TIMEOUT } from './info/report.js';
export { collect } from './info/collect.js';
export { formatBytes, formatCsv, formatText } from './info/format.js';

/** `dmabuf info`: its command line. */
export const infoCommand: Command = {
  name: 'info',
  synopsis: '[--pid PID] [--json | --csv] [--timeout MS]',
  summary: 'list the dma-bufs you may see: this project\'s, in every process, and the kernel\'s',
  usage: `usage: dmabuf info [--pid PID] [--json | --csv] [--timeout MS]

Lists every dma-buf that you may see: this project's buffers in every process (name,
exporter, size, references, attachments and their devices, maps, which processes hold and
map them) and the kernel's dma-bufs, with per-process and per-exporter totals. Processes of
other users that cannot be read are counted and said.

  --pid PID     only buffers that PID exports, imports, holds or maps, and its totals
  --json        the whole listing as JSON
  --csv         one line per buffer, with a header
  --timeout MS  how long each thread has to answer (default ${DEFAULT_QUERY_TIMEOUT})
  -h, --help    this text`,
  async run(argv) {
    const v = parseOptions(argv, {
      pid: { type: 'string' }, json: { type: 'boolean' }, csv: { type: 'boolean' }, timeout: { type: 'string' },
    }, [['json', 'csv']]);
    if (v.help) {
      console.log(this.usage);
      return 0;
    }
    const options: InfoOptions = {};
    const pid = integerOption(v.pid, 'pid');
    const timeout = integerOption(v.timeout, 'timeout');
    if (pid !== undefined) options.pid = pid;
    if (timeout !== undefined) options.timeout = timeout;
    const report = await collect(options);
    const text = v.json ? JSON.stringify(report, null, 2) : v.csv ? formatCsv(report) : formatText(report);
    process.stdout.write(text + '\n');
    return 0;
  },
};
