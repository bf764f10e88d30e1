/*
 * views.h - the contract between the C addon (dmabuf.node) and the optional C++ addon
 * (dmabuf_views.node) that makes ArrayBuffers V8 does not count as external memory.
 *
 * Why: V8 counts an ArrayBuffer's backing store as external memory unless the store is
 * shared or its deleter is v8::BackingStore::EmptyDeleter; counted memory starts "external
 * memory pressure" garbage collections once about 64 MiB more is held than at the last
 * mark-compact, so every hand-off of a large buffer would start one. Node-API cannot make
 * such a store; V8's C++ API can, at the price of an addon built for one Node ABI
 * (NODE_MODULE_VERSION). dmabuf.node stays pure Node-API; dmabuf_views.node is loaded when
 * it matches the running Node and hands dmabuf.node a factory (setViewFactory).
 *
 * The factory travels as a napi_external tagged with DMABUF_VIEW_FACTORY_TAG whose value
 * points at a static dmabuf_view_factory_t (it lives as long as the process: Node never
 * unloads an addon).
 *
 * Lifetime: V8 never frees an EmptyDeleter store and says nothing when it drops it, so the
 * memory must stay until (a) the ArrayBuffer object is collected or detached, which the
 * caller learns with a finalizer on the object (napi_wrap) or by detaching it itself
 * (napi_detach_arraybuffer), AND (b) no other ArrayBuffer holds the store: a transfer
 * (ArrayBuffer.prototype.transfer, web streams, anything that detaches the buffer and makes a
 * new one over the same store) hands the memory to an object the finalizer does not watch.
 * `create` therefore also gives the caller its own reference to the store, and
 * `store_in_use` tells whether anyone else still holds it.
 */
#ifndef DMABUF_VIEWS_H
#define DMABUF_VIEWS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <node_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever dmabuf_view_factory_t changes; setViewFactory refuses another version. */
#define DMABUF_VIEWS_VERSION 1

typedef struct dmabuf_view_factory {
  /* DMABUF_VIEWS_VERSION of the addon that made it. */
  uint32_t version;
  /*
   * Makes an ArrayBuffer over [data, data + length) that V8 does not count as external
   * memory, and a reference to its backing store in *store (drop it with store_release).
   * The result lives in the current HandleScope: call it from a Node-API callback, on the
   * JS thread of `env`.
   * Returns: napi_ok; napi_invalid_arg for a null out-pointer or a length over 4 GiB;
   * napi_generic_failure when out of memory (nothing is then made).
   */
  napi_status (*create)(napi_env env, void *data, size_t length, napi_value *result,
                        void **store);
  /*
   * Whether an ArrayBuffer (in any thread) still holds the store, besides the reference
   * `create` gave. A buffer detached or swept by the garbage collector no longer does.
   */
  bool (*store_in_use)(void *store);
  /* Drops the reference `create` gave. */
  void (*store_release)(void *store);
} dmabuf_view_factory_t;

/* Tells the factory's external apart from anyone else's. */
static const napi_type_tag DMABUF_VIEW_FACTORY_TAG = {0x646d616275665646ULL,
                                                      0x5c0e93b7a16d2f48ULL};

#ifdef __cplusplus
}
#endif

#endif /* DMABUF_VIEWS_H */
