/*
 * retry.h - private to the C layer (sys.c, diag.c): retrying system calls on EINTR.
 */
#ifndef DMABUF_RETRY_H
#define DMABUF_RETRY_H

#include <errno.h>

/* Runs `expr` (which returns -1 and sets errno on failure) until it is not EINTR. */
#define RETRY(type, var, expr)                 \
  type var;                                    \
  do {                                         \
    var = (expr);                              \
  } while (var == -1 && errno == EINTR)

#endif /* DMABUF_RETRY_H */
