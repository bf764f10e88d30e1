/**
 * Symbols shared by the core's own files and never exported from the package: the fields
 * of an attachment only its buffer may change.
 *
 * @module
 * @internal
 */

/** The attachment's live maps: table -> direction. */
export const kMaps = Symbol('dmabuf.maps');
/** An attachment's map, in the call when it can be (for the exporter's service). */
export const kMapNow = Symbol('dmabuf.mapNow');
/** Marks an attachment detached. */
export const kSetDetached = Symbol('dmabuf.setDetached');
/** Attaches a remote importer's device: allowed while any descriptor of the file is open. */
export const kAttachRemote = Symbol('dmabuf.attachRemote');
/** Registers a callback run once when the buffer is released. */
export const kOnRelease = Symbol('dmabuf.onRelease');
/** Whether the buffer was exported by this thread (its service end is read here). */
export const kExportedHere = Symbol('dmabuf.exportedHere');
/**
 * Records an attach and a map that the buffer's own ops made before the buffer object was
 * handed to anyone (an importer adopting a map its exporter made ahead): synchronous.
 */
export const kAdoptMapped = Symbol('dmabuf.adoptMapped');
