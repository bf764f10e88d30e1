/*
 * sync.h - the system calls of fence files (src/sync): a packet-mode pipe, one write, and
 * two questions about a descriptor. Like sys.h: no Node-API here; every function returns a
 * non-negative value on success and -errno on failure, retrying on EINTR.
 */
#ifndef DMABUF_SYNC_H
#define DMABUF_SYNC_H

#include <stddef.h>
#include <sys/types.h>

/*
 * pipe2(2) with O_CLOEXEC | O_DIRECT (packet mode: a read takes a whole write or nothing of
 * it) | O_NONBLOCK on both ends. fds[0] is the read end, fds[1] the write end.
 */
int sync_pipe(int fds[2]);
/* write(2) of `length` bytes; the count written. */
ssize_t sync_write(int fd, const void *data, size_t length);
/* ioctl(FIONREAD): the bytes waiting to be read, without reading them. */
int sync_bytes_readable(int fd);
/* fcntl(F_GETFL): the file status flags and access mode of the open file description. */
int sync_status_flags(int fd);

#endif /* DMABUF_SYNC_H */
