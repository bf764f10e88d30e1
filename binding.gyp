{
  "targets": [
    {
      "target_name": "dmabuf",
      "sources": ["native/binding.c", "native/sys.c"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "cflags_c": ["-std=gnu11"],
      "libraries": ["-lm"],
      "configurations": {
        "Release": { "cflags!": ["-O3"], "cflags": ["-O2"] }
      }
    },
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
}
