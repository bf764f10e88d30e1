/*
 * The physical floor of a hand-off: what a C program pays to pass a memfd to another
 * process with SCM_RIGHTS, map it and touch it. The bench harness compiles this file at run
 * time (cc -O2) and drives it through stdin, one command per line; every answer is one JSON
 * line on stdout. Times are CLOCK_MONOTONIC nanoseconds (the clock of process.hrtime).
 *
 *   alloc SIZE HUGE [FRESH]
 *                     create a memfd of SIZE bytes (2 MiB pages when HUGE is 1), fill it
 *                     (every page exists) with 0x2a, first byte 0x11, last byte 0x22; unmap.
 *                     FRESH=1: no memfd now; each handoff creates and fills a new one before
 *                     its t0 and closes it after the ack (a first hand-off of a new buffer,
 *                     as a producer of new frames makes them)
 *   handoff ALL       send the memfd to the child over a SOCK_SEQPACKET socketpair; the child
 *                     times from recvmsg's return to having read the first and last byte
 *                     (ALL=1: and summed every byte, 8 at a time as doubles), then munmaps,
 *                     closes and acks; answers {recvNs, receiverNs, oneWayNs, roundTripNs, ...}
 *   free              close the memfd
 *   quit
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif

struct request { uint64_t size; uint64_t t0; uint32_t all; };
struct reply { uint64_t t_recv; uint64_t t_read; double sum; int32_t first; int32_t last; int32_t err; };

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
  fprintf(stderr, "floor: %s: %s\n", what, strerror(errno));
  exit(1);
}

/* The receiver: waits for a descriptor, maps it, reads, acks. */
static void child(int sock) {
  for (;;) {
    struct request rq;
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = { &rq, sizeof rq };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    uint64_t t_recv = now_ns();
    if (n <= 0) exit(0);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    struct reply rp = { .t_recv = t_recv };
    if (!cm || cm->cmsg_type != SCM_RIGHTS) { rp.err = EPROTO; goto ack; }
    int fd;
    memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    const unsigned char *p = mmap(NULL, rq.size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) { rp.err = errno; close(fd); goto ack; }
    rp.first = ((volatile const unsigned char *)p)[0];
    rp.last = ((volatile const unsigned char *)p)[rq.size - 1];
    if (rq.all) {
      /* The same loop the JavaScript receivers run: a Float64Array summed in order. */
      const double *d = (const double *)p;
      double s = 0;
      for (size_t i = 0; i < rq.size / 8; i++) s += d[i];
      rp.sum = s;
    }
    rp.t_read = now_ns();
    munmap((void *)p, rq.size);
    close(fd);
  ack:
    if (write(sock, &rp, sizeof rp) != sizeof rp) exit(1);
  }
}

/*
 * A new memfd of `size` bytes (2 MiB pages when `huge`), every page written: 0x2a, the first
 * byte 0x11, the last 0x22; the writer's mapping is gone when it returns. Prints the error
 * and returns -1 on failure.
 */
static int filled_memfd(uint64_t size, int huge) {
  int fd = memfd_create("bench-floor", MFD_CLOEXEC | (huge ? MFD_HUGETLB : 0));
  if (fd < 0) { printf("{\"error\":\"memfd_create: %s\"}\n", strerror(errno)); return -1; }
  uint64_t page = huge ? (2u << 20) : 4096;
  uint64_t bytes = (size + page - 1) / page * page;
  if (ftruncate(fd, (off_t)bytes) < 0) { printf("{\"error\":\"ftruncate: %s\"}\n", strerror(errno)); close(fd); return -1; }
  unsigned char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) { printf("{\"error\":\"mmap: %s\"}\n", strerror(errno)); close(fd); return -1; }
  memset(p, 0x2a, size);
  p[0] = 0x11;
  p[size - 1] = 0x22;
  munmap(p, bytes);
  return fd;
}

int main(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) { close(sv[0]); child(sv[1]); return 0; }
  close(sv[1]);
  setvbuf(stdout, NULL, _IOLBF, 0);
  int memfd = -1;
  uint64_t size = 0;
  int huge = 0, fresh = 0;
  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    unsigned long long a = 0, b = 0, f = 0;
    if (sscanf(line, "alloc %llu %llu %llu", &a, &b, &f) >= 2) {
      if (memfd >= 0) close(memfd);
      memfd = -1;
      size = a;
      huge = (int)b;
      fresh = (int)f;
      if (!fresh && (memfd = filled_memfd(size, huge)) < 0) continue;
      printf("{\"ok\":true}\n");
    } else if (sscanf(line, "handoff %llu", &a) == 1) {
      if (fresh && size > 0 && (memfd = filled_memfd(size, huge)) < 0) continue;
      if (memfd < 0) { printf("{\"error\":\"no memfd\"}\n"); continue; }
      struct request rq = { .size = size, .all = (uint32_t)a };
      char cbuf[CMSG_SPACE(sizeof(int))];
      memset(cbuf, 0, sizeof cbuf);
      struct iovec iov = { &rq, sizeof rq };
      struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
      struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(cm), &memfd, sizeof memfd);
      uint64_t t0 = now_ns();
      rq.t0 = t0;
      if (sendmsg(sv[0], &msg, MSG_NOSIGNAL) < 0) die("sendmsg");
      struct reply rp;
      if (read(sv[0], &rp, sizeof rp) != sizeof rp) die("read");
      uint64_t t2 = now_ns();
      if (fresh) { close(memfd); memfd = -1; }
      if (rp.err) { printf("{\"error\":\"receiver: %s\"}\n", strerror(rp.err)); continue; }
      printf("{\"recvNs\":%llu,\"receiverNs\":%llu,\"oneWayNs\":%llu,\"roundTripNs\":%llu,\"first\":%d,\"last\":%d,\"sum\":%.17g}\n",
             (unsigned long long)(rp.t_recv - t0), (unsigned long long)(rp.t_read - rp.t_recv),
             (unsigned long long)(rp.t_read - t0), (unsigned long long)(t2 - t0), rp.first, rp.last, rp.sum);
    } else if (strncmp(line, "free", 4) == 0) {
      if (memfd >= 0) close(memfd);
      memfd = -1;
      printf("{\"ok\":true}\n");
    } else if (strncmp(line, "quit", 4) == 0) {
      break;
    } else {
      printf("{\"error\":\"bad command\"}\n");
    }
  }
  close(sv[0]);
  waitpid(pid, NULL, 0);
  return 0;
}
