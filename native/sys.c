/*
 * sys.c - see sys.h. Plain C over glibc; no Node-API here.
 */
#include "sys.h"
#include "diag.h"
#include "retry.h"

#include <poll.h>
#include <stdatomic.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/vfs.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif


#define NEG_ERRNO(var) ((var) == -1 ? -errno : (var))

int sys_memfd_create(const char *name, unsigned int flags) {
  RETRY(int, fd, memfd_create(name, flags | MFD_CLOEXEC));
  return NEG_ERRNO(fd);
}

int sys_add_seals(int fd, unsigned int seals) {
  RETRY(int, r, fcntl(fd, F_ADD_SEALS, (int)seals));
  return NEG_ERRNO(r);
}

int sys_get_seals(int fd) {
  RETRY(int, r, fcntl(fd, F_GET_SEALS));
  return NEG_ERRNO(r);
}

int sys_ftruncate(int fd, int64_t size) {
  RETRY(int, r, ftruncate(fd, (off_t)size));
  return NEG_ERRNO(r);
}

int sys_fallocate(int fd, int mode, int64_t offset, int64_t length) {
  RETRY(int, r, fallocate(fd, mode, (off_t)offset, (off_t)length));
  return NEG_ERRNO(r);
}

int sys_dup(int fd, int cloexec) {
  RETRY(int, r, fcntl(fd, cloexec ? F_DUPFD_CLOEXEC : F_DUPFD, 0));
  return NEG_ERRNO(r);
}

int sys_close(int fd) {
  /* Never retried: on Linux the descriptor is released even when EINTR is reported. */
  int r = close(fd);
  if (r == -1 && errno == EINTR) return 0;
  return NEG_ERRNO(r);
}

int sys_fstat(int fd, struct sys_stat *out) {
  struct stat st;
  RETRY(int, r, fstat(fd, &st));
  if (r == -1) return -errno;
  out->dev = (uint64_t)st.st_dev;
  out->ino = (uint64_t)st.st_ino;
  out->mode = (uint32_t)st.st_mode;
  out->size = (int64_t)st.st_size;
  out->blksize = (int64_t)st.st_blksize;
  return 0;
}

int sys_fstatfs_type(int fd, uint32_t *type) {
  struct statfs sf;
  RETRY(int, r, fstatfs(fd, &sf));
  if (r == -1) return -errno;
  /* f_type is a 32-bit magic number stored in a long; keep it unsigned (0x958458f6). */
  *type = (uint32_t)(unsigned long)sf.f_type;
  return 0;
}

int sys_set_cloexec(int fd, int on, int *previous) {
  RETRY(int, flags, fcntl(fd, F_GETFD));
  if (flags == -1) return -errno;
  *previous = (flags & FD_CLOEXEC) != 0;
  int next = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
  if (next == flags) return 0;
  RETRY(int, r, fcntl(fd, F_SETFD, next));
  return r == -1 ? -errno : 0;
}

int sys_set_nonblock(int fd, int on, int *previous) {
  RETRY(int, flags, fcntl(fd, F_GETFL));
  if (flags == -1) return -errno;
  *previous = (flags & O_NONBLOCK) != 0;
  int next = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (next == flags) return 0;
  RETRY(int, r, fcntl(fd, F_SETFL, next));
  return r == -1 ? -errno : 0;
}

int sys_socket_info(int fd, int *domain, int *type) {
  socklen_t len = sizeof(int);
  RETRY(int, r, getsockopt(fd, SOL_SOCKET, SO_DOMAIN, domain, &len));
  if (r == -1) return -errno;
  len = sizeof(int);
  RETRY(int, r2, getsockopt(fd, SOL_SOCKET, SO_TYPE, type, &len));
  return r2 == -1 ? -errno : 0;
}

int sys_peer_cred(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid) {
  struct ucred cred;
  socklen_t len = sizeof(cred);
  RETRY(int, r, getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len));
  if (r == -1) return -errno;
  *pid = (int32_t)cred.pid;
  *uid = (uint32_t)cred.uid;
  *gid = (uint32_t)cred.gid;
  return 0;
}

static int sock_flags(int nonblock) {
  return SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0);
}

int sys_socketpair(int type, int nonblock, int fds[2]) {
  RETRY(int, r, socketpair(AF_UNIX, type | sock_flags(nonblock), 0, fds));
  return r == -1 ? -errno : 0;
}

int sys_socket(int type, int nonblock) {
  RETRY(int, fd, socket(AF_UNIX, type | sock_flags(nonblock), 0));
  return NEG_ERRNO(fd);
}

/* Fills a sockaddr_un for `address`; returns its length or -errno. */
static int make_addr(struct sockaddr_un *sun, const char *address, size_t length) {
  memset(sun, 0, sizeof(*sun));
  sun->sun_family = AF_UNIX;
  size_t base = offsetof(struct sockaddr_un, sun_path);
  if (length == 0) return (int)sizeof(sa_family_t); /* autobind (bind) / EINVAL (connect) */
  if (address[0] == '\0') {
    /* Abstract: exact length, no terminator. */
    if (length > sizeof(sun->sun_path)) return -ENAMETOOLONG;
    memcpy(sun->sun_path, address, length);
    return (int)(base + length);
  }
  if (memchr(address, '\0', length) != NULL) return -EINVAL;
  if (length >= sizeof(sun->sun_path)) return -ENAMETOOLONG;
  memcpy(sun->sun_path, address, length);
  sun->sun_path[length] = '\0';
  return (int)(base + length + 1);
}

int sys_bind(int fd, const char *address, size_t length) {
  struct sockaddr_un sun;
  int len = make_addr(&sun, address, length);
  if (len < 0) return len;
  RETRY(int, r, bind(fd, (const struct sockaddr *)&sun, (socklen_t)len));
  return r == -1 ? -errno : 0;
}

int sys_connect(int fd, const char *address, size_t length) {
  struct sockaddr_un sun;
  int len = make_addr(&sun, address, length);
  if (len < 0) return len;
  RETRY(int, r, connect(fd, (const struct sockaddr *)&sun, (socklen_t)len));
  return r == -1 ? -errno : 0;
}

int sys_listen(int fd, int backlog) {
  RETRY(int, r, listen(fd, backlog));
  return r == -1 ? -errno : 0;
}

int sys_accept(int fd, int nonblock) {
  RETRY(int, r, accept4(fd, NULL, NULL, sock_flags(nonblock)));
  return NEG_ERRNO(r);
}

int sys_sock_name(int fd, char *buf, size_t cap, size_t *length) {
  struct sockaddr_un sun;
  socklen_t len = sizeof(sun);
  memset(&sun, 0, sizeof(sun));
  RETRY(int, r, getsockname(fd, (struct sockaddr *)&sun, &len));
  if (r == -1) return -errno;
  size_t base = offsetof(struct sockaddr_un, sun_path);
  if (sun.sun_family != AF_UNIX) return -EAFNOSUPPORT;
  if (len > sizeof(sun)) len = sizeof(sun);
  size_t n = len > base ? len - base : 0;
  if (n > 0 && sun.sun_path[0] != '\0') n = strnlen(sun.sun_path, n); /* a path */
  if (n > cap) n = cap;
  memcpy(buf, sun.sun_path, n);
  *length = n;
  return 0;
}

ssize_t sys_sendmsg(int fd, const void *data, size_t length, const int *fds, size_t nfds,
                    int flags) {
  if (nfds > SYS_SCM_MAX_FD) return -EINVAL;
  union {
    char buf[CMSG_SPACE(SYS_SCM_MAX_FD * sizeof(int))];
    struct cmsghdr align;
  } control;
  struct iovec iov = {.iov_base = (void *)data, .iov_len = length};
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    memset(control.buf, 0, CMSG_SPACE(nfds * sizeof(int)));
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
  }
  RETRY(ssize_t, r, sendmsg(fd, &msg, flags | MSG_NOSIGNAL));
  return NEG_ERRNO(r);
}

ssize_t sys_recvmsg(int fd, void *data, size_t cap, int *fds, size_t max_fds, size_t *nfds,
                    int flags, int *msg_flags) {
  return sys_recvmsg_cred(fd, data, cap, fds, max_fds, nfds, flags, msg_flags, NULL, NULL);
}

int sys_mmap(int fd, size_t length, int64_t offset, int prot, int flags, void **addr) {
  void *p;
  do {
    p = mmap(NULL, length, prot, flags, fd, (off_t)offset);
  } while (p == MAP_FAILED && errno == EINTR);
  if (p == MAP_FAILED) return -errno;
  *addr = p;
  return 0;
}

int sys_munmap(void *addr, size_t length) {
  return munmap(addr, length) == -1 ? -errno : 0;
}

int sys_madvise(void *addr, size_t length, int advice) {
  RETRY(int, r, madvise(addr, length, advice));
  return r == -1 ? -errno : 0;
}

long sys_page_size(void) {
  return sysconf(_SC_PAGESIZE);
}

int sys_eventfd(unsigned int initval, int flags) {
  RETRY(int, fd, eventfd(initval, flags | EFD_CLOEXEC));
  return NEG_ERRNO(fd);
}

int sys_poll_now(int fd, int events) {
  struct pollfd p = {.fd = fd, .events = (short)events, .revents = 0};
  RETRY(int, r, poll(&p, 1, 0));
  if (r < 0) return -errno;
  if (p.revents & POLLNVAL) return -EBADF;
  return p.revents;
}

int sys_first_use(void) {
  /* One flag per process (shared by every thread and worker): the only global state of the
   * addon, set once and never reset. */
  static atomic_int used = 0;
  return atomic_exchange(&used, 1) == 0;
}

int sys_ioctl(int fd, unsigned long request, void *arg) {
  RETRY(int, r, ioctl(fd, request, arg));
  return NEG_ERRNO(r);
}

int sys_pidfd_open(int pid) {
  RETRY(long, r, syscall(SYS_pidfd_open, (pid_t)pid, 0u));
  return r == -1 ? -errno : (int)r;
}

int sys_pidfd_getfd(int pidfd, int targetfd) {
  RETRY(long, r, syscall(SYS_pidfd_getfd, pidfd, targetfd, 0u));
  return r == -1 ? -errno : (int)r;
}

const char *sys_errname(int err, char *buf, size_t cap) {
  const char *name = strerrorname_np(err);
  if (name != NULL) return name;
  snprintf(buf, cap, "E%d", err);
  return buf;
}

const char *sys_strerror(int err, char *buf, size_t cap) {
  /* GNU strerror_r: returns a string that may or may not be buf. */
  return strerror_r(err, buf, cap);
}
