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

/**
 * `s` with control characters shown as `\xNN` (`\n` as `\x0a`): names come from other
 * processes, and must not move the cursor, clear the screen or start a line of their own.
 */
export function printable(s: string): string {
  // eslint-disable-next-line no-control-regex
  return s.replace(/[\u0000-\u001f\u007f-\u009f]/g, (ch) => `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function table(header: string[], cells: string[][]): string {
  const rows = cells.map((r) => r.map(printable));
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

function threadsText(n: number): string {
  return `${n} thread${n === 1 ? '' : 's'}`;
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
  // A thread answers its own user and root: refused by another user's thread is expected;
  // refused although you are its user or root, it is in another user namespace.
  const strangers = refused.filter((t) => t.uid !== r.uid && r.uid !== 0);
  if (strangers.length) {
    out.push(`${threadsText(strangers.length)} refused to answer (another user's; ${uidSummary(strangers.map((t) => t.uid))}): ${strangers.map((t) => `pid ${t.pid}`).join(', ')}. Run as that user or as root to see their buffers.`);
  }
  const own = refused.filter((t) => !strangers.includes(t));
  if (own.length) {
    out.push(`${threadsText(own.length)} refused to answer although you are ${r.uid === 0 ? 'root' : 'their user'} (${uidSummary(own.map((t) => t.uid))}): ${own.map((t) => `pid ${t.pid}`).join(', ')}. A thread in another user namespace does not answer.`);
  }
  for (const t of r.threads.filter((x) => x.status === 'busy')) {
    out.push(`pid ${t.pid} thread ${t.threadId} is busy: ${t.error}. Try again.`);
  }
  for (const t of r.threads.filter((x) => x.status === 'timeout')) {
    out.push(`pid ${t.pid} thread ${t.threadId} did not answer: ${t.error}`);
  }
  for (const t of r.threads.filter((x) => x.status === 'failed')) {
    out.push(`pid ${t.pid} thread ${t.threadId} failed: ${t.error}`);
  }
  for (const s of r.skipped) {
    out.push(`Skipped @${printable(s.name)}, which claims to be pid ${s.pid}: ${s.reason}. Nothing it said is listed.`);
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
