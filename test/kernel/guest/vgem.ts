/**
 * vgem, the kernel's virtual GEM driver, for the kernel tests: real dma-bufs from a DRM
 * driver (dumb buffers exported with PRIME) and real fences (VGEM_FENCE_ATTACH / _SIGNAL).
 * Its ioctls are plain structs, so the addon's generic `ioctl` serves; the uapi has no
 * header on most hosts (libdrm's), hence the layouts here.
 */
import { closeSync, existsSync, openSync, readdirSync, readlinkSync, constants as fsConstants } from 'node:fs';
import { native } from '../../../src/native/binding.js';

const IOC_WRITE = 1;
const IOC_READWRITE = 3;
const ioc = (dir: number, nr: number, size: number): number => ((dir << 30) | (size << 16) | (0x64 /* 'd' */ << 8) | nr) >>> 0;
const DRM_IOCTL_GEM_CLOSE = ioc(IOC_WRITE, 0x09, 8);
const DRM_IOCTL_PRIME_HANDLE_TO_FD = ioc(IOC_READWRITE, 0x2d, 12);
const DRM_IOCTL_MODE_CREATE_DUMB = ioc(IOC_READWRITE, 0xb2, 32);
const DRM_IOCTL_VGEM_FENCE_ATTACH = ioc(IOC_READWRITE, 0x40 + 0x1, 16);
const DRM_IOCTL_VGEM_FENCE_SIGNAL = ioc(IOC_WRITE, 0x40 + 0x2, 8);
const VGEM_FENCE_WRITE = 1;
const DRM_CLOEXEC = 0o2000000;

/** The vgem card's device node, or null when the vgem module is not loaded. */
export function vgemCard(): string | null {
  if (!existsSync('/sys/class/drm')) return null;
  for (const name of readdirSync('/sys/class/drm')) {
    if (!/^card\d+$/.test(name)) continue;
    // vgem's platform device has no driver link: the card's own path names it.
    if (readlinkSync(`/sys/class/drm/${name}`).includes('/platform/vgem/')) return `/dev/dri/${name}`;
  }
  return null;
}

/** An open vgem device. */
export class Vgem {
  readonly fd: number;

  constructor(path: string) {
    this.fd = openSync(path, fsConstants.O_RDWR);
  }

  /** A dumb buffer of width x height at 32 bpp: its GEM handle and size. */
  createDumb(width: number, height: number): { handle: number; size: number } {
    const a = new Uint8Array(32);
    const v = new DataView(a.buffer);
    v.setUint32(0, height, true);
    v.setUint32(4, width, true);
    v.setUint32(8, 32, true);
    native.ioctl(this.fd, DRM_IOCTL_MODE_CREATE_DUMB, a);
    return { handle: v.getUint32(16, true), size: Number(v.getBigUint64(24, true)) };
  }

  /** PRIME export of a handle: a dma-buf descriptor (read-write, close-on-exec). */
  exportDmaBuf(handle: number): number {
    const a = new Uint8Array(12);
    const v = new DataView(a.buffer);
    v.setUint32(0, handle, true);
    v.setUint32(4, DRM_CLOEXEC | fsConstants.O_RDWR, true);
    native.ioctl(this.fd, DRM_IOCTL_PRIME_HANDLE_TO_FD, a);
    return v.getInt32(8, true);
  }

  /** Attaches an unsignalled write fence to the buffer; returns the fence's id. */
  attachWriteFence(handle: number): number {
    const a = new Uint8Array(16);
    const v = new DataView(a.buffer);
    v.setUint32(0, handle, true);
    v.setUint32(4, VGEM_FENCE_WRITE, true);
    native.ioctl(this.fd, DRM_IOCTL_VGEM_FENCE_ATTACH, a);
    return v.getUint32(8, true);
  }

  /** Signals a fence made by {@link attachWriteFence}. */
  signal(fence: number): void {
    const a = new Uint8Array(8);
    new DataView(a.buffer).setUint32(0, fence, true);
    native.ioctl(this.fd, DRM_IOCTL_VGEM_FENCE_SIGNAL, a);
  }

  closeHandle(handle: number): void {
    const a = new Uint8Array(8);
    new DataView(a.buffer).setUint32(0, handle, true);
    native.ioctl(this.fd, DRM_IOCTL_GEM_CLOSE, a);
  }

  close(): void {
    closeSync(this.fd);
  }
}
