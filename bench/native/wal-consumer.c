/*
 * wal-consumer: the benchmark's discarding replication client. Owns nothing of walcast; built by the harness
 * (bench/lib/tools.ts) with cc, never shipped.
 *
 * One process opens N replication connections with epoll (so 1,000 replicas cost one process, not 1,000),
 * performs the trust-auth startup and START_REPLICATION, then reads CopyData/XLogData and throws the WAL away,
 * counting payload bytes and checking that every message continues exactly where the previous one ended.
 * It answers keepalives that ask for a reply, as pg_receivewal does (receivelog.c), and reports its own CPU
 * time so the server's cost can be read apart from the client's.
 *
 * Every connection completes its startup first ({"event":"ready"}); then START_REPLICATION goes to all of them
 * back to back (after a line on stdin with --wait-start, so the harness can snapshot the server's accounting),
 * so N replicas really stream at once and connection set-up is timed apart from streaming.
 * stdout carries one JSON object per line: {"event":"streaming"} once every connection is streaming, then
 * {"event":"done",...} once every connection received --bytes (or failed, or the timeout passed). After "done"
 * the process keeps its connections open until stdin reaches EOF or a line arrives, so the harness can read the
 * server's CPU accounting while the server-side processes (PostgreSQL walsenders) still exist.
 * With --bytes 0 it streams until stdin says stop (live-latency mode). With --latency-log FILE it appends one
 * 24-byte record (u64 connection, u64 end LSN, u64 CLOCK_MONOTONIC ns) per XLogData message on exit.
 * With --raw it only connects and discards bytes until EOF (a sink for the micro benchmarks).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Bytes read per read() call: big enough for several 128 KiB XLogData messages per wakeup. */
#define READ_CHUNK_BYTES (256 * 1024)
/* Largest non-CopyData message body kept (ErrorResponse, ParameterStatus ...); longer ones are a protocol error. */
#define SMALL_BODY_MAX_BYTES (64 * 1024)
/* 'w' + dataStart + walEnd + sendTime: the XLogData header inside CopyData (walsender.c XLogSendPhysical). */
#define XLOGDATA_HEADER_BYTES 25
/* Connections in the startup phase at once; more would overflow a server's listen backlog (Node: 511). */
#define HANDSHAKES_IN_FLIGHT_MAX 64
/* Standby status update interval, as pg_receivewal's default -s 10. */
#define STATUS_INTERVAL_NS (10LL * 1000 * 1000 * 1000)
#define EPOLL_EVENTS_MAX 256
#define PG_PROTOCOL_3_0 196608

enum state { IDLE, CONNECTING, STARTUP, READY, STARTING, STREAMING, DONE, FAILED };

struct conn {
  int fd;
  int index;
  enum state state;
  unsigned char header[5];
  int header_have;
  char type;
  uint32_t body_bytes;
  uint32_t body_have;
  unsigned char head[XLOGDATA_HEADER_BYTES]; /* first bytes of the current CopyData message */
  unsigned char *small;                      /* body of the current other message, grown on demand */
  uint32_t small_capacity;
  unsigned char *body;                       /* head or small, for the current message */
  uint64_t position;   /* next expected LSN */
  uint64_t received;   /* WAL payload bytes counted towards --bytes */
  uint64_t messages;
  int64_t last_status_ns;
};

struct latency_record {
  uint64_t connection;
  uint64_t end_lsn;
  uint64_t time_ns;
};

static struct {
  const char *host;
  int port;
  int connections;
  uint64_t start_lsn;
  uint64_t target_bytes;
  unsigned timeline;
  const char *app_name;
  const char *user;
  const char *latency_log;
  int64_t timeout_ms;
  int raw;
  int wait_start;
  /* --reply-each: a standby status update after every XLogData, as a walreceiver replies after each write/flush. */
  int reply_each;
} options = { "127.0.0.1", 0, 1, 0, 0, 1, "walcast-bench", "repl", NULL, 600000, 0, 0 };

static struct conn *conns;
static int epoll_fd;
static int handshakes_in_flight;
static int next_to_open;
static int finished_count;
static int streaming_count;
static int ready_count;
static int64_t first_connect_ns = -1;
static int64_t all_ready_ns = -1;
static int failed_count;
static int64_t first_start_ns = -1;
static int64_t last_done_ns = -1;
static int64_t all_streaming_ns = -1;
static char first_error[512];
static struct latency_record *latency_records;
static size_t latency_count;
static size_t latency_capacity;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static uint32_t read_be32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t read_be64(const unsigned char *p) {
  return ((uint64_t)read_be32(p) << 32) | read_be32(p + 4);
}

static void write_be32(unsigned char *p, uint32_t v) {
  p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void write_be64(unsigned char *p, uint64_t v) {
  write_be32(p, v >> 32);
  write_be32(p + 4, (uint32_t)v);
}

static int parse_lsn(const char *text, uint64_t *out) {
  unsigned hi, lo;
  if (sscanf(text, "%X/%X", &hi, &lo) != 2) return -1;
  *out = ((uint64_t)hi << 32) | lo;
  return 0;
}

static void fail(struct conn *c, const char *why) {
  if (c->state == FAILED || c->state == DONE) return;
  if (first_error[0] == 0) snprintf(first_error, sizeof first_error, "connection %d: %s", c->index, why);
  if (c->state == CONNECTING || c->state == STARTUP) handshakes_in_flight--;
  c->state = FAILED;
  failed_count++;
  finished_count++;
  epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  c->fd = -1;
}

/* Sends a small message completely; the socket buffer is empty enough for it in practice, else the conn fails. */
static int send_all(struct conn *c, const unsigned char *bytes, size_t length) {
  size_t sent = 0;
  while (sent < length) {
    ssize_t n = send(c->fd, bytes + sent, length - sent, MSG_NOSIGNAL);
    if (n > 0) { sent += (size_t)n; continue; }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) { struct pollfd p = { c->fd, POLLOUT, 0 }; poll(&p, 1, 1000); continue; }
    fail(c, "send failed");
    return -1;
  }
  return 0;
}

static void send_startup(struct conn *c) {
  unsigned char packet[512];
  size_t at = 8;
  const char *pairs[] = { "user", options.user, "database", "replication", "replication", "true", "application_name", options.app_name };
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    size_t n = strlen(pairs[i]) + 1;
    if (at + n + 1 > sizeof packet) { fail(c, "startup packet too long"); return; }
    memcpy(packet + at, pairs[i], n);
    at += n;
  }
  packet[at++] = 0;
  write_be32(packet, (uint32_t)at);
  write_be32(packet + 4, PG_PROTOCOL_3_0);
  if (send_all(c, packet, at) == 0) c->state = STARTUP;
}

static void send_start_replication(struct conn *c) {
  char sql[160];
  int n = snprintf(sql, sizeof sql, "START_REPLICATION PHYSICAL %X/%X TIMELINE %u", (unsigned)(options.start_lsn >> 32),
                   (unsigned)options.start_lsn, options.timeline);
  unsigned char message[200];
  message[0] = 'Q';
  write_be32(message + 1, (uint32_t)(4 + n + 1));
  memcpy(message + 5, sql, (size_t)n + 1);
  if (send_all(c, message, 5 + (size_t)n + 1) == 0) c->state = STARTING;
}

/* Standby status update 'r' (walreceiver.c XLogWalRcvSendReply layout): write = flush = apply = received. */
static void send_status(struct conn *c, int reply_requested) {
  unsigned char m[5 + 34];
  m[0] = 'd';
  write_be32(m + 1, 4 + 34);
  m[5] = 'r';
  write_be64(m + 6, c->position);
  write_be64(m + 14, c->position);
  write_be64(m + 22, c->position);
  write_be64(m + 30, 0);
  m[38] = (unsigned char)reply_requested;
  c->last_status_ns = now_ns();
  send_all(c, m, sizeof m);
}

static void record_latency(struct conn *c, int64_t t) {
  if (options.latency_log == NULL) return;
  if (latency_count == latency_capacity) {
    latency_capacity = latency_capacity ? latency_capacity * 2 : 65536;
    latency_records = realloc(latency_records, latency_capacity * sizeof *latency_records);
    if (latency_records == NULL) { perror("realloc"); exit(3); }
  }
  latency_records[latency_count++] = (struct latency_record){ (uint64_t)c->index, c->position, (uint64_t)t };
}

static void mark_done(struct conn *c) {
  c->state = DONE;
  finished_count++;
  last_done_ns = now_ns();
}

static void handle_xlogdata(struct conn *c) {
  uint64_t data_start = read_be64(c->body + 1);
  uint64_t payload = c->body_bytes - XLOGDATA_HEADER_BYTES;
  if (data_start != c->position) {
    char why[160];
    snprintf(why, sizeof why, "XLogData at %X/%X, expected %X/%X", (unsigned)(data_start >> 32), (unsigned)data_start,
             (unsigned)(c->position >> 32), (unsigned)c->position);
    fail(c, why);
    return;
  }
  c->position += payload;
  c->messages++;
  record_latency(c, now_ns());
  uint64_t counted = payload;
  if (options.target_bytes > 0 && c->received + counted > options.target_bytes) counted = options.target_bytes - c->received;
  c->received += counted;
  if (options.target_bytes > 0 && c->received >= options.target_bytes) mark_done(c);
  if (options.reply_each) send_status(c, 0);
}

static void handle_error_response(struct conn *c) {
  char text[400] = "";
  size_t at = 0;
  /* Fields: code byte, NUL-terminated string; keep severity (S), SQLSTATE (C) and message (M). */
  for (uint32_t i = 0; i < c->body_have && c->body[i] != 0;) {
    char code = (char)c->body[i];
    const char *value = (const char *)c->body + i + 1;
    size_t n = strnlen(value, c->body_have - i - 1);
    if ((code == 'C' || code == 'M' || code == 'S') && at + n + 4 < sizeof text) at += (size_t)snprintf(text + at, sizeof text - at, "%c=%.*s ", code, (int)n, value);
    i += (uint32_t)n + 2;
  }
  fail(c, text);
}

static void handle_message(struct conn *c) {
  if (c->type == 'E') { handle_error_response(c); return; }
  switch (c->state) {
    case STARTUP:
      if (c->type == 'R' && (c->body_have < 4 || read_be32(c->body) != 0)) fail(c, "server asks for a password; the benchmark needs trust auth");
      else if (c->type == 'Z') {
        /* Every connection finishes its startup first; START_REPLICATION then goes to all at once (main). */
        c->state = READY;
        handshakes_in_flight--;
        ready_count++;
      }
      return;
    case STARTING:
      if (c->type == 'W') {
        c->state = STREAMING;
        streaming_count++;
        send_status(c, 0);
      }
      return;
    case STREAMING:
      if (c->type != 'd' || c->body_bytes < 1) return;
      if (c->body[0] == 'w' && c->body_bytes >= XLOGDATA_HEADER_BYTES) handle_xlogdata(c);
      else if (c->body[0] == 'k' && c->body_have >= 18 && c->body[17] != 0) send_status(c, 0);
      return;
    default:
      return;
  }
}

/* Feeds bytes read from the socket through the message framer; only message heads are copied. */
static void consume(struct conn *c, const unsigned char *bytes, size_t length) {
  size_t at = 0;
  while (at < length && (c->state != FAILED)) {
    if (c->header_have < 5) {
      size_t take = 5 - (size_t)c->header_have;
      if (take > length - at) take = length - at;
      memcpy(c->header + c->header_have, bytes + at, take);
      c->header_have += (int)take;
      at += take;
      if (c->header_have < 5) return;
      c->type = (char)c->header[0];
      uint32_t total = read_be32(c->header + 1);
      if (total < 4 || (c->type != 'd' && total - 4 > SMALL_BODY_MAX_BYTES)) { fail(c, "bad message length"); return; }
      c->body_bytes = total - 4;
      c->body_have = 0;
      c->body = c->head;
      if (c->type != 'd') {
        if (c->small_capacity < c->body_bytes) {
          c->small = realloc(c->small, c->body_bytes);
          if (c->small == NULL) { perror("realloc"); exit(3); }
          c->small_capacity = c->body_bytes;
        }
        c->body = c->small;
      }
    }
    uint32_t cap = c->type == 'd' ? XLOGDATA_HEADER_BYTES : SMALL_BODY_MAX_BYTES;
    size_t take = c->body_bytes - c->body_have;
    if (take > length - at) take = length - at;
    if (c->body_have < cap) {
      size_t keep = cap - c->body_have < take ? cap - c->body_have : take;
      memcpy(c->body + c->body_have, bytes + at, keep);
    }
    c->body_have += (uint32_t)take;
    at += take;
    if (c->body_have == c->body_bytes) {
      handle_message(c);
      c->header_have = 0;
    }
  }
}

static void open_connection(struct conn *c) {
  struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons((uint16_t)options.port) };
  inet_pton(AF_INET, options.host, &address.sin_addr);
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (c->fd < 0) { perror("socket"); exit(3); }
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  handshakes_in_flight++;
  if (first_connect_ns < 0) first_connect_ns = now_ns();
  c->state = CONNECTING;
  struct epoll_event event = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.u32 = (uint32_t)c->index };
  epoll_ctl(epoll_fd, EPOLL_CTL_ADD, c->fd, &event);
  if (connect(c->fd, (struct sockaddr *)&address, sizeof address) < 0 && errno != EINPROGRESS) fail(c, strerror(errno));
}

static void open_more(void) {
  while (next_to_open < options.connections && handshakes_in_flight < HANDSHAKES_IN_FLIGHT_MAX) open_connection(&conns[next_to_open++]);
}

static void on_writable(struct conn *c) {
  int error = 0;
  socklen_t length = sizeof error;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &length);
  if (error != 0) { fail(c, strerror(error)); return; }
  struct epoll_event event = { .events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)c->index };
  epoll_ctl(epoll_fd, EPOLL_CTL_MOD, c->fd, &event);
  if (options.raw) { c->state = STREAMING; handshakes_in_flight--; streaming_count++; if (first_start_ns < 0) first_start_ns = now_ns(); return; }
  send_startup(c);
}

static void on_readable(struct conn *c, unsigned char *scratch) {
  ssize_t n = read(c->fd, scratch, READ_CHUNK_BYTES);
  if (n > 0) {
    if (options.raw) { c->received += (uint64_t)n; return; }
    if (c->state != DONE) consume(c, scratch, (size_t)n);
    return;
  }
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (options.raw) { mark_done(c); epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); c->fd = -1; return; }
  if (c->state == DONE) { epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); c->fd = -1; return; }
  fail(c, n == 0 ? "server closed the connection" : strerror(errno));
}

static double cpu_seconds(struct timeval tv) { return (double)tv.tv_sec + (double)tv.tv_usec / 1e6; }

static void print_done(int timed_out) {
  uint64_t total = 0, least = UINT64_MAX, most = 0, messages = 0;
  for (int i = 0; i < options.connections; i++) {
    uint64_t r = conns[i].received;
    total += r;
    messages += conns[i].messages;
    if (r < least) least = r;
    if (r > most) most = r;
  }
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  int64_t end = last_done_ns > 0 ? last_done_ns : now_ns();
  double wall = first_start_ns > 0 ? (double)(end - first_start_ns) / 1e9 : 0;
  double setup = all_streaming_ns > 0 ? (double)(all_streaming_ns - first_start_ns) / 1e9 : -1;
  double connect = all_ready_ns > 0 ? (double)(all_ready_ns - first_connect_ns) / 1e9 : -1;
  printf("{\"event\":\"done\",\"connections\":%d,\"completed\":%d,\"failed\":%d,\"timedOut\":%s,\"bytesTotal\":%llu,"
         "\"bytesMin\":%llu,\"bytesMax\":%llu,\"messages\":%llu,\"wallSeconds\":%.6f,\"setupSeconds\":%.6f,\"connectSeconds\":%.6f,"
         "\"cpuUserSeconds\":%.6f,\"cpuSystemSeconds\":%.6f,\"latencyRecords\":%zu,\"error\":\"",
         options.connections, finished_count - failed_count, failed_count, timed_out ? "true" : "false",
         (unsigned long long)total, (unsigned long long)(least == UINT64_MAX ? 0 : least), (unsigned long long)most,
         (unsigned long long)messages, wall, setup, connect, cpu_seconds(usage.ru_utime), cpu_seconds(usage.ru_stime), latency_count);
  for (const char *p = first_error; *p; p++) {
    if (*p == '"' || *p == '\\') putchar('\\');
    putchar((unsigned char)*p >= 0x20 ? *p : ' ');
  }
  printf("\"}\n");
  fflush(stdout);
}

static void write_latency_log(void) {
  if (options.latency_log == NULL) return;
  FILE *f = fopen(options.latency_log, "wb");
  if (f == NULL) { perror(options.latency_log); return; }
  fwrite(latency_records, sizeof *latency_records, latency_count, f);
  fclose(f);
}

/* Reads stdin up to a newline or EOF, unbuffered, so later poll()s see only newer input. */
static void wait_for_stdin_line(void) {
  char byte;
  while (read(0, &byte, 1) == 1 && byte != '\n') {}
}

/* Sends START_REPLICATION to every connection that finished startup, back to back. */
static void start_all(void) {
  first_start_ns = now_ns();
  for (int i = 0; i < options.connections; i++) if (conns[i].state == READY) send_start_replication(&conns[i]);
}

static int stdin_says_stop(void) {
  struct pollfd p = { 0, POLLIN, 0 };
  return poll(&p, 1, 0) > 0;
}

static void usage(void) {
  fprintf(stderr, "usage: wal-consumer --port P [--host H] [--connections N] --start X/X --bytes B [--timeline T]\n"
                  "       [--app-name NAME] [--user NAME] [--latency-log FILE] [--timeout-ms MS] [--wait-start] [--reply-each] [--raw]\n");
  exit(2);
}

static void parse_arguments(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--raw") == 0) { options.raw = 1; continue; }
    if (strcmp(a, "--wait-start") == 0) { options.wait_start = 1; continue; }
    if (strcmp(a, "--reply-each") == 0) { options.reply_each = 1; continue; }
    if (v == NULL) usage();
    i++;
    if (strcmp(a, "--host") == 0) options.host = v;
    else if (strcmp(a, "--port") == 0) options.port = atoi(v);
    else if (strcmp(a, "--connections") == 0) options.connections = atoi(v);
    else if (strcmp(a, "--start") == 0) { if (parse_lsn(v, &options.start_lsn) < 0) usage(); }
    else if (strcmp(a, "--bytes") == 0) options.target_bytes = strtoull(v, NULL, 10);
    else if (strcmp(a, "--timeline") == 0) options.timeline = (unsigned)atoi(v);
    else if (strcmp(a, "--app-name") == 0) options.app_name = v;
    else if (strcmp(a, "--user") == 0) options.user = v;
    else if (strcmp(a, "--latency-log") == 0) options.latency_log = v;
    else if (strcmp(a, "--timeout-ms") == 0) options.timeout_ms = atoll(v);
    else usage();
  }
  if (options.port <= 0 || options.connections <= 0) usage();
}

int main(int argc, char **argv) {
  parse_arguments(argc, argv);
  conns = calloc((size_t)options.connections, sizeof *conns);
  unsigned char *scratch = malloc(READ_CHUNK_BYTES);
  if (!conns || !scratch) { perror("malloc"); return 3; }
  for (int i = 0; i < options.connections; i++) {
    conns[i] = (struct conn){ .fd = -1, .index = i, .state = IDLE, .position = options.start_lsn };
    conns[i].body = conns[i].head;
  }
  epoll_fd = epoll_create1(0);
  int64_t deadline = now_ns() + options.timeout_ms * 1000000LL;
  int timed_out = 0;
  int stop_requested = 0;
  struct epoll_event events[EPOLL_EVENTS_MAX];
  open_more();
  while (finished_count < options.connections && !stop_requested) {
    int n = epoll_wait(epoll_fd, events, EPOLL_EVENTS_MAX, 200);
    for (int i = 0; i < n; i++) {
      struct conn *c = &conns[events[i].data.u32];
      if (c->fd < 0) continue;
      if (c->state == CONNECTING && (events[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) { on_writable(c); continue; }
      if (events[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(c, scratch);
    }
    open_more();
    if (!options.raw && all_ready_ns < 0 && ready_count + failed_count == options.connections) {
      all_ready_ns = now_ns();
      printf("{\"event\":\"ready\",\"connections\":%d,\"failed\":%d}\n", ready_count, failed_count);
      fflush(stdout);
      if (options.wait_start) wait_for_stdin_line();
      start_all();
    }
    if (all_streaming_ns < 0 && streaming_count + failed_count == options.connections) {
      all_streaming_ns = now_ns();
      printf("{\"event\":\"streaming\",\"connections\":%d,\"failed\":%d}\n", streaming_count, failed_count);
      fflush(stdout);
    }
    int64_t t = now_ns();
    for (int i = 0; !options.raw && i < options.connections; i++) {
      if (conns[i].state == STREAMING && t - conns[i].last_status_ns > STATUS_INTERVAL_NS) send_status(&conns[i], 0);
    }
    if (t > deadline) { timed_out = 1; break; }
    if (options.target_bytes == 0 && !options.raw && stdin_says_stop()) stop_requested = 1;
  }
  print_done(timed_out);
  write_latency_log();
  /* Hold the connections until the harness has read the server's accounting (stdin EOF or one line). */
  if (!stop_requested) wait_for_stdin_line();
  for (int i = 0; i < options.connections; i++) if (conns[i].fd >= 0) close(conns[i].fd);
  return failed_count > 0 || timed_out ? 1 : 0;
}
