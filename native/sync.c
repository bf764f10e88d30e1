/*
 * sync.c - see sync.h. Plain C over glibc; no Node-API here.
 */
#include "sync.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

int sync_pipe(int fds[2]) {
  int r;
  do {
    r = pipe2(fds, O_CLOEXEC | O_DIRECT | O_NONBLOCK);
  } while (r == -1 && errno == EINTR);
  return r == -1 ? -errno : 0;
}

ssize_t sync_write(int fd, const void *data, size_t length) {
  ssize_t r;
  do {
    r = write(fd, data, length);
  } while (r == -1 && errno == EINTR);
  return r == -1 ? -errno : r;
}

int sync_bytes_readable(int fd) {
  int n = 0;
  int r;
  do {
    r = ioctl(fd, FIONREAD, &n);
  } while (r == -1 && errno == EINTR);
  return r == -1 ? -errno : n;
}

int sync_status_flags(int fd) {
  int r;
  do {
    r = fcntl(fd, F_GETFL);
  } while (r == -1 && errno == EINTR);
  return r == -1 ? -errno : r;
}
