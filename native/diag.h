/*
 * diag.h - socket diagnostics: whether the other end of a Unix socket still exists, and which
 * process is the peer (SO_PASSCRED and SCM_CREDENTIALS are in sys.h). Same contract as sys.h:
 * no Node-API, non-negative on success, -errno on failure, retried on EINTR, descriptors
 * created close-on-exec.
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

/* getsockopt SO_PEERPIDFD (Linux 6.5): a pidfd of the process that connected the peer. */
int sys_peer_pidfd(int fd);

#endif /* DMABUF_DIAG_H */
