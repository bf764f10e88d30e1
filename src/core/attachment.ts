/**
 * Attachments, as `struct dma_buf_attachment`: one device's claim on a buffer.
 *
 * @module
 */
import type { DmaBuf } from './dma-buf.js';
import type { Device } from './device.js';
import type { DmaDirection } from './direction.js';
import type { SgTable } from './sg-table.js';
import { kMapNow, kMaps, kSetDetached } from './internal.js';
import { promiseOf, type Now } from './now.js';

/** Options of {@link DmaBufAttachment.map}. */
export interface MapOptions {
  /** Gives up waiting (for the lock, or for a migration); the map then fails with `EINTR`. */
  signal?: AbortSignal;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyAttachment = DmaBufAttachment<any>;

/** What a buffer does for its attachments. @internal */
export interface AttachmentOwner {
  /** In this call when it can be (the result, or a throw), else a promise. */
  map(attachment: AnyAttachment, direction: DmaDirection, signal: AbortSignal | undefined): Now<SgTable>;
  unmap(attachment: AnyAttachment, sgt: SgTable): Promise<void>;
  detach(attachment: AnyAttachment): Promise<void>;
}

/**
 * A device attached to a buffer. Created by {@link DmaBuf.attach}; maps the buffer into the
 * device's address space with {@link map}, and ends with {@link detach}.
 */
export class DmaBufAttachment<Priv = unknown> implements AsyncDisposable {
  /** The buffer. */
  readonly dmabuf: DmaBuf<Priv>;
  /** The attached device. */
  readonly device: Device;
  /** The exporter's private data for this attachment (set in `ops.attach`). */
  priv: unknown = undefined;
  #owner: AttachmentOwner;
  #detached = false;
  /** @internal live maps, maintained by the buffer */
  readonly [kMaps] = new Map<SgTable, DmaDirection>();

  /** @internal Created by {@link DmaBuf.attach} only. */
  constructor(dmabuf: DmaBuf<Priv>, device: Device, owner: AttachmentOwner) {
    this.dmabuf = dmabuf;
    this.device = device;
    this.#owner = owner;
  }

  /** Whether {@link detach} has completed. */
  get detached(): boolean {
    return this.#detached;
  }

  /** The live tables of this attachment (mapped, not yet unmapped). */
  get maps(): readonly SgTable[] {
    return [...this[kMaps].keys()];
  }

  /** @internal */
  [kSetDetached](): void {
    this.#detached = true;
  }

  /**
   * Maps the buffer into the device's address space (`dma_buf_map_attachment`).
   *
   * @throws {DmaBufError} `EINVAL` for an unknown direction, `'none'`, or a detached
   *   attachment; `EACCES` for a writable direction on a read-only or sealed buffer; `EINTR`
   *   when `signal` aborts while waiting; whatever the exporter's `mapDmaBuf` throws.
   * @example
   * ```ts
   * const sgt = await attachment.map('to-device');
   * console.log(sgt.segments[0].view?.[0]);
   * await attachment.unmap(sgt);
   * ```
   */
  map(direction: DmaDirection, options: MapOptions = {}): Promise<SgTable> {
    return promiseOf(() => this.#owner.map(this, direction, options?.signal));
  }

  /** @internal {@link map}, in this call when the buffer's lock is free and the exporter maps synchronously; may throw. */
  [kMapNow](direction: DmaDirection): Now<SgTable> {
    return this.#owner.map(this, direction, undefined);
  }

  /**
   * Gives back a table returned by {@link map} (`dma_buf_unmap_attachment`). CPU views of the
   * table are detached first: afterwards they have `byteLength` 0.
   *
   * @throws {DmaBufError} `EINVAL` for a table that is not a live map of this attachment.
   */
  unmap(sgt: SgTable): Promise<void> {
    return this.#owner.unmap(this, sgt);
  }

  /**
   * Detaches the device (`dma_buf_detach`), unmapping first whatever it still has mapped.
   *
   * @throws {DmaBufError} `EINVAL` when already detached.
   */
  detach(): Promise<void> {
    return this.#owner.detach(this);
  }

  /** Detaches unless already detached. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#detached) await this.detach();
  }
}
