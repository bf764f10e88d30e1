/**
 * The CPU device: this process's CPU as an importer's device. Maps backing memory into the
 * process with mmap and hands out views over it, without copying.
 *
 * @module
 */
import { Device, type DeviceMapping, type DeviceOptions, type MapMemoryRequest } from '../core/device.js';
import { DmaBufError } from '../core/errors.js';
import type { MemoryObject } from '../core/memory.js';
import { native, type MappingHandle } from '../native/binding.js';

interface CachedMapping {
  handle: MappingHandle;
  unregister: () => void;
}

/**
 * The CPU of this process, as a device. A map gives every segment a `view` (a `Uint8Array`
 * over an mmap of the backing memory) and its virtual `address`.
 *
 * - Writable maps (`'bidirectional'`, `'from-device'`) share the memory: a write through one
 *   attachment's view is read through another's. Their mmap is cached per memory object and
 *   reused by the next map while the device stays attached (page tables are the costly part
 *   of a map); it goes when the device's last attachment to the buffer detaches.
 * - Read maps (`'to-device'`, and every map of a sealed buffer) are copy-on-write private
 *   mappings: a stray write through such a view never reaches the buffer and never crashes
 *   the process. Reads follow the buffer's later writes on every page the view has not
 *   itself written; a page it wrote stops following them.
 * - Memory that can only be mapped shared (`memory.sharedOnly`: kernel dma-bufs, whose
 *   exporters refuse private mappings) gets the cached shared mapping for reads too: a stray
 *   write through a read view reaches the buffer. Memory sealed against writes (a read-only
 *   kernel descriptor) is then mapped `PROT_READ`, and a write through its view kills the
 *   process with `SIGSEGV`: JavaScript has no read-only `ArrayBuffer`.
 * - Unmap detaches the views first: a stale view has `byteLength` 0.
 *
 * @example
 * ```ts
 * const att = await buf.attach(new CpuDevice({ name: 'decoder', maxSegmentSize: 1 << 20 }));
 * ```
 */
export class CpuDevice extends Device {
  /** `'cpu'`. */
  readonly kind = 'cpu';
  #cache = new Map<MemoryObject, CachedMapping>();

  /** @throws {DmaBufError} `EINVAL` for a bad constraint. */
  constructor(options: DeviceOptions = {}) {
    super({ name: 'cpu', ...options, maxSegmentSize: Math.min(options?.maxSegmentSize ?? MAX_VIEW_LENGTH, MAX_VIEW_LENGTH) });
  }

  /** Number of mmaps this device keeps cached for reuse (for introspection and tests). */
  get cachedMappings(): number {
    return this.#cache.size;
  }

  /** Maps `request.memory` for `request.access`; see the class description. */
  mapMemory(request: MapMemoryRequest): DeviceMapping {
    const { memory, access } = request;
    const c = native.constants;
    if (access === 'write' || memory.sharedOnly) {
      if (access === 'write' && memory.writeSealed) {
        throw new DmaBufError('EACCES', 'map: the memory is sealed against writes', { op: 'map' });
      }
      let entry = this.#cache.get(memory);
      if (!entry) {
        const prot = memory.writeSealed ? c.PROT_READ : c.PROT_READ | c.PROT_WRITE;
        const handle = mmapMemory(memory, prot, c.MAP_SHARED);
        const unregister = memory.onInvalidate(() => this.#drop(memory));
        entry = { handle, unregister };
        this.#cache.set(memory, entry);
      }
      return viewMapping(entry.handle, memory.size, false);
    }
    const handle = mmapMemory(memory, c.PROT_READ | c.PROT_WRITE, c.MAP_PRIVATE);
    return viewMapping(handle, memory.size, true);
  }

  /**
   * Unmaps the shared mapping cached for `memory` (the exporter calls this when the device's
   * last attachment to its buffer detached). Views still alive keep the memory until they go.
   */
  override forgetMemory(memory: MemoryObject): void {
    this.#drop(memory);
  }

  #drop(memory: MemoryObject): void {
    const entry = this.#cache.get(memory);
    if (!entry) return;
    this.#cache.delete(memory);
    entry.unregister();
    native.munmap(entry.handle);
  }
}

/** Maps the whole memory object; `ENOMEM` says which limit to look at. */
function mmapMemory(memory: MemoryObject, prot: number, flags: number): MappingHandle {
  try {
    return native.mmap(memory.fd, memory.size, 0, prot, flags);
  } catch (err) {
    if (!DmaBufError.is(err, 'ENOMEM')) throw err;
    throw new DmaBufError('ENOMEM', `map: cannot map ${memory.size} bytes into this process: mmap found no room for them (the free address space, about 128 TiB on x86-64; RLIMIT_AS, "ulimit -v"; or vm.max_map_count). Unmap other buffers, raise the limit, or use a smaller buffer`, { op: 'map', syscall: 'mmap', errno: err.errno, cause: err });
  }
}

/** Largest view: V8's largest ArrayBuffer (4 GiB in Node 20). */
export const MAX_VIEW_LENGTH = 2 ** 32;

/**
 * A mapping handing out views: one ArrayBuffer over the whole memory when it fits, else one
 * per requested range. Release detaches every view, then unmaps what it owns.
 */
function viewMapping(handle: MappingHandle, size: number, ownsMapping: boolean): DeviceMapping {
  const views: ArrayBuffer[] = [];
  let whole: Uint8Array | null = null;
  let released = false;
  return {
    address: native.mappingAddress(handle),
    view(offset: number, length: number): Uint8Array {
      if (released) throw new DmaBufError('EINVAL', 'map: the mapping was released', { op: 'map' });
      if (size <= MAX_VIEW_LENGTH) {
        if (!whole) {
          const ab = native.mappingView(handle, 0, size);
          views.push(ab);
          whole = new Uint8Array(ab);
        }
        return whole.subarray(offset, offset + length);
      }
      const ab = native.mappingView(handle, offset, length);
      views.push(ab);
      return new Uint8Array(ab);
    },
    release() {
      if (released) return;
      released = true;
      for (const ab of views) native.detachView(ab);
      if (ownsMapping) native.munmap(handle);
    },
  };
}
