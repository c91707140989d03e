// Owns the per-socket TCP congestion control (TCP_CONGESTION): set on an accepted connection, read back, and tried
// on a socket of its own so that a name the kernel refuses is found at start-up, not at the first replica.
// Why walcast sets it at all: with BBR as the system default and no fq qdisc (loopback never has one), the kernel
// paces every TCP send with its own hrtimers, and a loopback replica then costs the sender about twice the CPU per
// GB of the same sends without pacing (docs/benchmarks.md, "Loopback connections and BBR's pacing").
#pragma once

#include <cstddef>

#include "native-errors.h"

namespace walcast {

// TCP_CA_NAME_MAX of the kernel, terminating NUL included.
constexpr size_t kCongestionNameBytes = 16;

// setsockopt(TCP_CONGESTION) on a connected (or listening) TCP socket. A name the kernel does not know is ENOENT;
// one an unprivileged process may not pick (net.ipv4.tcp_allowed_congestion_control) is EPERM.
Failure SetTcpCongestion(int fd, const char* name);

// getsockopt(TCP_CONGESTION) into out (at least kCongestionNameBytes), NUL-terminated.
Failure GetTcpCongestion(int fd, char* out);

// SetTcpCongestion on a fresh IPv4 TCP socket of its own, closed again: would this name be accepted here?
Failure TryTcpCongestion(const char* name);

}  // namespace walcast
