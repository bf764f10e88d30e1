/**
 * A remote importer's device as the exporter sees it: the constraints the importer declared,
 * and a `mapMemory` that records which memory to send to the importer (who maps it there).
 *
 * @module
 */
import { Device, type DeviceMapping, type DeviceOptions, type MapMemoryRequest } from '../core/device.js';
import type { DeviceAccess } from '../core/device.js';
import type { MemoryObject } from '../core/memory.js';

/** What a remote map hands to the importer. */
export interface RemoteMapping {
  memory: MemoryObject;
  access: DeviceAccess;
}

/**
 * The device of an importer in another thread or process. The exporter's ops map memory into
 * it like into any device; the memory is then sent to the importer with `SCM_RIGHTS`.
 */
export class RemoteDevice extends Device {
  /** `'remote-<kind>'`. */
  readonly kind: string;
  /** The importer's process id. */
  readonly pid: number;
  #pending: RemoteMapping | null = null;

  /** @throws {DmaBufError} `EINVAL` for bad constraints. */
  constructor(options: DeviceOptions, kind: string, pid: number) {
    super(options);
    this.kind = `remote-${kind}`;
    this.pid = pid;
  }

  /** Records the memory for the importer; the address is only known in the importer. */
  mapMemory(request: MapMemoryRequest): DeviceMapping {
    this.#pending = { memory: request.memory, access: request.access };
    return { address: undefined, release() {} };
  }

  /** The memory of the last map, once (the service serializes maps per attachment). */
  takePending(): RemoteMapping | null {
    const p = this.#pending;
    this.#pending = null;
    return p;
  }
}
