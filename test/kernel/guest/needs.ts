/**
 * What the kernel tests need of the machine. Each returns false when it is there, or the
 * reason to skip: the tests run inside the kernel VM (test/kernel/vm.test.ts) and skip,
 * saying why, wherever the interface is missing (this project's usual host has none).
 */
import { existsSync } from 'node:fs';
import { vgemCard } from './vgem.js';

const WHERE = 'runs inside the kernel VM (test/kernel/vm.test.ts)';

export function needsUdmabuf(): string | false {
  return existsSync('/dev/udmabuf') ? false : `no /dev/udmabuf here: ${WHERE}`;
}

export function needsDmaHeap(): string | false {
  return existsSync('/dev/dma_heap/system') ? false : `no /dev/dma_heap/system here: ${WHERE}`;
}

export function needsVgem(): string | false {
  return vgemCard() ? false : `no vgem DRM device here: ${WHERE}`;
}

export function needsVivid(): string | false {
  return existsSync('/dev/video0') ? false : `no /dev/video0 (vivid) here: ${WHERE} with -M vivid`;
}

/** The first reason of several, or false. */
export function needsAll(...reasons: Array<string | false>): string | false {
  return reasons.find((r) => r !== false) ?? false;
}
