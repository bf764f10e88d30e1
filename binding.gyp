{
  # dmabuf_views=0 (GYP_DEFINES) leaves the C++ target out: the Node-API prebuilds, musl.
  "variables": { "dmabuf_views%": 1 },
  "targets": [
    {
      "target_name": "dmabuf",
      "sources": ["native/binding.c", "native/throw.c", "native/sys.c", "native/diag.c", "native/kernel.c", "native/kernel_binding.c", "native/sync.c", "native/sync_binding.c"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "cflags_c": ["-std=gnu11"],
      "libraries": ["-lm"],
      "configurations": {
        "Release": { "cflags!": ["-O3"], "cflags": ["-O2"] }
      }
    }
  ],
  "conditions": [
    ["dmabuf_views==1", {
      "targets": [
        # The one C++ file (native/views.cc, see native/views.h): V8's own API, so built for
        # one Node ABI; optional at run time. -z now: a V8 symbol this Node lacks fails the
        # load (and views stay counted) instead of aborting the process at the first call.
        {
          "target_name": "dmabuf_views",
          "sources": ["native/views.cc"],
          "cflags": ["-O2", "-Wall", "-Wextra"],
          "cflags_cc": ["-fno-exceptions", "-fno-rtti"],
          "ldflags": ["-Wl,-z,now"],
          "configurations": {
            "Release": { "cflags!": ["-O3"], "cflags": ["-O2"] }
          }
        }
      ]
    }]
  ]
}
