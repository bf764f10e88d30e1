/**
 * The experimental status of the first release: one `ExperimentalWarning` per process (every
 * worker thread included), on first use, as Node does for its own experimental features.
 *
 * @module
 */
import { available, native } from '../native/binding.js';

let checked = false;

/** Emits the warning once per process: the flag lives in the addon, shared by every thread. */
export function warnExperimental(): void {
  if (checked) return;
  checked = true;
  if (available && !native.firstUse()) return;
  process.emitWarning('dmabuf is an experimental feature and might change at any time', 'ExperimentalWarning');
}
