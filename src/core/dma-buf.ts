/**
 * The buffer object, as `struct dma_buf`, and the framework's calls: export, fd, get, put,
 * attach, seal; map, unmap and detach are on {@link DmaBufAttachment}.
 *
 * @module
 */
import { constants as fsConstants } from 'node:fs';
import { DmaBufError } from './errors.js';
import { AsyncLock, interrupted } from './lock.js';
import { andThen, isThenable, promiseOf, type Now } from './now.js';
import { DmaBufAttachment, type AttachmentOwner } from './attachment.js';
import { Device } from './device.js';
import { checkMapDirection, isWritableDirection, type DmaDirection } from './direction.js';
import { SgTable } from './sg-table.js';
import type { CpuAccess, DmaBufOps, OpContext } from './ops.js';
import { checkCpuAccess, checkFenceAccess, parseCpuAccessOptions, waitForCpuAccess, withTimeout, type CpuAccessEndOptions, type CpuAccessOptions, type FenceAccess } from './cpu-access.js';
import { DmaResv } from '../sync/resv.js';
import type { Reservation } from '../sync/reservation.js';
import { kAdoptMapped, kAttachRemote, kExportedHere, kMaps, kOnRelease, kSetDetached } from './internal.js';
import { warnExperimental } from './experimental.js';
import * as registry from './registry.js';
import { native, assertAvailable } from '../native/binding.js';
import { BufferFile, statKey } from '../transport/buffer-file.js';
import { hooks, type Prefetch } from './hooks.js';

/** A reference to the buffer's file: the exporter's {@link BufferFile} or an importer's. @internal */
export interface FileRef {
  readonly key: string;
  dup(cloexec: boolean): number;
  adoptFile(fd: number): void;
  /** Drops this thread's own descriptor; true when no descriptor remains anywhere. */
  dropFile(): boolean;
  checkEof(): boolean;
  close(): void;
}

/** `O_RDONLY`: importers may only map for reading. */
export const O_RDONLY: number = fsConstants.O_RDONLY;
/** `O_RDWR` (the default): importers may map for writing. */
export const O_RDWR: number = fsConstants.O_RDWR;
/** `O_CLOEXEC`: accepted for compatibility; `fd()` is close-on-exec by default anyway. */
export const O_CLOEXEC: number = 0o2000000;

const ACCMODE = 3;
const NAME_MAX = 255;

/** What {@link DmaBuf.export} takes, as `dma_buf_export`'s arguments. */
export interface ExportInfo<Priv> {
  /** The exporter's operations. `mapDmaBuf`, `unmapDmaBuf` and `release` are mandatory. */
  ops: DmaBufOps<Priv>;
  /** Size in bytes: a positive safe integer. */
  size: number;
  /** The exporter's private data (mandatory, as in the kernel; anything but null/undefined). */
  priv: Priv;
  /** `O_RDWR` (default) or `O_RDONLY`, optionally `| O_CLOEXEC`. */
  flags?: number;
  /** Shown in introspection (`/proc/PID/fd` of the storage, `dmabuf info`). */
  name?: string;
  /** Who exported it (a heap's name); shown in introspection. Default `'anonymous'`. */
  exporter?: string;
  /**
   * The buffer's reservation object (`dma_buf_export_info.resv`): one the exporter shares
   * between buffers, or a proxy of one that lives elsewhere. Default: a new `DmaResv`.
   */
  resv?: Reservation;
}

/** Options of {@link DmaBuf.fd}. */
export interface FdOptions {
  /** Close the descriptor on exec (default true). Node's `spawn` clears it on stdio copies. */
  cloexec?: boolean;
}

/** Options of calls that may wait. */
export interface WaitOptions {
  /** Gives up waiting; the call then fails with `EINTR`. */
  signal?: AbortSignal;
}

/** Options of {@link DmaBuf.get}. */
export interface GetOptions extends WaitOptions {
  /**
   * How long to wait for the exporter of a buffer of another thread or process to answer, in
   * milliseconds (default 2000). A socket that does not answer in time is not a dma-buf.
   */
  timeout?: number;
}

const kCreate = Symbol('dmabuf.create');
/** @internal */
export const kCreateImported = Symbol('dmabuf.createImported');
/** @internal */
export const kReacquire = Symbol('dmabuf.reacquire');

function describeFileType(mode: number): string {
  const c = native.constants;
  switch (mode & c.S_IFMT) {
    case c.S_IFREG: return 'a regular file';
    case c.S_IFIFO: return 'a pipe';
    case c.S_IFSOCK: return 'a socket';
    default: return 'a file of another kind';
  }
}

function checkExportInfo<Priv>(info: ExportInfo<Priv>): void {
  const op = 'export';
  const fail = (msg: string): never => { throw new DmaBufError('EINVAL', `${op}: ${msg}`, { op }); };
  if (typeof info !== 'object' || info === null) fail('expected an object { ops, size, priv }');
  const { ops, size, priv, flags, name, exporter } = info;
  if (priv === undefined || priv === null) fail('priv is missing: an exporter must pass its private data');
  if (typeof ops !== 'object' || ops === null) fail('ops is missing: pass the exporter\'s DmaBufOps');
  for (const m of ['mapDmaBuf', 'unmapDmaBuf', 'release'] as const) {
    if (typeof ops[m] !== 'function') fail(`ops.${m} is missing: it is mandatory`);
  }
  for (const m of ['attach', 'detach', 'seal', 'beginCpuAccess', 'endCpuAccess', 'setName'] as const) {
    if (ops[m] !== undefined && typeof ops[m] !== 'function') fail(`ops.${m} must be a function when given`);
  }
  if (!Number.isSafeInteger(size) || size <= 0) fail(`size must be a positive safe integer, got ${String(size)}`);
  if (flags !== undefined) {
    if (!Number.isInteger(flags)) fail(`flags must be an integer, got ${String(flags)}`);
    const f = flags as number;
    if ((f & ~(ACCMODE | O_CLOEXEC)) !== 0) fail(`flags may only hold O_RDWR or O_RDONLY and O_CLOEXEC, got 0o${f.toString(8)}`);
    if ((f & ACCMODE) !== O_RDONLY && (f & ACCMODE) !== O_RDWR) fail('flags must give O_RDWR or O_RDONLY');
  }
  if (name !== undefined && (typeof name !== 'string' || name.length > NAME_MAX || name.includes('\0'))) {
    fail(`name must be a string of at most ${NAME_MAX} characters without NUL`);
  }
  if (exporter !== undefined && (typeof exporter !== 'string' || exporter.length > NAME_MAX)) {
    fail(`exporter must be a string of at most ${NAME_MAX} characters`);
  }
  if (info.resv !== undefined && !isReservation(info.resv)) {
    fail('resv must be a reservation object (a DmaResv, or an object with add, addFd, fences, test, wait, exportFence and exportFd)');
  }
}

const RESERVATION_METHODS = ['add', 'addFd', 'fences', 'test', 'wait', 'exportFence', 'exportFd'] as const;

function isReservation(r: unknown): r is Reservation {
  if (r instanceof DmaResv) return true;
  if (typeof r !== 'object' || r === null) return false;
  return RESERVATION_METHODS.every((m) => typeof (r as Record<string, unknown>)[m] === 'function');
}

/** `EINVAL` unless `device` is a device its constructor built (see {@link Device.isDevice}). */
function checkDevice(op: string, device: unknown): void {
  if (Device.isDevice(device)) return;
  const what = device instanceof Device
    ? 'an object that inherits from a Device class but was not built by its constructor (Object.create?), so it has no checked constraints'
    : `${device === null ? 'null' : typeof device}`;
  throw new DmaBufError('EINVAL', `${op}: expected a Device (for example new CpuDevice()), got ${what}`, { op });
}

function warnReleaseFailure(buf: { name: string; exporter: string }, err: unknown): void {
  const msg = err instanceof Error ? err.message : String(err);
  process.emitWarning(`dmabuf: release of buffer "${buf.name}" (${buf.exporter}) threw: ${msg}`, 'DmaBufWarning');
}

let nextId = 1;

/**
 * A shared buffer. Exporters create it with {@link DmaBuf.export}; importers get it from a
 * descriptor with {@link DmaBuf.get}, attach their devices, map, unmap, detach and put it.
 *
 * @example
 * ```ts
 * const buf = systemHeap.allocate(4096, { name: 'frame' });
 * const att = await buf.attach(new CpuDevice());
 * const sgt = await att.map('bidirectional');
 * sgt.segments[0].view!.fill(7);
 * await att.unmap(sgt);
 * await att.detach();
 * buf.put();
 * ```
 */
export class DmaBuf<Priv = unknown> implements Disposable {
  /** Size in bytes. */
  readonly size: number;
  /** The exporter's operations. */
  readonly ops: DmaBufOps<Priv>;
  /** The exporter's private data. */
  readonly priv: Priv;
  /** Who exported it. */
  readonly exporter: string;
  /** A number unique in this thread, for introspection. */
  readonly id: number;
  /** `O_RDWR` or `O_RDONLY` (with `O_CLOEXEC` if given at export). */
  readonly flags: number;
  #name: string;
  #file: FileRef;
  #refs = 1;
  #released = false;
  #sealed = false;
  #lock = new AsyncLock();
  #attachments = new Set<DmaBufAttachment<Priv>>();
  #mapCount = 0;
  #writableMapCount = 0;
  #owner: AttachmentOwner;
  #onRelease: (() => void)[] = [];
  #resv: Reservation | undefined;

  /** @internal use {@link DmaBuf.export}. */
  constructor(token: symbol, info: ExportInfo<Priv>, file: FileRef) {
    if (token !== kCreate) {
      throw new DmaBufError('EINVAL', 'new DmaBuf: use DmaBuf.export() or DmaBuf.get()', { op: 'new DmaBuf' });
    }
    this.size = info.size;
    this.ops = info.ops;
    this.priv = info.priv;
    this.flags = info.flags ?? O_RDWR;
    this.#name = info.name ?? '';
    this.exporter = info.exporter ?? 'anonymous';
    this.id = nextId++;
    this.#file = file;
    this.#resv = info.resv;
    for (const fn of hooks.onCreate) fn(this as DmaBuf);
    this.#owner = {
      map: (a, d, s) => this.#map(a, d, s),
      unmap: (a, t) => this.#unmap(a, t),
      detach: (a) => this.#detach(a),
    };
  }

  /**
   * Exports a buffer (`dma_buf_export`): ties the exporter's ops and private data to a new
   * buffer file. The caller holds the one reference; release runs after it is put and
   * every descriptor of the file is closed.
   *
   * @throws {DmaBufError} `EINVAL` for a missing `priv`, an `ops` without `mapDmaBuf`,
   *   `unmapDmaBuf` or `release`, a size that is not a positive safe integer, or bad flags;
   *   `ENODEV` on a platform without support; `EMFILE` when out of descriptors.
   */
  static export<Priv>(info: ExportInfo<Priv>): DmaBuf<Priv> {
    warnExperimental();
    assertAvailable('export');
    checkExportInfo(info);
    const file = BufferFile.create();
    const buf = new DmaBuf<Priv>(kCreate, info, file);
    registry.register(buf);
    file.watch({
      onEof: () => buf.#maybeRelease(),
      onMessage: (data, fds, flags, cred) => {
        if (hooks.onFileMessage) hooks.onFileMessage(buf as DmaBuf, data, fds, flags, cred);
        else for (const fd of fds) native.close(fd);
      },
    });
    return buf;
  }

  /**
   * Gets the buffer of a descriptor (`dma_buf_get`) and takes a reference on it, which the
   * caller puts with {@link put}. The caller keeps owning `fd`. In the exporter's thread this
   * is the very same object.
   *
   * @throws {DmaBufError} `EBADF` when `fd` is not an open descriptor; `EINVAL` when it is
   *   open but not a dma-buf (a regular file, a pipe, another socket, a socket that fails the
   *   handshake).
   */
  static async get(fd: number, options: GetOptions = {}): Promise<DmaBuf> {
    return DmaBuf.#get(fd, options, undefined);
  }

  static async #get(fd: number, options: GetOptions, prefetch: Prefetch | undefined): Promise<DmaBuf> {
    warnExperimental();
    assertAvailable('get');
    const op = 'get';
    if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) {
      throw new DmaBufError('EBADF', `${op}: ${String(fd)} is not a file descriptor`, { op });
    }
    let st;
    try {
      st = native.fstat(fd);
    } catch (err) {
      if (DmaBufError.is(err, 'EBADF')) {
        throw new DmaBufError('EBADF', `${op}: descriptor ${fd} is not open`, { op, syscall: 'fstat', errno: err.errno, cause: err });
      }
      throw err;
    }
    const key = statKey(st);
    const local = DmaBuf.#lookup(key);
    if (local) {
      local.#reacquire(fd);
      return local;
    }
    for (const importer of hooks.importers) {
      const imported = await importer({ fd, stat: st, key, lookup: () => DmaBuf.#lookup(key) }, options ?? {}, prefetch);
      if (imported) return imported;
    }
    throw new DmaBufError('EINVAL', `${op}: descriptor ${fd} is ${describeFileType(st.mode)}, not a dma-buf`, { op });
  }

  /**
   * Gets the buffer of a descriptor, attaches `device` and maps it, in one call: the first
   * hand-off of a buffer in one round trip to its exporter (a HELLO that asks for the attach
   * and the map too) instead of three. The same as `get`, `attach` and `map` one after the
   * other, which it falls back to when the exporter cannot do them along with the HELLO.
   *
   * @throws {DmaBufError} what {@link get}, {@link attach} and `map` throw.
   * @example
   * ```ts
   * const { buffer, attachment, sgt } = await DmaBuf.getMapped(fd, new CpuDevice(), 'to-device');
   * ```
   */
  static async getMapped(fd: number, device: Device, direction: DmaDirection, options: GetOptions = {}): Promise<{ buffer: DmaBuf; attachment: DmaBufAttachment; sgt: SgTable }> {
    checkMapDirection('map', direction);
    checkDevice('attach', device);
    const buffer = await DmaBuf.#get(fd, options, { device, direction });
    return attachMapped(buffer, device, direction, options.signal);
  }

  static #lookup(key: string): DmaBuf | undefined {
    const local = registry.lookup(key);
    return local instanceof DmaBuf && !local.#released ? local : undefined;
  }

  /** @internal Creates an importer's buffer (its ops answered by the exporter). */
  static [kCreateImported]<P>(info: ExportInfo<P>, file: FileRef, sealed: boolean): DmaBuf<P> {
    const buf = new DmaBuf<P>(kCreate, info, file);
    buf.#sealed = sealed;
    registry.register(buf);
    return buf;
  }

  /** @internal Takes one more reference (an importer's get of a buffer it already holds). */
  [kReacquire](fd: number): void {
    this.#reacquire(fd);
  }

  /** The key of the buffer's file in this machine (`dev:ino` of the socket). */
  get key(): string {
    return this.#file.key;
  }

  /** Shown in introspection. */
  get name(): string {
    return this.#name;
  }

  /** Whether importers may only read (exported `O_RDONLY`, or sealed). */
  get readOnly(): boolean {
    return (this.flags & ACCMODE) === O_RDONLY || this.#sealed;
  }

  /** Whether {@link seal} has made the contents immutable. */
  get sealed(): boolean {
    return this.#sealed;
  }

  /** Whether `release` has run. */
  get released(): boolean {
    return this.#released;
  }

  /** JavaScript references held in this thread (each put by one {@link put}). */
  get refs(): number {
    return this.#refs;
  }

  /** The live attachments. */
  get attachments(): readonly DmaBufAttachment<Priv>[] {
    return [...this.#attachments];
  }

  /** Outstanding maps over every attachment. */
  get mapCount(): number {
    return this.#mapCount;
  }

  /** Outstanding maps with a writable direction. */
  get writableMapCount(): number {
    return this.#writableMapCount;
  }

  /**
   * The buffer's reservation object (`dmabuf->resv`): the fences its users must respect, the
   * same object for every importer in every process. In the exporter's thread it is a
   * `DmaResv` (answers at once); in an importer's, a proxy whose calls go to the exporter
   * (answers with promises); for a kernel dma-buf, the kernel's own implicit fences plus the
   * fences of this thread that the kernel cannot hold. Await every result.
   *
   * @example
   * ```ts
   * await buf.resv.add(painted, 'write');      // readers in every process wait for it
   * await buf.resv.wait('read', { timeout: 100 });
   * ```
   */
  get resv(): Reservation {
    return (this.#resv ??= new DmaResv());
  }

  #assertLive(op: string): void {
    if (this.#refs <= 0) {
      throw new DmaBufError('EINVAL', `${op}: the buffer "${this.#name}" has been put; get it again from a descriptor first`, { op });
    }
  }

  /**
   * A new descriptor of the buffer's file (`dma_buf_fd`), owned by the caller: close it with
   * `fs.closeSync`, give it to a child as an extra stdio, or send it in a Unix-socket message.
   * The buffer is not released while it (or any copy of it) is open.
   *
   * @throws {DmaBufError} `EINVAL` after put; `EMFILE` when out of descriptors.
   */
  fd(options: FdOptions = {}): number {
    this.#assertLive('fd');
    return this.#file.dup(options?.cloexec ?? true);
  }

  /**
   * Puts one reference (`dma_buf_put`). When the last one is put, the exporter's `release`
   * runs once every descriptor of the file is closed and every attachment is detached.
   *
   * @throws {DmaBufError} `EINVAL` when every reference was already put.
   */
  put(): void {
    this.#assertLive('put');
    this.#refs -= 1;
    if (this.#refs === 0) {
      this.#file.dropFile();
      this.#maybeRelease();
    }
  }

  /** Puts one reference unless every reference was already put. */
  [Symbol.dispose](): void {
    if (this.#refs > 0) this.put();
  }

  #reacquire(fd: number): void {
    if (this.#refs === 0) this.#file.adoptFile(fd);
    this.#refs += 1;
  }

  /**
   * Attaches a device (`dma_buf_attach`). The exporter's `ops.attach` decides whether it can
   * share the storage with the device; when it throws, nothing is added.
   *
   * @throws {DmaBufError} `EINVAL` after put or for something that is not a {@link Device};
   *   `EBUSY` when the exporter cannot share the storage with the device.
   */
  attach(device: Device): Promise<DmaBufAttachment<Priv>> {
    return promiseOf(() => {
      this.#assertLive('attach');
      return this.#attach(device, () => this.#assertLive('attach'));
    });
  }

  /**
   * @internal A remote importer's attach: its descriptor of the file is its reference. In
   * this call when it can be (see `#attach`); may throw.
   */
  [kAttachRemote](device: Device): Now<DmaBufAttachment<Priv>> {
    const live = (): void => {
      if (this.#released) throw new DmaBufError('EINVAL', 'attach: the buffer has been released', { op: 'attach' });
    };
    live();
    return this.#attach(device, live);
  }

  /**
   * @internal For the buffer's ops, on a buffer object nobody else holds yet: records an
   * attachment of `device` whose `ops.attach` already ran (its private data `priv`) and a map
   * of it in `direction` whose `ops.mapDmaBuf` already returned `sgt`, as `attach` and `map`
   * would. Synchronous; the buffer's lock must be free.
   *
   * @throws {DmaBufError} `EINVAL` when the buffer is released or its lock is held; what
   *   `map` checks of the direction.
   */
  [kAdoptMapped](device: Device, direction: DmaDirection, priv: unknown, sgt: SgTable): DmaBufAttachment<Priv> {
    const op = 'map';
    checkDevice('attach', device);
    checkMapDirection(op, direction);
    if (this.#released || this.#lock.held || !(sgt instanceof SgTable)) {
      throw new DmaBufError('EINVAL', `${op}: cannot record a map made ahead on a buffer that is released, busy or given no table`, { op });
    }
    if (isWritableDirection(direction) && this.readOnly) {
      throw new DmaBufError('EACCES', `${op}: buffer "${this.#name}" is read-only; map it 'to-device' to read it`, { op });
    }
    const attachment = new DmaBufAttachment<Priv>(this, device, this.#owner);
    attachment.priv = priv;
    this.#attachments.add(attachment);
    this.#mapped(attachment, direction, sgt);
    return attachment;
  }

  /** @internal Whether this thread exported the buffer (and answers its importers). */
  get [kExportedHere](): boolean {
    return this.#file instanceof BufferFile && !this.#released;
  }

  /** @internal Runs `fn` once, at release. */
  [kOnRelease](fn: () => void): void {
    if (this.#released) fn();
    else this.#onRelease.push(fn);
  }


  /** Attaches with the lock held; in this call when the lock is free and `ops.attach` is synchronous. */
  #attach(device: Device, live: () => void): Now<DmaBufAttachment<Priv>> {
    const op = 'attach';
    checkDevice(op, device);
    return this.#lock.tryRun(op, () => {
      live();
      const attachment = new DmaBufAttachment<Priv>(this, device, this.#owner);
      const added = (): DmaBufAttachment<Priv> => {
        this.#attachments.add(attachment);
        return attachment;
      };
      if (!this.ops.attach) return added();
      let r: Promise<void> | void;
      try {
        r = this.ops.attach(this, device, attachment);
      } catch (err) {
        throw asOpError(err, op, 'ops.attach');
      }
      return andThen(r, added, (err: unknown) => {
        throw asOpError(err, op, 'ops.attach');
      });
    });
  }

  /**
   * Makes the contents immutable for everyone, through the exporter's `ops.seal`. Waits for
   * writable maps to be unmapped. Afterwards writable directions fail with `EACCES`.
   *
   * @throws {DmaBufError} `ENOTTY` when the exporter cannot seal; `EINTR` when `signal`
   *   aborts while waiting.
   */
  async seal(options: WaitOptions = {}): Promise<void> {
    const op = 'seal';
    this.#assertLive(op);
    const seal = this.ops.seal;
    if (!seal) throw new DmaBufError('ENOTTY', `${op}: the exporter "${this.exporter}" cannot seal its buffers`, { op });
    const signal = options?.signal;
    await this.#lock.run(op, async () => {
      this.#assertLive(op);
      if (this.#sealed) return;
      await this.waitForNoMaps({ signal }, 'writable');
      try {
        await seal.call(this.ops, this, { signal });
      } catch (err) {
        throw asOpError(err, op, 'ops.seal');
      }
      this.#sealed = true;
    }, signal);
  }

  /**
   * Renames the buffer through the exporter's `ops.setName`; a kernel dma-buf's name is set
   * with `DMA_BUF_SET_NAME` and shows in `/proc/PID/fd`, fdinfo and `dmabuf info`.
   *
   * @throws {DmaBufError} `ENOTTY` when the exporter cannot rename its buffers; `EINVAL` after
   *   put, for a name that is not a string or holds NUL, or one the exporter refuses (a kernel
   *   dma-buf's name holds at most 31 bytes).
   * @example
   * ```ts
   * buf.setName('camera-frame');
   * ```
   */
  setName(name: string): void {
    const op = 'setName';
    this.#assertLive(op);
    if (typeof name !== 'string' || name.includes('\0') || name.length > NAME_MAX) {
      throw new DmaBufError('EINVAL', `${op}: name must be a string of at most ${NAME_MAX} characters without NUL`, { op });
    }
    const setName = this.ops.setName;
    if (!setName) throw new DmaBufError('ENOTTY', `${op}: the exporter "${this.exporter}" cannot rename its buffers`, { op });
    try {
      setName.call(this.ops, this, name);
    } catch (err) {
      throw asOpError(err, op, 'ops.setName');
    }
    this.#name = name;
  }

  /**
   * Begins CPU access (`DMA_BUF_IOCTL_SYNC` start, `dma_buf_begin_cpu_access`): lets the
   * exporter make the memory coherent for the CPU (`ops.beginCpuAccess`, in the exporter's
   * process), then waits, without blocking the event loop, for the fences of the buffer's
   * reservation object that this access must respect: a reader waits for the write fences
   * (and kernel ones), a writer (`'write'`, `'read-write'`) for every fence but bookkeeping
   * ones. With `fence` (this access's own, which the caller signals when it is done), the
   * fence is added first, in the same step, so that later users wait for it. Pair it with
   * {@link endCpuAccess}. Kernel dma-bufs go through the kernel's `DMA_BUF_IOCTL_SYNC`.
   *
   * @throws {DmaBufError} `EINVAL` after put, for an unknown access or a range outside the
   *   buffer; `ETIMEDOUT` when `timeout` ran out first; `EINTR` when `signal` aborts the wait;
   *   `EPIPE` for an imported buffer whose exporter is gone; what the exporter's
   *   `beginCpuAccess` throws.
   * @example
   * ```ts
   * const reading = new DmaFence({ name: 'reading' });
   * await buf.beginCpuAccess('read', { fence: reading, timeout: 1000 });
   * const sum = sgt.segments[0].view!.reduce((a, b) => a + b, 0);
   * await buf.endCpuAccess('read');
   * reading.signal();                    // writers in every process may go on
   * ```
   */
  async beginCpuAccess(access: CpuAccess, options?: CpuAccessOptions): Promise<void> {
    const op = 'beginCpuAccess';
    this.#assertLive(op);
    checkCpuAccess(op, access);
    const { offset, length, timeout, signal, fence } = parseCpuAccessOptions(op, this.size, options);
    const begin = this.ops.beginCpuAccess;
    const resv = this.resv;
    await withTimeout(op, `the fences of "${this.#name}" (${this.exporter})`, timeout, signal, async (sig) => {
      if (begin) {
        try {
          await begin.call(this.ops, this, access, { signal: sig, offset, length });
        } catch (err) {
          throw asOpError(err, op, 'ops.beginCpuAccess');
        }
      }
      await waitForCpuAccess(resv, access, fence, sig);
    });
  }

  /**
   * Ends CPU access begun with {@link beginCpuAccess} (`DMA_BUF_IOCTL_SYNC` end): the
   * exporter makes the CPU's writes visible to devices (`ops.endCpuAccess`). Waits for
   * nothing else; a fence that tells others the CPU is done is the caller's to signal.
   *
   * @throws {DmaBufError} `EINVAL` after put, for an unknown access or a range outside the
   *   buffer; `EPIPE` for an imported buffer whose exporter is gone and that has
   *   `endCpuAccess`; what the exporter's `endCpuAccess` throws.
   * @example
   * ```ts
   * await buf.beginCpuAccess('write');
   * view.fill(0);
   * await buf.endCpuAccess('write');
   * ```
   */
  async endCpuAccess(access: CpuAccess, options?: CpuAccessEndOptions): Promise<void> {
    const op = 'endCpuAccess';
    this.#assertLive(op);
    checkCpuAccess(op, access);
    const { offset, length } = parseCpuAccessOptions(op, this.size, options);
    const end = this.ops.endCpuAccess;
    if (!end) return;
    try {
      await end.call(this.ops, this, access, { offset, length });
    } catch (err) {
      throw asOpError(err, op, 'ops.endCpuAccess');
    }
  }

  /**
   * A fence descriptor (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`), owned by the caller, that
   * snapshots what a reader (`'read'`: the write fences) or a writer (`'write'`: every fence)
   * must wait for now; fences added later do not join it. A fence file, or for a kernel
   * dma-buf whose fences are all the kernel's, a kernel sync_file. Import it anywhere with
   * `DmaFence.fromFd`; close it when done.
   *
   * @throws {DmaBufError} `EINVAL` after put or for an access other than `'read'` and
   *   `'write'`; `EPIPE` for an imported buffer whose exporter is gone; `EMFILE` when out of
   *   descriptors.
   * @example
   * ```ts
   * const fd = await buf.exportSyncFile('read');
   * const written = await DmaFence.fromFd(fd);
   * fs.closeSync(fd);
   * await written.wait();
   * ```
   */
  async exportSyncFile(access: FenceAccess): Promise<number> {
    const op = 'exportSyncFile';
    this.#assertLive(op);
    checkFenceAccess(op, access);
    return this.resv.exportFd(access);
  }

  /**
   * Adds the fence of a fence descriptor (a fence file or a kernel sync_file) to the buffer's
   * reservation object (`DMA_BUF_IOCTL_IMPORT_SYNC_FILE`): as `'write'`, readers and writers
   * wait for it; as `'read'`, writers only. The caller keeps owning `fd`.
   *
   * @throws {DmaBufError} `EINVAL` after put, for an access other than `'read'` and `'write'`,
   *   or a descriptor that is not a fence; `EBADF` for a closed descriptor; `ENOSPC` when the
   *   exporter holds as many fences from this process (or for this buffer) as its limits
   *   allow; `EACCES` for a write fence on a read-only buffer of another process; `EPIPE`
   *   when the exporter is gone.
   * @example
   * ```ts
   * await buf.importSyncFile(renderDoneFd, 'write');   // readers now wait for the render
   * ```
   */
  async importSyncFile(fd: number, access: FenceAccess): Promise<void> {
    const op = 'importSyncFile';
    this.#assertLive(op);
    checkFenceAccess(op, access);
    await this.resv.addFd(fd, access);
  }

  /**
   * For ops only, with the buffer's lock held: waits until no map (or, with `'writable'`, no
   * writable map) of any attachment is outstanding. The lock is released while waiting, so
   * unmaps proceed, and held again on return.
   *
   * @throws {DmaBufError} `EINTR` when `ctx.signal` aborts.
   */
  async waitForNoMaps(ctx: OpContext = {}, which: 'all' | 'writable' = 'all'): Promise<void> {
    const pred = which === 'all' ? () => this.#mapCount === 0 : () => this.#writableMapCount === 0;
    await this.#lock.waitUntil('waitForNoMaps', pred, ctx.signal);
  }

  /** Maps with the lock held; in this call when the lock is free and `ops.mapDmaBuf` is synchronous; may throw. */
  #map(att: DmaBufAttachment<Priv>, direction: DmaDirection, signal: AbortSignal | undefined): Now<SgTable> {
    const op = 'map';
    checkMapDirection(op, direction);
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new DmaBufError('EINVAL', `${op}: signal must be an AbortSignal`, { op });
    }
    const check = (): void => {
      if (att.detached || !this.#attachments.has(att)) {
        throw new DmaBufError('EINVAL', `${op}: the attachment is detached`, { op });
      }
      if (signal?.aborted) throw interrupted(op, signal);
      if (isWritableDirection(direction) && this.readOnly) {
        throw new DmaBufError('EACCES', `${op}: buffer "${this.#name}" is ${this.#sealed ? 'sealed' : 'read-only'}; map it 'to-device' to read it`, { op });
      }
    };
    check();
    return this.#lock.tryRun(op, () => {
      check();
      let r: Now<SgTable>;
      try {
        r = this.ops.mapDmaBuf(att, direction, { signal });
      } catch (err) {
        throw asOpError(err, op, 'ops.mapDmaBuf');
      }
      return andThen(r, (sgt) => this.#mapped(att, direction, sgt), (err: unknown) => {
        throw asOpError(err, op, 'ops.mapDmaBuf');
      });
    }, signal);
  }

  /** Records a table `ops.mapDmaBuf` returned, after checking it. */
  #mapped(att: DmaBufAttachment<Priv>, direction: DmaDirection, sgt: SgTable): SgTable {
    const op = 'map';
    if (!(sgt instanceof SgTable)) {
      throw new DmaBufError('EIO', `${op}: the exporter "${this.exporter}" returned something that is not an SgTable from mapDmaBuf`, { op });
    }
    for (const other of this.#attachments) {
      if (other[kMaps].has(sgt)) {
        throw new DmaBufError('EIO', `${op}: the exporter "${this.exporter}" returned a table that is already mapped; mapDmaBuf must return a new SgTable for every map`, { op });
      }
    }
    att[kMaps].set(sgt, direction);
    this.#mapCount += 1;
    if (isWritableDirection(direction)) this.#writableMapCount += 1;
    return sgt;
  }

  #unmap(att: DmaBufAttachment<Priv>, sgt: SgTable): Promise<void> {
    const op = 'unmap';
    const missing = (): DmaBufError => new DmaBufError('EINVAL', `${op}: the table is not a live map of this attachment (already unmapped, or mapped by another)`, { op });
    if (!att[kMaps].has(sgt)) return Promise.reject(missing());
    // Started at once when the lock is free: an exporter whose unmap is synchronous (an
    // import: the exporter is told by a notification) finishes here, with no promise job.
    return this.#lock.runNow(op, () => {
      if (!att[kMaps].has(sgt)) throw missing();
      return this.#unmapLocked(att, sgt);
    });
  }

  /** Unmaps with the lock held; synchronous when the exporter's unmap is. */
  #unmapLocked(att: DmaBufAttachment<Priv>, sgt: SgTable): Promise<void> | void {
    this.#lock.assertHeld('unmap');
    const direction = att[kMaps].get(sgt)!;
    const done = (): void => {
      att[kMaps].delete(sgt);
      this.#mapCount -= 1;
      if (isWritableDirection(direction)) this.#writableMapCount -= 1;
      this.#lock.notify();
    };
    return endingOp(() => this.ops.unmapDmaBuf(att, sgt, direction), done, 'unmap', 'ops.unmapDmaBuf');
  }

  #detach(att: DmaBufAttachment<Priv>): Promise<void> {
    const op = 'detach';
    const gone = (): DmaBufError => new DmaBufError('EINVAL', `${op}: the attachment is already detached`, { op });
    if (att.detached || !this.#attachments.has(att)) return Promise.reject(gone());
    let detachedNow = false;
    const finish = (): void => {
      this.#attachments.delete(att);
      att[kSetDetached]();
      this.#lock.notify();
    };
    const detachOp = (): Promise<void> | undefined => {
      const r = endingOp(() => this.ops.detach?.(this, att), finish, op, 'ops.detach');
      if (!r) detachedNow = true;
      return r;
    };
    // Unmaps what the attachment still has, then detaches; synchronous (started at once when
    // the lock is free) as long as the exporter's unmap and detach are.
    const locked = (): Promise<void> | void => {
      if (!this.#attachments.has(att)) throw gone();
      const maps = [...att[kMaps].keys()];
      const next = (i: number): Promise<void> | void => {
        for (; i < maps.length; i++) {
          const r = this.#unmapLocked(att, maps[i]!);
          if (r) return r.then(() => next(i + 1));
        }
        return detachOp();
      };
      return next(0);
    };
    const done = this.#lock.runNow(op, locked);
    if (detachedNow) {
      // Detached in this call (the lock is free again): the release check comes now too.
      this.#maybeRelease();
      return done;
    }
    return done.then(() => this.#maybeRelease());
  }

  #maybeRelease(): void {
    if (this.#released || this.#refs > 0 || this.#attachments.size > 0) return;
    if (!this.#file.checkEof() || this.#released) return;
    this.#released = true;
    this.#file.close();
    registry.unregister(this);
    for (const fn of this.#onRelease.splice(0)) {
      try {
        fn();
      } catch (err) {
        warnReleaseFailure(this, err);
      }
    }
    try {
      const r = this.ops.release(this);
      if (r && typeof (r as Promise<void>).then === 'function') {
        (r as Promise<void>).catch((err: unknown) => warnReleaseFailure(this, err));
      }
    } catch (err) {
      warnReleaseFailure(this, err);
    }
  }
}


/**
 * Attaches `device` to a buffer just gotten and maps it. On failure the attachment is detached
 * and the caller's reference put: the buffer is then as if never gotten.
 *
 * @throws {DmaBufError} what `attach` and `map` throw.
 */
export async function attachMapped(buffer: DmaBuf, device: Device, direction: DmaDirection, signal?: AbortSignal): Promise<{ buffer: DmaBuf; attachment: DmaBufAttachment; sgt: SgTable }> {
  try {
    const attachment = await buffer.attach(device);
    try {
      const sgt = await attachment.map(direction, signal ? { signal } : {});
      return { buffer, attachment, sgt };
    } catch (err) {
      await attachment.detach().catch(() => {});
      throw err;
    }
  } catch (err) {
    buffer.put();
    throw err;
  }
}

/**
 * Runs an exporter op whose end is recorded whether it fails or not: `after` runs once the op
 * returns (at once for a plain value), and a failure is reported as the op's error. Returns
 * undefined when the op finished in the call, else the promise of its end.
 */
function endingOp(call: () => Promise<void> | void, after: () => void, op: string, where: string): Promise<void> | undefined {
  let r: Promise<void> | void;
  try {
    r = call();
  } catch (err) {
    after();
    throw asOpError(err, op, where);
  }
  if (!isThenable(r)) {
    after();
    return undefined;
  }
  return Promise.resolve(r).then(after, (err: unknown) => {
    after();
    throw asOpError(err, op, where);
  });
}

/** Errors thrown by an exporter's op, as {@link DmaBufError}s (a foreign error becomes `EIO`). */
function asOpError(err: unknown, op: string, where: string): DmaBufError {
  if (err instanceof DmaBufError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  return new DmaBufError('EIO', `${op}: ${where} failed: ${msg}`, { op, cause: err });
}

