/**
 * The addon's functions for fence files (`native/sync.c`, `native/sync_binding.c`), typed.
 *
 * They live on the same addon object as the rest of the binding and are wrapped the same
 * way: every failure is a {@link DmaBufError} with the errno name as its code and the
 * system call in `syscall`. On a platform without support each throws `ENODEV`.
 *
 * @module
 */
import { native } from './binding.js';

/** Constants of the running platform's headers that fence files need. */
export interface SyncConstants {
  /** The access-mode bits of `fcntl(F_GETFL)`. */
  O_ACCMODE: number;
  O_RDONLY: number;
}

/** The fence-file functions of the addon. */
export interface SyncBinding {
  /**
   * pipe2(2) with `O_CLOEXEC | O_DIRECT | O_NONBLOCK`: a packet-mode pipe (a read takes
   * one whole write, or nothing of it). Returns `[readEnd, writeEnd]`.
   */
  pipe(): [number, number];
  /** write(2) of all of `data`; returns the count written. `EAGAIN` when the pipe is full. */
  write(fd: number, data: Uint8Array): number;
  /** ioctl(FIONREAD): the bytes waiting in `fd`, left in place. */
  bytesReadable(fd: number): number;
  /** fcntl(F_GETFL): the status flags and the access mode (`& O_ACCMODE`) of `fd`. */
  statusFlags(fd: number): number;
  /** The constants (a new frozen object at each call: cache it). */
  syncConstants(): SyncConstants;
}

/** The addon, seen through its fence-file functions. */
export const syncNative: SyncBinding = native as unknown as SyncBinding;
