/*
 * sys.h - thin wrappers over the Linux system calls the addon needs.
 *
 * This layer knows nothing of Node-API. Every function returns a non-negative value on
 * success and -errno on failure. Every call is retried on EINTR, except sys_close (on
 * Linux the descriptor is gone even when close(2) reports EINTR, so a retry could close a
 * descriptor another thread has just been given).
 *
 * Descriptors that the wrappers create are always close-on-exec.
 */
#ifndef DMABUF_SYS_H
#define DMABUF_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The most descriptors one SCM_RIGHTS message can carry (include/net/scm.h). */
#define SYS_SCM_MAX_FD 253

/* memfd and seals */
int sys_memfd_create(const char *name, unsigned int flags);
int sys_add_seals(int fd, unsigned int seals);
int sys_get_seals(int fd);
int sys_ftruncate(int fd, int64_t size);
int sys_fallocate(int fd, int mode, int64_t offset, int64_t length);

/* descriptors */
int sys_dup(int fd, int cloexec);
int sys_close(int fd);

struct sys_stat {
  uint64_t dev;
  uint64_t ino;
  uint32_t mode;
  int64_t size;
  int64_t blksize;
};
int sys_fstat(int fd, struct sys_stat *out);
int sys_fstatfs_type(int fd, uint32_t *type);
/* Set or clear FD_CLOEXEC / O_NONBLOCK; *previous receives the former state (0 or 1). */
int sys_set_cloexec(int fd, int on, int *previous);
int sys_set_nonblock(int fd, int on, int *previous);

/* Unix sockets */
int sys_socket_info(int fd, int *domain, int *type);
int sys_peer_cred(int fd, int32_t *pid, uint32_t *uid, uint32_t *gid);
int sys_socketpair(int type, int nonblock, int fds[2]);
int sys_socket(int type, int nonblock);
/*
 * `address` has `length` bytes (embedded NULs allowed). A first byte of '\0' names an
 * abstract socket (the exact length is used); otherwise it is a path (-ENAMETOOLONG when it
 * does not fit sun_path with its terminator). An empty address binds to an autobind name.
 */
int sys_bind(int fd, const char *address, size_t length);
int sys_connect(int fd, const char *address, size_t length);
int sys_listen(int fd, int backlog);
int sys_accept(int fd, int nonblock);
/*
 * getsockname(2). Writes the name into `buf` (at most `cap` bytes; 108 suffice) and its
 * length into *length: 0 for an unnamed socket, a leading '\0' for an abstract name.
 */
int sys_sock_name(int fd, char *buf, size_t cap, size_t *length);
/* sendmsg(2) of one buffer plus `nfds` descriptors as SCM_RIGHTS; MSG_NOSIGNAL is added. */
ssize_t sys_sendmsg(int fd, const void *data, size_t length, const int *fds, size_t nfds,
                    int flags);
/*
 * recvmsg(2) of up to `cap` bytes and `max_fds` (<= SYS_SCM_MAX_FD) descriptors, with
 * MSG_CMSG_CLOEXEC added. The received descriptors go to `fds` (*nfds of them); any beyond
 * `max_fds` are closed. *msg_flags receives msg_flags (less the echoed MSG_CMSG_CLOEXEC).
 * Returns the byte count recvmsg(2) returned (which, with MSG_TRUNC in `flags`, may exceed
 * `cap`).
 */
ssize_t sys_recvmsg(int fd, void *data, size_t cap, int *fds, size_t max_fds, size_t *nfds,
                    int flags, int *msg_flags);
/* The sender's credentials that a message carried (SCM_CREDENTIALS); pid 0 when none. */
typedef struct {
  int32_t pid;
  uint32_t uid;
  uint32_t gid;
} sys_cred;
/*
 * sys_recvmsg, with room for SCM_CREDENTIALS as well: the kernel attaches them to every
 * message while the receiving socket has SO_PASSCRED (see sys_set_passcred).
 */
ssize_t sys_recvmsg_cred(int fd, void *data, size_t cap, int *fds, size_t max_fds, size_t *nfds,
                         int flags, int *msg_flags, sys_cred *cred);
/* setsockopt(SO_PASSCRED): 1 makes the kernel attach the sender's credentials to messages. */
int sys_set_passcred(int fd, int on);

/* memory */
int sys_mmap(int fd, size_t length, int64_t offset, int prot, int flags, void **addr);
int sys_munmap(void *addr, size_t length);
int sys_madvise(void *addr, size_t length, int advice);
long sys_page_size(void);

/* misc */
int sys_eventfd(unsigned int initval, int flags);
int sys_ioctl(int fd, unsigned long request, void *arg);
/* poll(2) of one descriptor with timeout 0: the revents, or -errno (-EBADF for POLLNVAL). */
int sys_poll_now(int fd, int events);
/* 1 the first time it is called in this process, 0 afterwards. */
int sys_first_use(void);
int sys_pidfd_open(int pid);
int sys_pidfd_getfd(int pidfd, int targetfd);

/* errors: thread-safe */
/* The errno name ("EBADF"), or "E<number>" written into buf when the name is unknown. */
const char *sys_errname(int err, char *buf, size_t cap);
/* The description of err (strerror_r). */
const char *sys_strerror(int err, char *buf, size_t cap);

#endif /* DMABUF_SYS_H */
