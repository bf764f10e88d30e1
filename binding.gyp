{
  "targets": [
    {
      "target_name": "dmabuf",
      "sources": ["native/binding.c", "native/sys.c", "native/diag.c"],
      "defines": ["_GNU_SOURCE", "NAPI_VERSION=8"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
      "cflags_c": ["-std=gnu11"],
      "libraries": ["-lm"],
      "configurations": {
        "Release": { "cflags!": ["-O3"], "cflags": ["-O2"] }
      }
    }
  ]
}
