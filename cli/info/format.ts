/**
 * The `dmabuf info` listing as text (tables and a summary of what could not be seen) and as
 * CSV (one row per buffer).
 *
 * @module
 */
import type { BufferReport, Report } from './report.js';

/** `1.5 MiB`. */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(header), ...rows.map(line)].join('\n');
}

function attachmentsText(b: BufferReport): string {
  if (b.attachments.length === 0) return '-';
  return b.attachments.map((a) => `${a.device} (${a.kind}${a.maps ? `, ${a.maps} map${a.maps > 1 ? 's' : ''}` : ''})`).join(', ');
}

function pidsText(p: number[]): string {
  return p.length ? p.join(',') : '-';
}

function uidSummary(uids: (number | null)[]): string {
  const by = new Map<string, number>();
  for (const u of uids) by.set(u === null ? '?' : String(u), (by.get(u === null ? '?' : String(u)) ?? 0) + 1);
  return [...by.entries()].map(([u, n]) => `uid ${u}: ${n}`).join(', ');
}

/** The human listing. */
export function formatText(r: Report): string {
  const out: string[] = [];
  const scope = r.pid === null ? '' : ` held, mapped, exported or imported by pid ${r.pid}`;
  if (r.buffers.length === 0) {
    out.push(`No dma-bufs${scope}.`);
  } else {
    out.push(`Buffers${scope}:`);
    out.push(table(
      ['KIND', 'NAME', 'EXPORTER', 'PID', 'SIZE', 'REFS', 'MAPS', 'HOLDERS', 'MAPPERS', 'ATTACHMENTS'],
      r.buffers.map((b) => [
        b.kind,
        b.name || '-',
        b.exporter,
        b.exporterPid === null ? '-' : String(b.exporterPid),
        formatBytes(b.size),
        b.kind === 'kernel' ? (b.count === null ? '-' : `count ${b.count}`) : (b.refs === null ? '-' : String(b.refs)),
        String(b.maps),
        pidsText(b.holders),
        pidsText(b.mappers),
        attachmentsText(b),
      ]),
    ));
  }
  if (r.processes.length) {
    out.push('', 'Per process:');
    out.push(table(
      ['PID', 'COMMAND', 'EXPORTED', 'IMPORTED', 'HELD', 'MAPPED'],
      r.processes.map((p) => [
        String(p.pid), p.comm || '?',
        `${p.exported.count} (${formatBytes(p.exported.bytes)})`,
        `${p.imported.count} (${formatBytes(p.imported.bytes)})`,
        `${p.held.count} (${formatBytes(p.held.bytes)})`,
        `${p.mapped.count} (${formatBytes(p.mapped.bytes)})`,
      ]),
    ));
  }
  if (r.exporters.length) {
    out.push('', 'Per exporter:');
    out.push(table(
      ['EXPORTER', 'KIND', 'BUFFERS', 'SIZE', 'ATTACHMENTS', 'MAPS', 'PIDS'],
      r.exporters.map((e) => [e.exporter, e.kind, String(e.buffers), formatBytes(e.bytes), String(e.attachments), String(e.maps), pidsText(e.pids)]),
    ));
  }
  out.push('');
  const ep = r.endpoints;
  out.push(`${ep.found} thread${ep.found === 1 ? '' : 's'} with buffers found, ${ep.answered} answered.`);
  const refused = r.threads.filter((t) => t.status === 'refused');
  if (refused.length) {
    out.push(`${refused.length} thread${refused.length === 1 ? '' : 's'} refused to answer (another user's; ${uidSummary(refused.map((t) => t.uid))}): ${refused.map((t) => `pid ${t.pid}`).join(', ')}. Run as that user or as root to see their buffers.`);
  }
  for (const t of r.threads.filter((x) => x.status === 'failed')) {
    out.push(`pid ${t.pid} thread ${t.threadId} did not answer: ${t.error}`);
  }
  const u = r.unreadable;
  if (u.count) {
    const hint = r.uid === 0 ? 'even for root (another namespace, or a protected process)' : 'run as their user or as root to see them';
    out.push(`${u.count} process${u.count === 1 ? '' : 'es'} could not be read (${uidSummary(u.processes.map((p) => p.uid))}): the descriptors and mappings they hold are not counted; ${hint}.`);
  } else {
    out.push('Every process could be read.');
  }
  return out.join('\n');
}

function csvField(v: string): string {
  return /[",\n\r]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v;
}

/** One row per buffer, with a header. Lists are separated by spaces. */
export function formatCsv(r: Report): string {
  const header = ['kind', 'key', 'name', 'exporter', 'exporter_pid', 'exporter_thread', 'size', 'refs', 'count', 'maps', 'attachments', 'importers', 'holders', 'mappers', 'storage_size', 'page_size'];
  const rows = r.buffers.map((b) => [
    b.kind, b.key, b.name, b.exporter,
    b.exporterPid ?? '', b.exporterThread ?? '', b.size, b.refs ?? '', b.count ?? '', b.maps,
    b.attachments.map((a) => `${a.device}:${a.kind}:${a.maps}`).join(' '),
    b.importers.map((i) => `${i.pid}/${i.threadId}`).join(' '),
    b.holders.join(' '), b.mappers.join(' '),
    b.storage?.allocated ? b.storage.size : '', b.storage?.allocated ? b.storage.pageSize : '',
  ].map((v) => csvField(String(v))).join(','));
  return [header.join(','), ...rows].join('\n');
}
