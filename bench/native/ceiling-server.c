/*
 * ceiling-server: the machine's ceiling for serving WAL, built by the harness with cc, never shipped.
 *
 * The least a WAL server can do: one thread, epoll, every client socket non-blocking; per client a 30-byte
 * CopyData/XLogData header sent with MSG_MORE and then sendfile() of up to 128 KiB from the segment file
 * (the chunking of walsender.c XLogSendPhysical, never crossing a segment), with a per-turn byte budget per
 * client so that one fast client cannot starve the others (nginx sendfile_max_chunk). It speaks only what the
 * benchmark consumer needs: startup → AuthenticationOk + ReadyForQuery, START_REPLICATION X/X → CopyBothResponse,
 * then WAL up to --end-lsn. No auth, no commands, no feedback processing (replies are read and dropped).
 *
 * Segment files are <dir>/<24 hex digit name> for timeline --timeline (the walcast data-dir layout and pg_wal
 * agree on names). Prints {"port":N} on stdout once listening; stops on SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

/* PostgreSQL's MAX_SEND_SIZE = XLOG_BLCKSZ * 16 (walsender.c). */
#define CHUNK_BYTES_MAX (128 * 1024)
#define WAL_PAGE_BYTES 8192
/* Bytes one client may be sent per turn before the loop moves on (fairness; measured 256 KiB–1 MiB is fine). */
#define TURN_BUDGET_BYTES (256 * 1024)
/* 'd' + Int32 length + 'w' + 3 × Int64. */
#define FRAME_HEADER_BYTES 30
#define INPUT_BYTES_MAX 4096
#define SEGMENTS_MAX 65536
#define EPOLL_EVENTS_MAX 256

enum state { HANDSHAKE_STARTUP, HANDSHAKE_QUERY, STREAMING, FINISHED };

struct client {
  int fd;
  enum state state;
  unsigned char input[INPUT_BYTES_MAX];
  size_t input_have;
  uint64_t position;       /* next LSN to frame */
  unsigned char frame[FRAME_HEADER_BYTES];
  size_t frame_sent;       /* bytes of frame already sent; FRAME_HEADER_BYTES when only payload is left */
  uint64_t chunk_bytes;    /* payload bytes of the current chunk, 0 when none */
  uint64_t chunk_sent;
  int blocked;             /* the socket returned EAGAIN; wait for EPOLLOUT */
  struct client *next_active;
};

static const char *wal_dir;
static unsigned timeline = 1;
static uint64_t segment_bytes = 16 * 1024 * 1024;
static uint64_t end_lsn;
static int segment_fds[SEGMENTS_MAX];
static int epoll_fd;
static volatile sig_atomic_t stopping;

static void write_be32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void write_be64(unsigned char *p, uint64_t v) { write_be32(p, v >> 32); write_be32(p + 4, (uint32_t)v); }
static uint32_t read_be32(const unsigned char *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }

static int segment_fd(uint64_t segno) {
  if (segno >= SEGMENTS_MAX) return -1;
  if (segment_fds[segno] > 0) return segment_fds[segno];
  uint64_t per_id = 0x100000000ULL / segment_bytes;
  char path[4096];
  snprintf(path, sizeof path, "%s/%08X%08X%08X", wal_dir, timeline, (unsigned)(segno / per_id), (unsigned)(segno % per_id));
  int fd = open(path, O_RDONLY);
  if (fd < 0) { char partial[4200]; snprintf(partial, sizeof partial, "%s.partial", path); fd = open(partial, O_RDONLY); }
  if (fd < 0) { perror(path); return -1; }
  segment_fds[segno] = fd;
  return fd;
}

static void drop_client(struct client *c) {
  epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
  c->state = FINISHED;
}

static int send_small(struct client *c, const unsigned char *bytes, size_t length) {
  /* Handshake replies are tiny and the socket buffer is empty then; a short send means the peer is broken. */
  ssize_t n = send(c->fd, bytes, length, MSG_NOSIGNAL);
  if (n != (ssize_t)length) { drop_client(c); return -1; }
  return 0;
}

static void next_chunk(struct client *c) {
  uint64_t end = c->position + CHUNK_BYTES_MAX;
  uint64_t segment_end = (c->position / segment_bytes + 1) * segment_bytes;
  if (end >= end_lsn) end = end_lsn;
  else end -= end % WAL_PAGE_BYTES;
  if (end > segment_end) end = segment_end;
  c->chunk_bytes = end - c->position;
  c->chunk_sent = 0;
  c->frame_sent = 0;
  c->frame[0] = 'd';
  write_be32(c->frame + 1, (uint32_t)(4 + 25 + c->chunk_bytes));
  c->frame[5] = 'w';
  write_be64(c->frame + 6, c->position);
  write_be64(c->frame + 14, end_lsn);
  write_be64(c->frame + 22, 0);
}

/* Sends up to the turn budget; returns 1 when the client can take more right away. */
static int send_turn(struct client *c) {
  uint64_t budget = TURN_BUDGET_BYTES;
  while (budget > 0 && c->state == STREAMING) {
    if (c->chunk_bytes == 0) {
      if (c->position >= end_lsn) { c->state = FINISHED; return 0; }
      next_chunk(c);
    }
    if (c->frame_sent < FRAME_HEADER_BYTES) {
      ssize_t n = send(c->fd, c->frame + c->frame_sent, FRAME_HEADER_BYTES - c->frame_sent, MSG_MORE | MSG_NOSIGNAL);
      if (n < 0) { if (errno == EAGAIN) { c->blocked = 1; return 0; } drop_client(c); return 0; }
      c->frame_sent += (size_t)n;
      continue;
    }
    int fd = segment_fd(c->position / segment_bytes);
    if (fd < 0) { drop_client(c); return 0; }
    off_t offset = (off_t)(c->position % segment_bytes);
    uint64_t want = c->chunk_bytes - c->chunk_sent;
    ssize_t n = sendfile(c->fd, fd, &offset, want < budget ? want : budget);
    if (n < 0) { if (errno == EAGAIN) { c->blocked = 1; return 0; } drop_client(c); return 0; }
    if (n == 0) { drop_client(c); return 0; }
    c->chunk_sent += (uint64_t)n;
    c->position += (uint64_t)n;
    budget -= (uint64_t)n < budget ? (uint64_t)n : budget;
    if (c->chunk_sent == c->chunk_bytes) c->chunk_bytes = 0;
  }
  return c->state == STREAMING;
}

static void handle_input(struct client *c) {
  for (;;) {
    if (c->state == HANDSHAKE_STARTUP) {
      if (c->input_have < 4) return;
      uint32_t length = read_be32(c->input);
      if (length > INPUT_BYTES_MAX || length < 8) { drop_client(c); return; }
      if (c->input_have < length) return;
      memmove(c->input, c->input + length, c->input_have - length);
      c->input_have -= length;
      static const unsigned char reply[] = { 'R', 0, 0, 0, 8, 0, 0, 0, 0, 'Z', 0, 0, 0, 5, 'I' };
      if (send_small(c, reply, sizeof reply) < 0) return;
      c->state = HANDSHAKE_QUERY;
      continue;
    }
    if (c->input_have < 5) return;
    uint32_t length = read_be32(c->input + 1) + 1;
    if (length > INPUT_BYTES_MAX) { drop_client(c); return; }
    if (c->input_have < length) return;
    if (c->state == HANDSHAKE_QUERY && c->input[0] == 'Q') {
      char sql[INPUT_BYTES_MAX];
      memcpy(sql, c->input + 5, length - 5);
      sql[length - 5] = 0;
      unsigned hi, lo;
      const char *slash = strchr(sql, '/');
      const char *token = slash;
      while (token && token > sql && token[-1] != ' ') token--;
      if (token == NULL || sscanf(token, "%X/%X", &hi, &lo) != 2) { drop_client(c); return; }
      c->position = ((uint64_t)hi << 32) | lo;
      static const unsigned char copy_both[] = { 'W', 0, 0, 0, 7, 0, 0, 0 };
      if (send_small(c, copy_both, sizeof copy_both) < 0) return;
      c->state = STREAMING;
    }
    /* Feedback ('d' 'r' ...) and anything else after START_REPLICATION is dropped. */
    memmove(c->input, c->input + length, c->input_have - length);
    c->input_have -= length;
  }
}

static void on_readable(struct client *c) {
  for (;;) {
    ssize_t n = read(c->fd, c->input + c->input_have, INPUT_BYTES_MAX - c->input_have);
    if (n > 0) { c->input_have += (size_t)n; handle_input(c); if (c->fd < 0) return; continue; }
    if (n < 0 && errno == EAGAIN) return;
    drop_client(c);
    return;
  }
}

static void on_signal(int signo) { (void)signo; stopping = 1; }

static void parse_arguments(int argc, char **argv, int *port) {
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--port") == 0) *port = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--wal-dir") == 0) wal_dir = argv[i + 1];
    else if (strcmp(argv[i], "--timeline") == 0) timeline = (unsigned)atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--segment-bytes") == 0) segment_bytes = strtoull(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "--end-lsn") == 0) { unsigned hi, lo; if (sscanf(argv[i + 1], "%X/%X", &hi, &lo) == 2) end_lsn = ((uint64_t)hi << 32) | lo; }
  }
  if (wal_dir == NULL || end_lsn == 0) {
    fprintf(stderr, "usage: ceiling-server --wal-dir DIR --end-lsn X/X [--port P] [--timeline T] [--segment-bytes B]\n");
    exit(2);
  }
}

int main(int argc, char **argv) {
  int port = 0;
  parse_arguments(argc, argv, &port);
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  signal(SIGPIPE, SIG_IGN);
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
  inet_pton(AF_INET, "127.0.0.1", &address.sin_addr);
  if (bind(listener, (struct sockaddr *)&address, sizeof address) < 0 || listen(listener, 4096) < 0) { perror("bind/listen"); return 1; }
  socklen_t length = sizeof address;
  getsockname(listener, (struct sockaddr *)&address, &length);
  printf("{\"port\":%d}\n", ntohs(address.sin_port));
  fflush(stdout);
  epoll_fd = epoll_create1(0);
  struct epoll_event event = { .events = EPOLLIN, .data.ptr = NULL };
  epoll_ctl(epoll_fd, EPOLL_CTL_ADD, listener, &event);
  struct epoll_event events[EPOLL_EVENTS_MAX];
  struct client **clients = NULL;
  size_t client_count = 0;
  int busy = 0;
  while (!stopping) {
    int n = epoll_wait(epoll_fd, events, EPOLL_EVENTS_MAX, busy ? 0 : 200);
    for (int i = 0; i < n; i++) {
      struct client *c = events[i].data.ptr;
      if (c == NULL) {
        int fd;
        while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          c = calloc(1, sizeof *c);
          c->fd = fd;
          clients = realloc(clients, (client_count + 1) * sizeof *clients);
          clients[client_count++] = c;
          struct epoll_event e = { .events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP, .data.ptr = c };
          epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &e);
        }
        continue;
      }
      if (c->fd < 0) continue;
      if (events[i].events & EPOLLOUT) c->blocked = 0;
      if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(c);
    }
    busy = 0;
    for (size_t i = 0; i < client_count; i++) {
      struct client *c = clients[i];
      if (c->fd >= 0 && c->state == STREAMING && !c->blocked) busy |= send_turn(c);
    }
  }
  for (size_t i = 0; i < client_count; i++) if (clients[i]->fd >= 0) close(clients[i]->fd);
  return 0;
}
