// Owns TCP_CONGESTION get/set/try (see tcp-congestion.h for why walcast sets it).
#include "tcp-congestion.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "invariant.h"

namespace walcast {

Failure SetTcpCongestion(int fd, const char* name) {
  const size_t length = strnlen(name, kCongestionNameBytes);
  WALCAST_ASSERT(length > 0 && length < kCongestionNameBytes);
  if (setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, static_cast<socklen_t>(length)) != 0) {
    return {errno, "setsockopt(TCP_CONGESTION)"};
  }
  return {};
}

Failure GetTcpCongestion(int fd, char* out) {
  std::memset(out, 0, kCongestionNameBytes);
  socklen_t length = static_cast<socklen_t>(kCongestionNameBytes - 1);
  if (getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, out, &length) != 0) return {errno, "getsockopt(TCP_CONGESTION)"};
  return {};
}

Failure TryTcpCongestion(const char* name) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return {errno, "socket"};
  Failure failure = SetTcpCongestion(fd, name);
  close(fd);
  return failure;
}

}  // namespace walcast
