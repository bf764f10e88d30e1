/*
 * views.cc - dmabuf_views.node: ArrayBuffers over mapped memory that V8 does not count as
 * external memory (see views.h for why and for the contract).
 *
 * The only C++ of the package, and the only code that uses V8's own API: it is built for
 * one Node ABI (NODE_MODULE_VERSION) and refuses any other at load time, before it calls
 * into V8. It is itself a Node-API module, context-aware (it keeps no state at all), whose
 * exports are:
 *   factory        the napi_external to pass to dmabuf.node's setViewFactory (absent when
 *                  this build does not match the running Node)
 *   moduleVersion  the NODE_MODULE_VERSION it was built for
 *   reason         '' or why `factory` is absent
 */
#include <stdio.h>
#include <string.h>

#include <atomic>
#include <memory>
#include <new>
#include <utility>

/* node_version.h (for NODE_MODULE_VERSION) sets NAPI_VERSION to the runtime's; this
 * module uses the same Node-API version as dmabuf.node. */
#include <node_version.h>
#undef NAPI_VERSION
#define NAPI_VERSION 8
#include <node_api.h>
#include <v8.h>

#include "views.h"

namespace {

/* A view is at most what V8 allows for an ArrayBuffer in Node 20 (binding.c checks it too:
 * a larger length would make V8 abort rather than fail). */
constexpr size_t kMaxViewLength = size_t{1} << 32;

/* Node-API values are V8 Locals, as in Node's own js_native_api_v8.h. */
static_assert(sizeof(v8::Local<v8::Value>) == sizeof(napi_value),
              "a napi_value is a v8::Local<v8::Value>");

napi_value ToNapi(v8::Local<v8::Value> local) {
  napi_value value;
  memcpy(&value, &local, sizeof(value));
  return value;
}

using Store = std::shared_ptr<v8::BackingStore>;

/* EmptyDeleter: V8 neither frees the memory nor counts it (BackingStore::
 * PerIsolateAccountingLength). */
napi_status CreateView(napi_env env, void *data, size_t length, napi_value *result,
                       void **store) {
  (void)env;
  if (result == nullptr || store == nullptr || length > kMaxViewLength) return napi_invalid_arg;
  v8::Isolate *isolate = v8::Isolate::GetCurrent();
  if (isolate == nullptr) return napi_generic_failure;
  Store *ref = new (std::nothrow) Store();
  if (ref == nullptr) return napi_generic_failure;
  std::unique_ptr<v8::BackingStore> backing =
      v8::ArrayBuffer::NewBackingStore(data, length, v8::BackingStore::EmptyDeleter, nullptr);
  v8::Local<v8::ArrayBuffer> view = v8::ArrayBuffer::New(isolate, std::move(backing));
  *ref = view->GetBackingStore();
  *store = ref;
  *result = ToNapi(view);
  return napi_ok;
}

bool StoreInUse(void *store) {
  if (static_cast<Store *>(store)->use_count() > 1) return true;
  /* The last other holder dropped it (maybe in another thread): order its accesses to the
   * memory before whatever the caller does next (munmap). */
  std::atomic_thread_fence(std::memory_order_acquire);
  return false;
}

void StoreRelease(void *store) { delete static_cast<Store *>(store); }

const dmabuf_view_factory_t kFactory = {DMABUF_VIEWS_VERSION, CreateView, StoreInUse, StoreRelease};

/* process.versions.modules of the running Node, or -1. Node-API only: no V8 call may run
 * before the ABI is known to match. */
int RunningModuleVersion(napi_env env) {
  napi_value global, process, versions, modules;
  char text[16];
  size_t len = 0;
  if (napi_get_global(env, &global) != napi_ok ||
      napi_get_named_property(env, global, "process", &process) != napi_ok ||
      napi_get_named_property(env, process, "versions", &versions) != napi_ok ||
      napi_get_named_property(env, versions, "modules", &modules) != napi_ok ||
      napi_get_value_string_utf8(env, modules, text, sizeof(text), &len) != napi_ok) {
    return -1;
  }
  int version = -1;
  return sscanf(text, "%d", &version) == 1 ? version : -1;
}

napi_status SetString(napi_env env, napi_value object, const char *name, const char *text) {
  napi_value value;
  napi_status s = napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &value);
  return s == napi_ok ? napi_set_named_property(env, object, name, value) : s;
}

}  // namespace

NAPI_MODULE_INIT() {
  napi_value built;
  if (napi_create_int32(env, NODE_MODULE_VERSION, &built) != napi_ok ||
      napi_set_named_property(env, exports, "moduleVersion", built) != napi_ok) {
    return nullptr;
  }
#ifdef V8_ENABLE_SANDBOX
  /* A V8 sandbox (Electron) refuses ArrayBuffers over memory outside it. */
  return SetString(env, exports, "reason", "this V8 has a sandbox: no views over mapped memory") == napi_ok
             ? exports
             : nullptr;
#endif
  int running = RunningModuleVersion(env);
  if (running != NODE_MODULE_VERSION) {
    char reason[160];
    snprintf(reason, sizeof(reason),
             "dmabuf_views.node was built for Node ABI %d (Node %s); this Node's is %d",
             NODE_MODULE_VERSION, NODE_VERSION_STRING, running);
    return SetString(env, exports, "reason", reason) == napi_ok ? exports : nullptr;
  }
  napi_value factory;
  if (napi_create_external(env, const_cast<dmabuf_view_factory_t *>(&kFactory), nullptr,
                           nullptr, &factory) != napi_ok ||
      napi_type_tag_object(env, factory, &DMABUF_VIEW_FACTORY_TAG) != napi_ok ||
      napi_set_named_property(env, exports, "factory", factory) != napi_ok ||
      SetString(env, exports, "reason", "") != napi_ok) {
    return nullptr;
  }
  return exports;
}
