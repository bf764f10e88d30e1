/**
 * The cross-process layer: plugs the importer (get of a buffer exported by another thread or
 * process), the exporter's service (answers importers through the buffer's file) and the
 * introspection endpoint (`dmabuf info`) into the core's hooks. Loading this module is enough;
 * the package root does it.
 *
 * @module
 */
import { hooks, registerImporter } from '../core/hooks.js';
import { importForeign } from './importer.js';
import { handleHello } from './service.js';
import { ensureIntrospection } from './introspect.js';

hooks.onFileMessage = handleHello;
if (!hooks.onCreate.includes(ensureIntrospection)) hooks.onCreate.push(ensureIntrospection);
registerImporter(importForeign);
