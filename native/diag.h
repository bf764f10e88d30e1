/*
 * diag.h - socket diagnostics and credentials: who holds the other end of a Unix socket, and
 * who sent a message. Same contract as sys.h: no Node-API, non-negative on success, -errno on
 * failure, retried on EINTR, descriptors created close-on-exec.
 */
#ifndef DMABUF_DIAG_H
#define DMABUF_DIAG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * Asks the kernel's socket diagnostics (NETLINK_SOCK_DIAG, UNIX_DIAG with UDIAG_SHOW_PEER)
 * about the AF_UNIX socket with inode `ino` in this network namespace. *peer receives the
 * inode of its peer: 0 when the peer socket is closed (its last descriptor is gone) or when
 * it has none. Returns -ENOENT when no such socket exists, or when the kernel has no UNIX_DIAG
 * (CONFIG_UNIX_DIAG off): ask about a socket known to exist to tell the two apart.
 * Opens and closes one netlink socket per call.
 */
int sys_unix_diag_peer(uint32_t ino, uint32_t *peer);

/* ioctl(SIOCOUTQ): bytes this socket sent that its peer has not received yet. */
int sys_sock_outq(int fd);

/*
 * A new epoll instance watching `fd` edge-triggered with an empty event mask: it reports only
 * EPOLLHUP and EPOLLERR, once per wake-up of `fd` (a state change, such as the last close of
 * the peer), never because `fd` is readable or writable. The epoll descriptor is readable
 * while a report is pending. Returns the epoll descriptor.
 */
int sys_hup_watch(int fd);
/* Takes the pending report of a watch made by sys_hup_watch: its events, or 0 when none. */
int sys_hup_watch_take(int epfd);

/* shutdown(2) of a socket (`how` is SHUT_RD, SHUT_WR or SHUT_RDWR). */
int sys_shutdown(int fd, int how);

/* setsockopt SO_PASSCRED: every message received afterwards carries SCM_CREDENTIALS. */
int sys_set_passcred(int fd, int on);

/* getsockopt SO_PEERPIDFD (Linux 6.5): a pidfd of the process that connected the peer. */
int sys_peer_pidfd(int fd);

/* A message's sender as the kernel recorded it (SCM_CREDENTIALS), in this process's namespaces. */
struct sys_ucred {
  int32_t pid;
  uint32_t uid;
  uint32_t gid;
};

/*
 * sys_recvmsg (see sys.h), and when `cred` is not NULL also the message's SCM_CREDENTIALS:
 * *has_cred is 1 when the message carried them (the socket has SO_PASSCRED), else 0.
 */
ssize_t sys_recvmsg_cred(int fd, void *data, size_t cap, int *fds, size_t max_fds, size_t *nfds,
                         int flags, int *msg_flags, struct sys_ucred *cred, int *has_cred);

#endif /* DMABUF_DIAG_H */
