/**
 * Who is on the other side of a Unix socket, as the kernel tells it: the identity of a
 * process's user namespace and the overflow uid, for checks of `SO_PEERCRED` and of a message's
 * `SCM_CREDENTIALS` (see `native.peerCred`, `native.setPassCred`, `native.recvmsg(..., true)`).
 *
 * Credentials are translated into the reader's namespaces: a uid that has no mapping in the
 * reader's user namespace reads as the overflow uid (`/proc/sys/kernel/overflowuid`, usually
 * 65534), and a pid outside its pid namespace reads as 0. So an equal uid proves the same user
 * only when it is not the overflow uid, and only between processes of one user namespace.
 *
 * @module
 */
import { readFileSync, statSync } from 'node:fs';
import { DmaBufError } from '../core/errors.js';
import { native, type PeerCred } from '../native/binding.js';

/** The overflow uid when `/proc/sys/kernel/overflowuid` cannot be read: the kernel's default. */
export const DEFAULT_OVERFLOW_UID = 65534;

let overflow: number | null = null;

/** The uid that stands for "unmapped in this user namespace" (read once per thread). */
export function overflowUid(): number {
  if (overflow === null) {
    try {
      const v = Number(readFileSync('/proc/sys/kernel/overflowuid', 'utf8').trim());
      overflow = Number.isInteger(v) && v >= 0 ? v : DEFAULT_OVERFLOW_UID;
    } catch {
      overflow = DEFAULT_OVERFLOW_UID;
    }
  }
  return overflow;
}

/**
 * Whether some uid has no mapping in this process's user namespace (`/proc/self/uid_map` does
 * not cover all 2^32 - 1 uids): then a peer's uid that reads as {@link overflowUid} may be any
 * unmapped user. False in the initial user namespace, where the overflow uid is a real user
 * (`nobody`). True when the map cannot be read.
 */
export function someUidsUnmapped(): boolean {
  try {
    let covered = 0;
    for (const line of readFileSync('/proc/self/uid_map', 'utf8').split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f.length === 3) covered += Number(f[2]);
    }
    return covered < 0xffffffff;
  } catch {
    return true;
  }
}

/**
 * The identity of process `pid`'s user namespace: `dev:ino` of `/proc/<pid>/ns/user`, equal for
 * every process of that namespace. Reading another user's process needs the right to inspect
 * it (ptrace read access).
 *
 * @throws {DmaBufError} `ESRCH` when no such process is visible; `EACCES` when it may not be
 *   inspected; `EINVAL` for a pid that is not a positive integer.
 */
export function userNamespaceOf(pid: number | 'self'): string {
  const op = 'userNamespace';
  if (pid !== 'self' && !(Number.isSafeInteger(pid) && pid > 0)) {
    throw new DmaBufError('EINVAL', `${op}: ${String(pid)} is not a process id (a pid outside this pid namespace reads as 0)`, { op });
  }
  try {
    const st = statSync(`/proc/${pid}/ns/user`, { bigint: true });
    return `${st.dev}:${st.ino}`;
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code === 'ENOENT') throw new DmaBufError('ESRCH', `${op}: no process ${pid} in this pid namespace`, { op, syscall: 'stat', cause: err });
    if (code === 'EACCES' || code === 'EPERM') throw new DmaBufError('EACCES', `${op}: may not inspect process ${pid} (/proc/${pid}/ns/user)`, { op, syscall: 'stat', cause: err });
    throw new DmaBufError(code ?? 'EIO', `${op}: /proc/${pid}/ns/user: ${(err as Error).message}`, { op, syscall: 'stat', cause: err });
  }
}

/**
 * Whether process `pid` lives in this process's user namespace. Exact where this process may
 * inspect `pid` (it compares {@link userNamespaceOf} both). Where it may not (a process of
 * another user, such as root seen from an unprivileged exporter), and only where this
 * namespace maps every uid (the initial one), it compares the uid and gid maps of both as this
 * process reads them (`/proc/<pid>/uid_map` is readable by everyone; a map is shown relative to
 * the reader's namespace, which shows all of it only when the reader's maps every uid): a
 * process of another user namespace shows other maps, unless a privileged process gave that
 * namespace the very maps of this one.
 *
 * @throws {DmaBufError} as {@link userNamespaceOf}; `EACCES` only where the maps cannot tell.
 */
export function sameUserNamespace(pid: number): boolean {
  try {
    return userNamespaceOf(pid) === userNamespaceOf('self');
  } catch (err) {
    if (!DmaBufError.is(err, 'EACCES') || someUidsUnmapped()) throw err;
  }
  const maps = (who: number | 'self'): string => {
    try {
      return ['uid_map', 'gid_map'].map((f) => readFileSync(`/proc/${who}/${f}`, 'utf8')).join('|');
    } catch (err) {
      throw new DmaBufError('ESRCH', `userNamespace: cannot read the id maps of process ${who}`, { op: 'userNamespace', cause: err });
    }
  };
  return maps(pid) === maps('self');
}

/**
 * The peer of a connected Unix socket, and whether its process lives in this process's user
 * namespace, checked against pid reuse: the namespace is compared while the peer's process
 * (held by a pidfd from `SO_PEERPIDFD` where the kernel has it, Linux 6.5) is known to be
 * alive. Returns null when the peer cannot be identified (gone, invisible in this pid
 * namespace, its namespace unreadable).
 */
export function peerIdentity(fd: number): { cred: PeerCred; sameUserNs: boolean } | null {
  let cred: PeerCred;
  try {
    cred = native.peerCred(fd);
  } catch {
    return null;
  }
  if (cred.pid <= 0) return null;
  let pidfd = -1;
  try {
    pidfd = native.peerPidfd(fd);
  } catch (err) {
    // ENOPROTOOPT: a kernel without SO_PEERPIDFD; check without it. Anything else (ESRCH: the
    // peer is gone): no identity.
    if (!DmaBufError.is(err, 'ENOPROTOOPT')) return null;
  }
  try {
    const sameUserNs = sameUserNamespace(cred.pid);
    // A pidfd turns readable when its process exits: then the pid may name another process.
    if (pidfd >= 0 && (native.pollNow(pidfd, native.constants.POLLIN) & native.constants.POLLIN) !== 0) return null;
    return { cred, sameUserNs };
  } catch {
    return null;
  } finally {
    if (pidfd >= 0) native.close(pidfd);
  }
}
