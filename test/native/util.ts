/** Helpers shared by the native addon's tests. */
import assert from 'node:assert/strict';
import { native } from '../../src/native/binding.js';

/** What the addon throws. */
export type Thrown = Error & { code?: string; errno?: number; syscall?: string; cause?: unknown };

/** The exception `fn` throws; fails the test when it throws none. */
export function thrown(fn: () => unknown): Thrown {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof Error);
    return err as Thrown;
  }
  assert.fail('expected an exception');
}

/** Closes the fds after fn, whatever happens. */
export function withFds<T>(fds: number[], fn: () => T): T {
  try {
    return fn();
  } finally {
    for (const fd of fds) native.close(fd);
  }
}
