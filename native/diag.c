/*
 * diag.c - see diag.h. Plain C over glibc and the kernel's uapi; no Node-API here.
 */
#include "diag.h"
#include "sys.h"
#include "retry.h"

#include <errno.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <linux/unix_diag.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* asm-generic/socket.h, Linux 6.5 */
#endif


/* Reads the answer to request `seq` on netlink socket `nl`; see sys_unix_diag_peer. */
static int diag_answer(int nl, uint32_t seq, uint32_t ino, uint32_t *peer) {
  union {
    char buf[8192];
    struct nlmsghdr align;
  } u;
  for (;;) {
    /* The kernel answers within sendto(2): the answer is queued already. */
    RETRY(ssize_t, n, recv(nl, u.buf, sizeof(u.buf), MSG_DONTWAIT));
    if (n < 0) return -errno;
    int len = (int)n;
    for (struct nlmsghdr *h = &u.align; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_seq != seq) continue; /* not ours */
      if (h->nlmsg_type == NLMSG_ERROR) {
        const struct nlmsgerr *e = NLMSG_DATA(h);
        return e->error < 0 ? e->error : -EIO;
      }
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY) continue;
      if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct unix_diag_msg))) return -EIO;
      const struct unix_diag_msg *m = NLMSG_DATA(h);
      if (m->udiag_ino != ino) return -EIO;
      *peer = 0; /* no UNIX_DIAG_PEER attribute: no peer */
      int alen = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof(*m)));
      for (const struct rtattr *a = (const void *)(m + 1); RTA_OK(a, alen); a = RTA_NEXT(a, alen)) {
        if (a->rta_type == UNIX_DIAG_PEER && RTA_PAYLOAD(a) >= sizeof(uint32_t)) {
          memcpy(peer, RTA_DATA(a), sizeof(uint32_t));
        }
      }
      return 0;
    }
  }
}

int sys_unix_diag_peer(uint32_t ino, uint32_t *peer) {
  RETRY(int, nl, socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (nl < 0) return -errno;
  struct {
    struct nlmsghdr nlh;
    struct unix_diag_req req;
  } r;
  memset(&r, 0, sizeof(r));
  r.nlh.nlmsg_len = sizeof(r);
  r.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  r.nlh.nlmsg_flags = NLM_F_REQUEST;
  r.nlh.nlmsg_seq = 1;
  r.req.sdiag_family = AF_UNIX;
  r.req.udiag_states = (uint32_t)-1;
  r.req.udiag_ino = ino;
  r.req.udiag_show = UDIAG_SHOW_PEER;
  r.req.udiag_cookie[0] = INET_DIAG_NOCOOKIE;
  r.req.udiag_cookie[1] = INET_DIAG_NOCOOKIE;
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  int result;
  RETRY(ssize_t, s, sendto(nl, &r, sizeof(r), 0, (struct sockaddr *)&kernel, sizeof(kernel)));
  if (s < 0) {
    result = -errno;
  } else {
    result = diag_answer(nl, 1, ino, peer);
  }
  sys_close(nl);
  return result;
}

int sys_sock_outq(int fd) {
  int n = 0;
  RETRY(int, r, ioctl(fd, SIOCOUTQ, &n));
  return r == -1 ? -errno : n;
}

int sys_hup_watch(int fd) {
  RETRY(int, ep, epoll_create1(EPOLL_CLOEXEC));
  if (ep < 0) return -errno;
  struct epoll_event ev;
  memset(&ev, 0, sizeof(ev));
  ev.events = EPOLLET; /* EPOLLHUP and EPOLLERR are always reported */
  RETRY(int, r, epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
  if (r < 0) {
    int err = errno;
    sys_close(ep);
    return -err;
  }
  return ep;
}

int sys_hup_watch_take(int epfd) {
  struct epoll_event ev;
  RETRY(int, n, epoll_wait(epfd, &ev, 1, 0));
  if (n < 0) return -errno;
  return n == 0 ? 0 : (int)ev.events;
}

int sys_shutdown(int fd, int how) {
  RETRY(int, r, shutdown(fd, how));
  return r == -1 ? -errno : 0;
}

int sys_peer_pidfd(int fd) {
  int pidfd = -1;
  socklen_t len = sizeof(pidfd);
  RETRY(int, r, getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len));
  if (r == -1) return -errno;
  /* The kernel makes it close-on-exec (O_CLOEXEC) already. */
  return pidfd;
}
