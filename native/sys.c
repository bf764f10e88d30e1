/*
 * sys.c - see sys.h. Plain C over glibc; no Node-API here.
 */
#include "sys.h"
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
  return sys_recvmsg_cred(fd, data, cap, fds, max_fds, nfds, flags, msg_flags, NULL);
}

ssize_t sys_recvmsg_cred(int fd, void *data, size_t cap, int *fds, size_t max_fds, size_t *nfds,
                         int flags, int *msg_flags, sys_cred *cred) {
  if (max_fds > SYS_SCM_MAX_FD) max_fds = SYS_SCM_MAX_FD;
  union {
    char buf[CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(SYS_SCM_MAX_FD * sizeof(int))];
    struct cmsghdr align;
  } control;
  char dummy;
  struct iovec iov = {.iov_base = cap > 0 ? data : &dummy, .iov_len = cap};
  struct msghdr msg;
  memset(&msg, 0, sizeof(msg));
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  /* The kernel writes the credentials first, then the descriptors (net/core/scm.c). */
  size_t room = (cred != NULL ? CMSG_SPACE(sizeof(struct ucred)) : 0) +
                (max_fds > 0 ? CMSG_SPACE(max_fds * sizeof(int)) : 0);
  if (room > 0) {
    msg.msg_control = control.buf;
    msg.msg_controllen = room;
  }
  *nfds = 0;
  *msg_flags = 0;
  if (cred != NULL) memset(cred, 0, sizeof(*cred));
  RETRY(ssize_t, r, recvmsg(fd, &msg, flags | MSG_CMSG_CLOEXEC));
  if (r == -1) return -errno;
  /*
   * Collect every SCM_RIGHTS descriptor. CMSG_SPACE rounds up, so the kernel may deliver
   * more than max_fds; those (and any other surplus) are closed here, never leaked.
   */
  size_t kept = 0;
  if (room > 0) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET) continue;
      if (c->cmsg_type == SCM_CREDENTIALS && cred != NULL &&
          c->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
        struct ucred u;
        memcpy(&u, CMSG_DATA(c), sizeof(u));
        cred->pid = (int32_t)u.pid;
        cred->uid = (uint32_t)u.uid;
        cred->gid = (uint32_t)u.gid;
        continue;
      }
      if (c->cmsg_type != SCM_RIGHTS) continue;
      if (c->cmsg_len < CMSG_LEN(0)) continue;
      size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      const unsigned char *p = CMSG_DATA(c);
      for (size_t i = 0; i < n; i++) {
        int got;
        memcpy(&got, p + i * sizeof(int), sizeof(int));
        if (kept < max_fds) {
          fds[kept++] = got;
        } else {
          close(got);
        }
      }
    }
  }
  *nfds = kept;
  /* The kernel echoes MSG_CMSG_CLOEXEC (an input flag we added) in msg_flags; drop it. */
  *msg_flags = msg.msg_flags & ~MSG_CMSG_CLOEXEC;
  return r;
}

int sys_set_passcred(int fd, int on) {
  int v = on ? 1 : 0;
  RETRY(int, r, setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &v, sizeof(v)));
  return r == -1 ? -errno : 0;
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

/*
 * The errno names, spelled out rather than taken from glibc's strerrorname_np (2.32 and
 * later only, and absent from musl), so that one source builds for both C libraries.
 */
const char *sys_errname(int err, char *buf, size_t cap) {
#define ERRNAME(e) \
  case e:          \
    return #e;
  switch (err) {
#ifdef EPERM
    ERRNAME(EPERM)
#endif
#ifdef ENOENT
    ERRNAME(ENOENT)
#endif
#ifdef ESRCH
    ERRNAME(ESRCH)
#endif
#ifdef EINTR
    ERRNAME(EINTR)
#endif
#ifdef EIO
    ERRNAME(EIO)
#endif
#ifdef ENXIO
    ERRNAME(ENXIO)
#endif
#ifdef E2BIG
    ERRNAME(E2BIG)
#endif
#ifdef ENOEXEC
    ERRNAME(ENOEXEC)
#endif
#ifdef EBADF
    ERRNAME(EBADF)
#endif
#ifdef ECHILD
    ERRNAME(ECHILD)
#endif
#ifdef EAGAIN
    ERRNAME(EAGAIN)
#endif
#ifdef ENOMEM
    ERRNAME(ENOMEM)
#endif
#ifdef EACCES
    ERRNAME(EACCES)
#endif
#ifdef EFAULT
    ERRNAME(EFAULT)
#endif
#ifdef ENOTBLK
    ERRNAME(ENOTBLK)
#endif
#ifdef EBUSY
    ERRNAME(EBUSY)
#endif
#ifdef EEXIST
    ERRNAME(EEXIST)
#endif
#ifdef EXDEV
    ERRNAME(EXDEV)
#endif
#ifdef ENODEV
    ERRNAME(ENODEV)
#endif
#ifdef ENOTDIR
    ERRNAME(ENOTDIR)
#endif
#ifdef EISDIR
    ERRNAME(EISDIR)
#endif
#ifdef EINVAL
    ERRNAME(EINVAL)
#endif
#ifdef ENFILE
    ERRNAME(ENFILE)
#endif
#ifdef EMFILE
    ERRNAME(EMFILE)
#endif
#ifdef ENOTTY
    ERRNAME(ENOTTY)
#endif
#ifdef ETXTBSY
    ERRNAME(ETXTBSY)
#endif
#ifdef EFBIG
    ERRNAME(EFBIG)
#endif
#ifdef ENOSPC
    ERRNAME(ENOSPC)
#endif
#ifdef ESPIPE
    ERRNAME(ESPIPE)
#endif
#ifdef EROFS
    ERRNAME(EROFS)
#endif
#ifdef EMLINK
    ERRNAME(EMLINK)
#endif
#ifdef EPIPE
    ERRNAME(EPIPE)
#endif
#ifdef EDOM
    ERRNAME(EDOM)
#endif
#ifdef ERANGE
    ERRNAME(ERANGE)
#endif
#ifdef EDEADLK
    ERRNAME(EDEADLK)
#endif
#ifdef ENAMETOOLONG
    ERRNAME(ENAMETOOLONG)
#endif
#ifdef ENOLCK
    ERRNAME(ENOLCK)
#endif
#ifdef ENOSYS
    ERRNAME(ENOSYS)
#endif
#ifdef ENOTEMPTY
    ERRNAME(ENOTEMPTY)
#endif
#ifdef ELOOP
    ERRNAME(ELOOP)
#endif
#ifdef ENOMSG
    ERRNAME(ENOMSG)
#endif
#ifdef EIDRM
    ERRNAME(EIDRM)
#endif
#ifdef ENOSTR
    ERRNAME(ENOSTR)
#endif
#ifdef ENODATA
    ERRNAME(ENODATA)
#endif
#ifdef ETIME
    ERRNAME(ETIME)
#endif
#ifdef ENOSR
    ERRNAME(ENOSR)
#endif
#ifdef EREMOTE
    ERRNAME(EREMOTE)
#endif
#ifdef ENOLINK
    ERRNAME(ENOLINK)
#endif
#ifdef EPROTO
    ERRNAME(EPROTO)
#endif
#ifdef EMULTIHOP
    ERRNAME(EMULTIHOP)
#endif
#ifdef EBADMSG
    ERRNAME(EBADMSG)
#endif
#ifdef EOVERFLOW
    ERRNAME(EOVERFLOW)
#endif
#ifdef EILSEQ
    ERRNAME(EILSEQ)
#endif
#ifdef EUSERS
    ERRNAME(EUSERS)
#endif
#ifdef ENOTSOCK
    ERRNAME(ENOTSOCK)
#endif
#ifdef EDESTADDRREQ
    ERRNAME(EDESTADDRREQ)
#endif
#ifdef EMSGSIZE
    ERRNAME(EMSGSIZE)
#endif
#ifdef EPROTOTYPE
    ERRNAME(EPROTOTYPE)
#endif
#ifdef ENOPROTOOPT
    ERRNAME(ENOPROTOOPT)
#endif
#ifdef EPROTONOSUPPORT
    ERRNAME(EPROTONOSUPPORT)
#endif
#ifdef ESOCKTNOSUPPORT
    ERRNAME(ESOCKTNOSUPPORT)
#endif
#ifdef EOPNOTSUPP
    ERRNAME(EOPNOTSUPP)
#endif
#ifdef EPFNOSUPPORT
    ERRNAME(EPFNOSUPPORT)
#endif
#ifdef EAFNOSUPPORT
    ERRNAME(EAFNOSUPPORT)
#endif
#ifdef EADDRINUSE
    ERRNAME(EADDRINUSE)
#endif
#ifdef EADDRNOTAVAIL
    ERRNAME(EADDRNOTAVAIL)
#endif
#ifdef ENETDOWN
    ERRNAME(ENETDOWN)
#endif
#ifdef ENETUNREACH
    ERRNAME(ENETUNREACH)
#endif
#ifdef ENETRESET
    ERRNAME(ENETRESET)
#endif
#ifdef ECONNABORTED
    ERRNAME(ECONNABORTED)
#endif
#ifdef ECONNRESET
    ERRNAME(ECONNRESET)
#endif
#ifdef ENOBUFS
    ERRNAME(ENOBUFS)
#endif
#ifdef EISCONN
    ERRNAME(EISCONN)
#endif
#ifdef ENOTCONN
    ERRNAME(ENOTCONN)
#endif
#ifdef ESHUTDOWN
    ERRNAME(ESHUTDOWN)
#endif
#ifdef ETOOMANYREFS
    ERRNAME(ETOOMANYREFS)
#endif
#ifdef ETIMEDOUT
    ERRNAME(ETIMEDOUT)
#endif
#ifdef ECONNREFUSED
    ERRNAME(ECONNREFUSED)
#endif
#ifdef EHOSTDOWN
    ERRNAME(EHOSTDOWN)
#endif
#ifdef EHOSTUNREACH
    ERRNAME(EHOSTUNREACH)
#endif
#ifdef EALREADY
    ERRNAME(EALREADY)
#endif
#ifdef EINPROGRESS
    ERRNAME(EINPROGRESS)
#endif
#ifdef ESTALE
    ERRNAME(ESTALE)
#endif
#ifdef EDQUOT
    ERRNAME(EDQUOT)
#endif
#ifdef ENOMEDIUM
    ERRNAME(ENOMEDIUM)
#endif
#ifdef EMEDIUMTYPE
    ERRNAME(EMEDIUMTYPE)
#endif
#ifdef ECANCELED
    ERRNAME(ECANCELED)
#endif
#ifdef ENOKEY
    ERRNAME(ENOKEY)
#endif
#ifdef EKEYEXPIRED
    ERRNAME(EKEYEXPIRED)
#endif
#ifdef EKEYREVOKED
    ERRNAME(EKEYREVOKED)
#endif
#ifdef EKEYREJECTED
    ERRNAME(EKEYREJECTED)
#endif
#ifdef EOWNERDEAD
    ERRNAME(EOWNERDEAD)
#endif
#ifdef ENOTRECOVERABLE
    ERRNAME(ENOTRECOVERABLE)
#endif
#ifdef ERFKILL
    ERRNAME(ERFKILL)
#endif
#ifdef EHWPOISON
    ERRNAME(EHWPOISON)
#endif
    default:
      break;
  }
#undef ERRNAME
  snprintf(buf, cap, "E%d", err);
  return buf;
}

const char *sys_strerror(int err, char *buf, size_t cap) {
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
  /* GNU strerror_r: returns a string that may or may not be buf. */
  return strerror_r(err, buf, cap);
#else
  /* XSI strerror_r (musl): fills buf. */
  if (strerror_r(err, buf, cap) != 0) snprintf(buf, cap, "error %d", err);
  return buf;
#endif
}
