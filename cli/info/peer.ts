/**
 * Whether the socket behind an endpoint may speak for the process its name gives. Any user
 * can bind any abstract name, so the name proves nothing: `@dmabuf-info.<pid>.<threadId>`
 * may be bound by another process before the real thread binds it (squatting). The kernel's
 * `SO_PEERCRED` of a connection to it tells who called `listen()` on it: that process, and
 * its effective uid then. The endpoint is believed when
 *
 * - that process is the one the name gives: the same pid, or, for a process in a nested pid
 *   namespace, the pid it sees itself as (the last `NSpid:` of `/proc/PID/status`); and
 * - that uid may speak for the process: root, or one of the process's real or effective uid
 *   (`Uid:` of `/proc/PID/status`), or the owner of `/proc/PID`. A listener whose pid was
 *   reused by another user's process fails this.
 *
 * What a believed endpoint says is attributed to the `SO_PEERCRED` pid, never to the name.
 * When no connection can be made (its queue is full), {@link holdsSocket} tells at least
 * whether the named process holds the listening socket.
 *
 * @module
 */
import { readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import type { PeerCred } from '../../src/native/binding.js';

/** The endpoint is believed, for process `pid` (in this pid namespace). */
export interface Believed { ok: true; pid: number }
/** The endpoint is not believed, and why. */
export interface NotBelieved { ok: false; reason: string }

function statusField(text: string, field: string): number[] | null {
  const m = new RegExp(`^${field}:\\s*(.*)$`, 'm').exec(text);
  if (!m) return null;
  return m[1]!.trim().split(/\s+/).map(Number);
}

/**
 * Checks `cred`, the `SO_PEERCRED` of a connection to the endpoint that names `namePid`.
 * Reads `/proc/<cred.pid>` under `proc`. Never throws.
 */
export function verifyPeer(namePid: number, cred: PeerCred, proc = '/proc'): Believed | NotBelieved {
  if (cred.pid <= 0) {
    return { ok: false, reason: `its listener's process is not in this pid namespace (SO_PEERCRED pid ${cred.pid}), so it cannot be checked` };
  }
  let status: string;
  let owner: number;
  try {
    status = readFileSync(`${proc}/${cred.pid}/status`, 'utf8');
    owner = statSync(`${proc}/${cred.pid}`).uid;
  } catch (err) {
    const code = (err as { code?: string }).code ?? 'EIO';
    return { ok: false, reason: `its listener's process ${cred.pid} cannot be checked (${proc}/${cred.pid}: ${code})` };
  }
  if (cred.pid !== namePid) {
    const nspid = statusField(status, 'NSpid');
    const inner = nspid && nspid.length > 1 ? nspid[nspid.length - 1] : undefined;
    if (inner !== namePid) {
      return { ok: false, reason: `pid ${cred.pid} (uid ${cred.uid}) listens on it, not pid ${namePid}: another process took the name` };
    }
  }
  const uids = statusField(status, 'Uid') ?? [];
  const allowed = new Set([0, owner, ...uids.slice(0, 2)]);
  if (!allowed.has(cred.uid)) {
    return { ok: false, reason: `uid ${cred.uid} listens on it, and may not speak for pid ${cred.pid} (real uid ${uids[0] ?? '?'}, effective uid ${uids[1] ?? '?'})` };
  }
  return { ok: true, pid: cred.pid };
}

/**
 * Whether process `pid` has a descriptor of the socket with inode `inode`: true, false, or
 * null when its `/proc/PID/fd` cannot be read. The weaker check, for when no connection could
 * be made to read `SO_PEERCRED` (a full connection queue). Never throws.
 */
export function holdsSocket(pid: number, inode: string, proc = '/proc'): boolean | null {
  const want = `socket:[${inode}]`;
  let fds: string[];
  try {
    fds = readdirSync(`${proc}/${pid}/fd`);
  } catch {
    return null;
  }
  for (const fd of fds) {
    try {
      if (readlinkSync(`${proc}/${pid}/fd/${fd}`) === want) return true;
    } catch {
      // closed while listing
    }
  }
  return false;
}
