/**
 * Where the native addons are: a build from source (`build/Release`) when there is one, else
 * a prebuilt binary shipped in the package (`prebuilds/`). Only `src/native/` loads them.
 *
 * Two addons, two rules:
 *
 * - **`dmabuf`**, the Node-API C addon (mandatory). Node-API is stable across Node versions,
 *   so one build per platform, architecture and C library serves every Node release:
 *   `prebuilds/<platform>-<arch>/dmabuf.napi.<libc>.node`. Found by `node-gyp-build`, which
 *   also picks `build/Release/` first.
 * - **`dmabuf_views`**, a C++ addon for views that V8 does not count as external memory
 *   (optional). It uses V8's own API, so it is built per Node ABI (`process.versions.modules`:
 *   115 for Node 20, 127 for Node 22, 137 for Node 24):
 *   `prebuilds/<platform>-<arch>/views/dmabuf_views.abi<ABI>.<libc>.node`. It lives in a
 *   subfolder so that `node-gyp-build`, which prefers an ABI-tagged file to a Node-API one,
 *   never takes it for the C addon. When no build matches (another Node ABI, a platform it
 *   was not built for), the caller falls back to the C addon's views.
 *
 * @module
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** The package's root folder (this file is dist/src/native/addon.js). */
export const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

const require = createRequire(import.meta.url);

/**
 * The C addon's file: `build/Release/dmabuf.node` or `build/Debug/dmabuf.node` after a build
 * from source, else the prebuilt binary for this platform.
 *
 * @throws {Error} when neither exists (node-gyp-build says what it looked for), or when
 *   `node-gyp-build` itself is missing.
 */
export function addonPath(root = packageRoot): string {
  for (const dir of ['Release', 'Debug']) {
    const built = path.join(root, 'build', dir, 'dmabuf.node');
    if (existsSync(built)) return built;
  }
  const gypBuild = require('node-gyp-build') as { path(dir: string): string };
  return gypBuild.path(root);
}

/** `glibc` or `musl`, the way node-gyp-build decides it (`LIBC`, else Alpine means musl). */
function libc(): string {
  return process.env.LIBC ?? (existsSync('/etc/alpine-release') ? 'musl' : 'glibc');
}

/**
 * The views addon's file for this Node ABI, or `null` when there is none (then use the C
 * addon's views): `build/Release/dmabuf_views.node` after a build from source, else
 * `prebuilds/<platform>-<arch>/views/dmabuf_views.abi<ABI>.<libc>.node`.
 */
export function viewsAddonPath(root = packageRoot): string | null {
  return viewsAddonPaths(root)[0] ?? null;
}

/**
 * Every views addon file that may fit, best first: the build from source (which may be for
 * another Node ABI, when this checkout was built by another Node), then the prebuilt one for
 * this Node ABI. The loader takes the first that accepts this Node.
 */
export function viewsAddonPaths(root = packageRoot): string[] {
  const out: string[] = [];
  for (const dir of ['Release', 'Debug']) {
    const built = path.join(root, 'build', dir, 'dmabuf_views.node');
    if (existsSync(built)) {
      out.push(built);
      break;
    }
  }
  const file = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'views', `dmabuf_views.abi${process.versions.modules}.${libc()}.node`);
  if (existsSync(file)) out.push(file);
  return out;
}
