/*
 * sendfile-receiver: what a loopback TCP receiver's CPU per GB depends on when the sender uses sendfile (walcast's
 * native default) or copies (PostgreSQL's walsender: pread into a buffer, then send). Issue 13: pg_receivewal spends
 * ~0.1 CPU s/GB more when walcast's sendfile backend feeds it than when PostgreSQL does, and it is the one-replica
 * bottleneck. Outside walcast, with nothing but the kernel: one process sends FILE over 127.0.0.1 to a forked child
 * that recv()s into a 128 KiB buffer (as libpq does) and discards; each side prints its own CPU s/GB (getrusage).
 * Built by hand with cc, never shipped (docs/benchmarks.md, "One replica: the receive copy from page cache").
 *
 *   sendfile-receiver MODE FILE [CHUNK_BYTES [REPEAT]]
 *     sendfile  sendfile() CHUNK_BYTES (default 131072, a walcast chunk) at a time
 *     touch     read one byte of every cache line of the chunk through a mapping, then sendfile it
 *     demote    as touch, then CLDEMOTE every line (push it towards the shared L3; needs the cldemote CPU flag)
 *     flush     CLFLUSHOPT every line of the chunk, then sendfile it: with a small FILE repeated, the same few pages
 *               (frags, struct pages, TLB entries all warm) but their bytes read from memory
 *     send      pread() the chunk into a buffer, send() the buffer (the walsender's way)
 *     mapsend   send() straight from a mapping of the file (walcast's writev strategy)
 *     splice    file -> pipe -> socket (two splice() calls; the pipe sized by PIPE_BYTES, default 1 MiB)
 *   REPEAT sends FILE that many times: a small FILE (2 MiB) repeated stays in CPU cache (hot bytes, same frags).
 *   Environment: SCPU / RCPU pin the sender / receiver to a CPU; RCVBUF sets the receiver's SO_RCVBUF; TOUCH_AT
 *   (bytes, may be negative) makes touch read the chunk that far ahead of the one it sends (behind: bytes already
 *   queued for the receiver), as the sender's checks ahead do.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RECV_BUFFER_BYTES (128 * 1024)
#define CACHE_LINE_BYTES 64
#define SEGMENT_BYTES (16ULL * 1024 * 1024)

static double cpu_seconds(void) {
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return (double)usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + (double)usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6;
}

static double now_seconds(void) {
  struct timespec time;
  clock_gettime(CLOCK_MONOTONIC, &time);
  return (double)time.tv_sec + time.tv_nsec / 1e9;
}

static void pin_from_env(const char *name) {
  const char *value = getenv(name);
  if (value == NULL) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(atoi(value), &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) perror("sched_setaffinity");
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

/* The receiver: recv until EOF, then its own CPU per GB. */
static void receive(struct sockaddr_in address, const char *mode) {
  pin_from_env("RCPU");
  int sock = socket(AF_INET, SOCK_STREAM, 0);
  const char *rcvbuf = getenv("RCVBUF");
  if (rcvbuf != NULL) {
    int value = atoi(rcvbuf);
    setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &value, sizeof value);
  }
  if (connect(sock, (struct sockaddr *)&address, sizeof address) != 0) die("connect");
  char *buffer = malloc(RECV_BUFFER_BYTES);
  /* RECV_WRITE=FILE: write what arrives into FILE (on tmpfs: as pg_receivewal --no-sync into /dev/shm), emptied
   * every 16 MiB so that its pages are new ones, as each new segment's are: a slower receiver, its queue full. */
  const char *write_path = getenv("RECV_WRITE");
  int out = write_path == NULL ? -1 : open(write_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (write_path != NULL && out < 0) die("open RECV_WRITE");
  uint64_t total = 0;
  ssize_t got;
  while ((got = recv(sock, buffer, RECV_BUFFER_BYTES, 0)) > 0) {
    if (out >= 0) {
      if ((total & (SEGMENT_BYTES - 1)) + (uint64_t)got > SEGMENT_BYTES && ftruncate(out, 0) == 0) lseek(out, 0, SEEK_SET);
      if (write(out, buffer, (size_t)got) != got) die("write");
    }
    total += (uint64_t)got;
  }
  if (out >= 0) unlink(write_path);
  printf("%s receiver %.3f CPU s/GB (%llu bytes)\n", mode, cpu_seconds() / (total / 1e9), (unsigned long long)total);
  fflush(stdout);
  _exit(0);
}

static volatile uint64_t sink;

static void touch(const uint8_t *bytes, size_t length, int demote) {
  uint64_t sum = 0;
  for (size_t i = 0; i < length; i += CACHE_LINE_BYTES) sum += bytes[i];
  sink += sum;
  if (demote) {
    for (size_t i = 0; i < length; i += CACHE_LINE_BYTES) __asm__ volatile("cldemote (%0)" ::"r"(bytes + i) : "memory");
  }
}

static void send_all(int sock, const uint8_t *bytes, size_t length) {
  for (size_t done = 0; done < length;) {
    ssize_t sent = send(sock, bytes + done, length - done, 0);
    if (sent <= 0) die("send");
    done += (size_t)sent;
  }
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: sendfile-receiver sendfile|touch|demote|flush|send|mapsend|splice FILE [CHUNK_BYTES [REPEAT]]\n");
    return 2;
  }
  const char *mode = argv[1];
  int fd = open(argv[2], O_RDONLY);
  if (fd < 0) die("open");
  struct stat info;
  if (fstat(fd, &info) != 0 || info.st_size == 0) die("fstat");
  const size_t chunk = argc > 3 ? strtoul(argv[3], NULL, 10) : 131072;
  const int repeat = argc > 4 ? atoi(argv[4]) : 1;
  const off_t size = info.st_size;
  const off_t touch_at = getenv("TOUCH_AT") == NULL ? 0 : (off_t)atoll(getenv("TOUCH_AT"));

  int listener = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t address_length = sizeof address;
  if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 1) != 0) die("listen");
  getsockname(listener, (struct sockaddr *)&address, &address_length);
  pid_t child = fork();
  if (child == 0) receive(address, mode);
  pin_from_env("SCPU");
  int sock = accept(listener, NULL, NULL);
  if (sock < 0) die("accept");

  const uint8_t *map = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) die("mmap");
  uint8_t *buffer = malloc(chunk + 64);
  // HEADER=N: an N-byte header before every chunk (walcast's XLogData header is 30); send and mapsend put it in the same
  // send() as the payload (as PostgreSQL's walsender), sendfile and splice send it alone with MSG_MORE first.
  // CORK=N: TCP_CORK around every N chunks (sendfile and splice). splice: file -> pipe (PIPE_BYTES, default 1 MiB) -> socket.
  const size_t header_bytes = getenv("HEADER") == NULL ? 0 : strtoul(getenv("HEADER"), NULL, 10);
  const long cork_chunks = getenv("CORK") == NULL ? 0 : atol(getenv("CORK"));
  uint8_t header[64] = {'d'};
  if (header_bytes > sizeof header) die("HEADER");
  const int one = 1, zero = 0;
  // NODELAY=1: TCP_NODELAY on the sending socket, as walcast (and PostgreSQL) set it on every client connection.
  if (getenv("NODELAY") != NULL && atoi(getenv("NODELAY")) != 0) setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  long chunk_index = 0;
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) die("pipe");
  fcntl(pipe_fds[1], F_SETPIPE_SZ, getenv("PIPE_BYTES") == NULL ? 1048576 : atoi(getenv("PIPE_BYTES")));
  const double cpu_before = cpu_seconds();
  const double started = now_seconds();
  for (int round = 0; round < repeat; round++) {
    for (off_t offset = 0; offset < size;) {
      const size_t length = (size_t)(size - offset) < chunk ? (size_t)(size - offset) : chunk;
      if (strcmp(mode, "send") == 0) {
        if (pread(fd, buffer + header_bytes, length, offset) != (ssize_t)length) die("pread");
        memcpy(buffer, header, header_bytes);
        send_all(sock, buffer, header_bytes + length);
      } else if (strcmp(mode, "mapsend") == 0) {
        if (header_bytes > 0 && send(sock, header, header_bytes, MSG_MORE) != (ssize_t)header_bytes) die("send header");
        send_all(sock, map + offset, length);
      } else {
        if (strcmp(mode, "flush") == 0) {
          for (size_t i = 0; i < length; i += CACHE_LINE_BYTES) __asm__ volatile("clflushopt (%0)" ::"r"(map + offset + i) : "memory");
          __asm__ volatile("sfence" ::: "memory");
        } else if (strcmp(mode, "touch") == 0) {
          const off_t at = offset + touch_at;
          if (at >= 0 && at + (off_t)length <= size) touch(map + at, length, 0);
        }
        else if (strcmp(mode, "demote") == 0) touch(map + offset, length, 1);
        else if (strcmp(mode, "sendfile") != 0 && strcmp(mode, "splice") != 0) { fprintf(stderr, "unknown mode %s\n", mode); return 2; }
        if (header_bytes > 0) {
          // walcast's pattern: the chunk's header first, held back (MSG_MORE) for the payload that follows.
          if (cork_chunks > 0 && chunk_index % cork_chunks == 0) setsockopt(sock, IPPROTO_TCP, TCP_CORK, &one, sizeof one);
          if (send(sock, header, header_bytes, MSG_MORE) != (ssize_t)header_bytes) die("send header");
        }
        if (strcmp(mode, "splice") == 0) {
          for (off_t position = offset; position < offset + (off_t)length;) {
            ssize_t in = splice(fd, &position, pipe_fds[1], NULL, (size_t)(offset + (off_t)length - position), SPLICE_F_MOVE);
            if (in <= 0) die("splice in");
            for (ssize_t out = 0; out < in;) {
              ssize_t moved = splice(pipe_fds[0], NULL, sock, NULL, (size_t)(in - out), SPLICE_F_MOVE | SPLICE_F_MORE);
              if (moved <= 0) die("splice out");
              out += moved;
            }
          }
        } else {
          for (off_t position = offset; position < offset + (off_t)length;) {
            if (sendfile(sock, fd, &position, (size_t)(offset + (off_t)length - position)) <= 0) die("sendfile");
          }
        }
        if (cork_chunks > 0 && (chunk_index + 1) % cork_chunks == 0) setsockopt(sock, IPPROTO_TCP, TCP_CORK, &zero, sizeof zero);
        chunk_index++;
      }
      offset += (off_t)length;
    }
  }
  close(sock);
  int status;
  waitpid(child, &status, 0);
  const double bytes = (double)repeat * (double)size;
  printf("%s sender %.3f CPU s/GB, %.0f MB/s\n", mode, (cpu_seconds() - cpu_before) / (bytes / 1e9), bytes / 1e6 / (now_seconds() - started));
  return 0;
}
