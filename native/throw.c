/* throw.c - see throw.h. */
#include <stdbool.h>
#include <stdio.h>

#include "sys.h"
#include "throw.h"

void throw_error(napi_env env, int err, const char *syscall, const char *message) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  char namebuf[24];
  const char *name = sys_errname(err, namebuf, sizeof(namebuf));
  napi_value code, msg, error, errnum, sc;
  if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
      napi_create_error(env, code, msg, &error) != napi_ok ||
      napi_create_int32(env, err, &errnum) != napi_ok ||
      napi_set_named_property(env, error, "errno", errnum) != napi_ok) {
    return;
  }
  if (syscall != NULL) {
    if (napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc) != napi_ok ||
        napi_set_named_property(env, error, "syscall", sc) != napi_ok) {
      return;
    }
  }
  napi_throw(env, error);
}

napi_value throw_errno_desc(napi_env env, const char *syscall, int err, const char *desc) {
  char descbuf[128], namebuf[24], message[256];
  if (desc == NULL) desc = sys_strerror(err, descbuf, sizeof(descbuf));
  snprintf(message, sizeof(message), "%s: %s (%s)", syscall, desc,
           sys_errname(err, namebuf, sizeof(namebuf)));
  throw_error(env, err, syscall, message);
  return NULL;
}

napi_value throw_errno(napi_env env, const char *syscall, int err) {
  return throw_errno_desc(env, syscall, err, NULL);
}
