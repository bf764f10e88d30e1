/**
 * The only module that loads the native addons: `dmabuf.node` and, optionally,
 * `dmabuf_views.node`, from a build from source or the prebuilt ones for this platform (see
 * `addon.ts`).
 *
 * The addon is a thin layer of system-call wrappers written in C through Node-API. Each
 * wrapper throws, on failure, an `Error` with `code` (the errno name, e.g. `'EBADF'`),
 * `errno` (positive number) and `syscall`; {@link native} converts every such error into a
 * {@link DmaBufError} with the same code. On a platform without support (not Linux, or the
 * addon failed to load) every function throws `ENODEV`, saying why.
 *
 * CPU views (`mappingView`) are made, when it can, by `dmabuf_views.node`, a small C++ addon
 * built for one Node ABI whose ArrayBuffers V8 does not count as external memory: handing off
 * a 64 MiB or 1 GiB buffer then starts no garbage collection. Without it (another Node ABI,
 * not built, or `DMABUF_COUNTED_VIEWS=1` in the environment) views are counted ones, which
 * work the same but start "external memory pressure" collections; {@link viewsUncounted} and
 * {@link countedViewsReason} say which.
 *
 * @module
 */
import { createRequire } from 'node:module';
import { markAsUntransferable } from 'node:worker_threads';
import { DmaBufError } from '../core/errors.js';
import { addonPath, viewsAddonPaths } from './addon.js';
import type { KernelBinding } from './kernel-binding.js';

/** An mmap'ed region owned by the addon. Opaque. */
export type MappingHandle = object & { readonly __mapping: unique symbol };
/** A libuv poll watcher owned by the addon. Opaque. */
export type PollHandle = object & { readonly __poll: unique symbol };

/** Result of {@link NativeBinding.recvmsg}. */
export interface RecvResult {
  /** The bytes received (length 0 with no fds means end-of-file). */
  data: Buffer;
  /** Descriptors received with SCM_RIGHTS; always close-on-exec (MSG_CMSG_CLOEXEC). */
  fds: number[];
  /** The msg_flags the kernel returned (MSG_TRUNC, MSG_CTRUNC, ...), less the echoed MSG_CMSG_CLOEXEC. */
  flags: number;
  /** The sender's credentials (SCM_CREDENTIALS), when asked for and the message carried them. */
  cred?: PeerCred;
}

/** Result of {@link NativeBinding.fstat}. */
export interface StatResult {
  dev: bigint;
  ino: bigint;
  /** st_mode, including the file type bits (S_IFMT). */
  mode: number;
  size: number;
  blksize: number;
}

/** SO_PEERCRED of a Unix socket. */
export interface PeerCred { pid: number; uid: number; gid: number; }

/** The functions of the addon. Numbers are plain descriptors; sizes are safe integers. */
export interface NativeBinding extends KernelBinding {
  /** memfd_create(2). `flags` are MFD_* (MFD_CLOEXEC is always added). */
  memfdCreate(name: string, flags: number): number;
  /** fcntl(F_ADD_SEALS). */
  addSeals(fd: number, seals: number): void;
  /** fcntl(F_GET_SEALS). */
  getSeals(fd: number): number;
  /** ftruncate(2). */
  ftruncate(fd: number, size: number): void;
  /** fallocate(2). */
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /** fcntl(F_DUPFD_CLOEXEC, 0) or, with cloexec false, fcntl(F_DUPFD, 0). */
  dup(fd: number, cloexec: boolean): number;
  /** close(2); never retried on EINTR (which is reported as success: Linux has released the fd). */
  close(fd: number): void;
  /** fstat(2). */
  fstat(fd: number): StatResult;
  /** fstat(2): the file's `dev:ino`, as `fileKey` gives it, with no object built. */
  statKey(fd: number): string;
  /** fstat(2) and F_GET_SEALS of a memory descriptor: `[mode, size, seals]`, seals -1 when it has none (not a memfd). */
  memoryInfo(fd: number): [number, number, number];
  /** fstatfs(2): the f_type magic of the file system holding `fd`. */
  fstatfsType(fd: number): number;
  /** fcntl(F_GETFD/F_SETFD) FD_CLOEXEC. Returns the previous state. */
  setCloexec(fd: number, on: boolean): boolean;
  /** fcntl(F_GETFL) and F_SETFL toggling O_NONBLOCK. Returns the previous state. */
  setNonblock(fd: number, on: boolean): boolean;
  /** getsockopt SO_DOMAIN and SO_TYPE; throws ENOTSOCK for a non-socket. */
  socketInfo(fd: number): { domain: number; type: number };
  /** getsockopt SO_PEERCRED. */
  peerCred(fd: number): PeerCred;
  /** getsockopt SO_PEERCRED: the pid alone. */
  peerPid(fd: number): number;
  /** setsockopt SO_PASSCRED: while on, the kernel attaches the sender's credentials to each message. */
  setPassCred(fd: number, on: boolean): void;
  /** socketpair(AF_UNIX, type | SOCK_CLOEXEC [| SOCK_NONBLOCK]). */
  socketpair(type: number, nonblock: boolean): [number, number];
  /** socket(AF_UNIX, type | SOCK_CLOEXEC [| SOCK_NONBLOCK]). */
  socket(type: number, nonblock: boolean): number;
  /**
   * bind(2) to a Unix address. A name starting with '\0' is abstract; otherwise a path.
   */
  bind(fd: number, address: string): void;
  /** listen(2). */
  listen(fd: number, backlog: number): void;
  /** accept4(2) with SOCK_CLOEXEC [| SOCK_NONBLOCK]; throws EAGAIN when none is pending. */
  accept(fd: number, nonblock: boolean): number;
  /** connect(2) to a Unix address (same address form as bind). */
  connect(fd: number, address: string): void;
  /** getsockname(2) of a Unix socket: '' for unnamed, '\0name' for abstract, else the path. */
  sockName(fd: number): string;
  /**
   * sendmsg(2) of `data` (may be empty only when fds are given) with `fds` as SCM_RIGHTS
   * (at most 253). `flags` are MSG_* (MSG_NOSIGNAL is always added). Returns bytes sent;
   * EAGAIN is thrown.
   */
  sendmsg(fd: number, data: Uint8Array, fds: number[], flags: number): number;
  /** The same; with `softEagain` true, EAGAIN returns -1 instead of throwing. */
  sendmsg(fd: number, data: Uint8Array, fds: number[], flags: number, softEagain: true): number;
  /**
   * recvmsg(2) of up to `maxBytes` bytes and `maxFds` descriptors. MSG_CMSG_CLOEXEC is always
   * added. Descriptors of a truncated control message are closed by the addon, never leaked.
   */
  recvmsg(fd: number, maxBytes: number, maxFds: number, flags: number): RecvResult;
  /**
   * The same; with `softEagain` true, EAGAIN returns null instead of throwing. With `cred`
   * true there is room for SCM_CREDENTIALS too, and the result carries them when present.
   */
  recvmsg(fd: number, maxBytes: number, maxFds: number, flags: number, softEagain: true, cred?: boolean): RecvResult | null;
  /** mmap(2) of `length` bytes of `fd` at `offset`. The handle's finalizer unmaps if needed. */
  mmap(fd: number, length: number, offset: number, prot: number, flags: number): MappingHandle;
  /** The start address of the mapping. */
  mappingAddress(handle: MappingHandle): bigint;
  /** The length of the mapping. */
  mappingLength(handle: MappingHandle): number;
  /**
   * A new external ArrayBuffer over `[offset, offset + length)` of the mapping, uncounted
   * when a view factory is set (see {@link NativeBinding.setViewFactory}), and marked
   * untransferable (postMessage and structuredClone copy it). The mapping stays until every
   * view is detached or collected (and no buffer it was transferred to with
   * `ArrayBuffer.prototype.transfer` remains) AND {@link NativeBinding.munmap} was called.
   * Throws EBADF after munmap, EACCES for a mapping without PROT_READ (writing through a view
   * of a read-only mapping is not prevented and crashes the process).
   */
  mappingView(handle: MappingHandle, offset: number, length: number): ArrayBuffer;
  /** Detaches a view made by mappingView (byteLength becomes 0); idempotent. */
  detachView(view: ArrayBuffer): void;
  /**
   * Makes later views of this thread with `factory` (the `factory` export of
   * dmabuf_views.node: uncounted views), or, with null, counted ones again. Views already
   * made keep their kind. Throws EINVAL for anything else, or a factory of another version.
   */
  setViewFactory(factory: object | null): void;
  /** Drops the owner's reference; the memory is unmapped once no view remains. Idempotent. */
  munmap(handle: MappingHandle): void;
  /** madvise(2) on part of a mapping. */
  madvise(handle: MappingHandle, offset: number, length: number, advice: number): void;
  /** Whether the mapping has been unmapped for real (for tests). */
  mappingUnmapped(handle: MappingHandle): boolean;
  /**
   * Starts a uv_poll watcher on `fd` for `events` (UV_READABLE | UV_WRITABLE | UV_DISCONNECT).
   * `callback(status, events)` runs on the event loop; status < 0 is a libuv error.
   * The watcher is unref'd (does not keep the loop alive) unless {@link pollRef} is called.
   * libuv sets `fd` to O_NONBLOCK; a second watcher on the same fd throws EEXIST; the fd must
   * not be closed while watched. A handle that is garbage-collected while open is closed.
   */
  pollStart(fd: number, events: number, callback: (status: number, events: number) => void): PollHandle;
  /** Changes the watched events (0 stops watching, the handle stays usable). EBADF once closed. */
  pollUpdate(handle: PollHandle, events: number): void;
  /** Whether the watcher keeps the event loop alive. EBADF once closed. */
  pollRef(handle: PollHandle, ref: boolean): void;
  /** Stops and closes the watcher; the fd itself is not closed. Idempotent. */
  pollClose(handle: PollHandle): void;
  /** poll(2) of one descriptor with timeout 0: the revents (POLLIN, POLLHUP, POLLRDHUP, ...). */
  pollNow(fd: number, events: number): number;
  /**
   * Registers `fd` to be closed when this JavaScript environment (the main thread or a worker)
   * ends: descriptors belong to the process, and a worker that ends would otherwise leave its
   * descriptors open (and the buffers they hold alive).
   */
  ownFd(fd: number): void;
  /** Unregisters `fd` (call it before closing `fd`). */
  disownFd(fd: number): void;
  /** True the first time it is called in this process (every thread shares the flag). */
  firstUse(): boolean;
  /** eventfd(2) with EFD_CLOEXEC | flags. */
  eventfd(initval: number, flags: number): number;
  /** ioctl(2) with a pointer argument: `arg` is passed in and out. Returns ioctl's result. */
  ioctl(fd: number, request: number, arg: Uint8Array): number;
  /** pidfd_open(2). */
  pidfdOpen(pid: number): number;
  /** pidfd_getfd(2). */
  pidfdGetfd(pidfd: number, targetFd: number): number;
  /**
   * Socket diagnostics (`NETLINK_SOCK_DIAG`, `UNIX_DIAG`, what `ss -x` shows): the inode of the
   * peer of the Unix socket with inode `ino`, 0 when the peer's last descriptor is closed.
   * Throws `ENOENT` when no such socket exists in this network namespace, or when the kernel
   * lacks `CONFIG_UNIX_DIAG` (ask about a socket that exists to tell them apart).
   */
  unixDiagPeer(ino: number): number;
  /** ioctl(SIOCOUTQ): bytes a socket sent that its peer has not received yet. */
  sockOutq(fd: number): number;
  /**
   * An epoll descriptor watching `fd` edge-triggered with an empty mask: it turns readable when
   * a wake-up of `fd` (a state change such as the peer's last close) finds `fd` with EPOLLHUP
   * or EPOLLERR, never for data. Watch it with {@link pollStart}; close it with {@link close}.
   */
  hupWatch(fd: number): number;
  /** Takes the pending report of a {@link hupWatch}: POLLHUP/POLLERR bits, or 0. */
  hupWatchTake(epfd: number): number;
  /** shutdown(2) of a socket; `how` is SHUT_RD, SHUT_WR or SHUT_RDWR. */
  shutdown(fd: number, how: number): void;
  /**
   * getsockopt(SO_PEERPIDFD), Linux 6.5: a pidfd of the process that connected the peer (it
   * stays that process even if its pid is reused). `ENOPROTOOPT` on older kernels.
   */
  peerPidfd(fd: number): number;
  /** Constants of the platform. */
  constants: NativeConstants;
}

/** The constants the addon exports (values of the running platform's headers). */
export interface NativeConstants {
  MFD_CLOEXEC: number; MFD_ALLOW_SEALING: number; MFD_HUGETLB: number; MFD_HUGE_2MB: number;
  MFD_NOEXEC_SEAL: number;
  F_SEAL_SEAL: number; F_SEAL_SHRINK: number; F_SEAL_GROW: number; F_SEAL_WRITE: number;
  F_SEAL_FUTURE_WRITE: number;
  PROT_NONE: number; PROT_READ: number; PROT_WRITE: number;
  MAP_SHARED: number; MAP_PRIVATE: number; MAP_POPULATE: number; MAP_NORESERVE: number;
  MADV_HUGEPAGE: number; MADV_DONTNEED: number; MADV_WILLNEED: number; MADV_POPULATE_READ: number;
  MADV_POPULATE_WRITE: number;
  SOCK_STREAM: number; SOCK_DGRAM: number; SOCK_SEQPACKET: number; AF_UNIX: number;
  MSG_DONTWAIT: number; MSG_PEEK: number; MSG_TRUNC: number; MSG_CTRUNC: number;
  MSG_NOSIGNAL: number; MSG_EOR: number; MSG_WAITALL: number;
  SHUT_RD: number; SHUT_WR: number; SHUT_RDWR: number;
  UV_READABLE: number; UV_WRITABLE: number; UV_DISCONNECT: number; UV_PRIORITIZED: number;
  EFD_NONBLOCK: number; EFD_SEMAPHORE: number;
  FALLOC_FL_KEEP_SIZE: number;
  S_IFMT: number; S_IFSOCK: number; S_IFREG: number; S_IFIFO: number;
  HUGETLBFS_MAGIC: number; TMPFS_MAGIC: number;
  POLLIN: number; POLLOUT: number; POLLERR: number; POLLHUP: number; POLLRDHUP: number;
  PAGE_SIZE: number;
}

interface NativeErrorLike { code?: unknown; errno?: unknown; syscall?: unknown; message?: unknown }

/** Converts an error thrown by the addon into a {@link DmaBufError} (same code). */
export function fromNativeError(err: unknown, op: string): DmaBufError {
  if (err instanceof DmaBufError) return err;
  const e = (err ?? {}) as NativeErrorLike;
  const code = typeof e.code === 'string' ? e.code : 'EIO';
  const syscall = typeof e.syscall === 'string' ? e.syscall : undefined;
  const errno = typeof e.errno === 'number' ? e.errno : undefined;
  const detail = typeof e.message === 'string' ? e.message : String(err);
  return new DmaBufError(code, `${op}: ${detail}`, { syscall, errno, op, cause: err });
}

/** The first line of an error's message. */
function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split('\n')[0] ?? '';
}

function load(): { binding: NativeBinding | null; reason: string } {
  if (process.platform !== 'linux') {
    return { binding: null, reason: `dma-buf sharing needs Linux; this is ${process.platform}` };
  }
  const require = createRequire(import.meta.url);
  try {
    return { binding: require(addonPath()) as NativeBinding, reason: '' };
  } catch (err) {
    return {
      binding: null,
      reason: `the native addon failed to load (${firstLine(err)}); run "npm install" in the package folder, which uses the prebuilt addon for this platform or builds one (python3, make and a C compiler needed)`,
    };
  }
}

/** What dmabuf_views.node exports (see native/views.cc). */
interface ViewsAddon { factory?: object; moduleVersion?: number; reason?: string }

/**
 * Gives the addon the view factory of dmabuf_views.node. Returns why views stay counted, or
 * `''` when they are uncounted. Never throws: views then simply stay counted.
 */
function useUncountedViews(b: NativeBinding): string {
  if (process.env['DMABUF_COUNTED_VIEWS'] === '1') return 'DMABUF_COUNTED_VIEWS=1 is set';
  const files = viewsAddonPaths();
  if (files.length === 0) return `no dmabuf_views.node for this platform and Node ABI ${process.versions.modules}`;
  const reasons: string[] = [];
  for (const file of files) {
    let views: ViewsAddon;
    try {
      views = createRequire(import.meta.url)(file) as ViewsAddon;
    } catch (err) {
      reasons.push(`dmabuf_views.node did not load (${firstLine(err)})`);
      continue;
    }
    if (!views.factory) {
      reasons.push(views.reason || 'dmabuf_views.node offers no view factory');
      continue;
    }
    try {
      b.setViewFactory(views.factory);
      return '';
    } catch (err) {
      reasons.push(`dmabuf_views.node's factory was refused (${firstLine(err)})`);
    }
  }
  return reasons.join('; ');
}

/** Whether `markAsUntransferable` leaves a buffer detachable by Node-API (Node 22 and before). */
const MARKING_KEEPS_DETACH = Number(process.versions.node.split('.')[0]) <= 22;

const loaded = load();
const viewsReason = loaded.binding ? useUncountedViews(loaded.binding) : loaded.reason;

/** Why the addon is unavailable, or `''` when it loaded. */
export const unavailableReason: string = loaded.reason;

/** Whether the addon loaded (Linux with a built addon). */
export const available: boolean = loaded.binding !== null;

/**
 * Whether CPU views of mappings are uncounted: V8 does not count them as external memory,
 * so holding or handing off large buffers starts no garbage collection.
 */
export const viewsUncounted: boolean = viewsReason === '';

/** Why CPU views are counted ones (another Node ABI, not built, DMABUF_COUNTED_VIEWS=1), or `''`. */
export const countedViewsReason: string = viewsReason;

function wrapAll(b: NativeBinding): NativeBinding {
  const out: Record<string, unknown> = { constants: b.constants };
  for (const [name, fn] of Object.entries(b)) {
    if (typeof fn !== 'function') {
      out[name] = fn; // constants objects (constants, kernelConstants)
      continue;
    }
    out[name] = (...args: unknown[]) => {
      try {
        return (fn as (...a: unknown[]) => unknown)(...args);
      } catch (err) {
        throw fromNativeError(err, name);
      }
    };
  }
  // Node marks its own external buffers untransferable; do the same for every view, so that
  // postMessage never moves mapped memory into another thread, which the mapping's owner
  // does not see. From Node 23 on, marking gives the buffer a detach key, and Node-API's
  // detach (which has no key) then aborts the process: there the views stay unmarked, and a
  // transfer is handled by the addon (the memory stays mapped while the new buffer lives).
  if (MARKING_KEEPS_DETACH) {
    const mappingView = out['mappingView'] as NativeBinding['mappingView'];
    out['mappingView'] = (handle: MappingHandle, offset: number, length: number): ArrayBuffer => {
      const view = mappingView(handle, offset, length);
      markAsUntransferable(view);
      return view;
    };
  }
  return out as unknown as NativeBinding;
}

function unsupported(reason: string): NativeBinding {
  const fail = (): never => {
    throw new DmaBufError('ENODEV', `dmabuf is not supported here: ${reason}`, { op: 'native' });
  };
  return new Proxy({} as NativeBinding, {
    get(_t, prop) {
      if (prop === 'constants' || prop === 'kernelConstants') return fail();
      return fail;
    },
  });
}

/**
 * The addon's functions, with every failure converted into a {@link DmaBufError}.
 * On a platform without support every function throws `ENODEV`.
 */
export const native: NativeBinding = loaded.binding ? wrapAll(loaded.binding) : unsupported(loaded.reason);

/** Throws `ENODEV` (with the reason) when the addon is unavailable. */
export function assertAvailable(op: string): void {
  if (!available) throw new DmaBufError('ENODEV', `${op}: dmabuf is not supported here: ${unavailableReason}`, { op });
}

/** Registers a descriptor this library owns, so that it is closed when the thread ends; returns it. */
export function own(fd: number): number {
  native.ownFd(fd);
  return fd;
}

/** Closes a descriptor registered with {@link own}. */
export function closeOwned(fd: number): void {
  native.disownFd(fd);
  native.close(fd);
}
