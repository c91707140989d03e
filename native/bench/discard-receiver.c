/*
 * Benchmark receiver for bench/io-backends.ts: opens CONNECTIONS TCP connections to HOST:PORT, reads and
 * discards everything on all of them from one epoll loop, and exits when the server has closed every one.
 * Prints "bytes=<total> seconds=<from the last connect to the last EOF>". Knows nothing about PostgreSQL:
 * the benchmark measures the sender, so the receiver must cost as little as possible.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* One read per ready socket per turn: 256 KiB keeps syscalls few without starving other connections. */
#define READ_BYTES (256 * 1024)
#define EVENTS_PER_WAIT 256
#define CONNECTIONS_MAX 4096

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s HOST PORT CONNECTIONS\n", argv[0]);
    return 2;
  }
  int connections = atoi(argv[3]);
  if (connections < 1 || connections > CONNECTIONS_MAX) return 2;
  struct sockaddr_in address = {0};
  address.sin_family = AF_INET;
  address.sin_port = htons((unsigned short)atoi(argv[2]));
  if (inet_pton(AF_INET, argv[1], &address.sin_addr) != 1) return 2;
  int epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  for (int index = 0; index < connections; index++) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr*)&address, sizeof address) != 0) {
      perror("connect");
      return 1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event interest = {.events = EPOLLIN, .data.fd = fd};
    epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &interest);
  }
  double started = now_seconds();
  static char buffer[READ_BYTES];
  unsigned long long total = 0;
  int open_count = connections;
  struct epoll_event events[EVENTS_PER_WAIT];
  while (open_count > 0) {
    int ready = epoll_wait(epoll_fd, events, EVENTS_PER_WAIT, 60000);
    if (ready == 0) {
      fprintf(stderr, "no data for 60 s, %d connections open\n", open_count);
      return 1;
    }
    for (int index = 0; index < ready; index++) {
      int fd = events[index].data.fd;
      ssize_t count = read(fd, buffer, sizeof buffer);
      if (count > 0) {
        total += (unsigned long long)count;
      } else if (count == 0 || (errno != EAGAIN && errno != EINTR)) {
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, NULL);
        close(fd);
        open_count--;
      }
    }
  }
  printf("bytes=%llu seconds=%.6f\n", total, now_seconds() - started);
  return 0;
}
