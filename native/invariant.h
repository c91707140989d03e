// Owns WALCAST_ASSERT, the addon's invariant check. It is live in every build, Release included, and does not
// depend on NDEBUG (a packager's -DNDEBUG cannot switch it off): the invariants it guards are the ones that keep
// memory shared with the kernel valid (a stream with a send in flight is not freed, iovec lengths stay within
// their unit, residency arrays within their bounds). Continuing past a broken one could send a replica wrong
// WAL bytes or let the kernel write into freed heap; stopping the process is the safe outcome for a replication
// server (replicas reconnect, segment files are untouched). Each check is a compare next to a system call.
#pragma once

#include <cstdio>
#include <cstdlib>

namespace walcast {

[[noreturn]] inline void InvariantFailed(const char* condition, const char* file, int line, const char* function) {
  std::fprintf(stderr, "walcast native: invariant failed: %s (%s:%d, %s)\n", condition, file, line, function);
  std::abort();
}

}  // namespace walcast

#define WALCAST_ASSERT(condition) \
  ((condition) ? static_cast<void>(0) : ::walcast::InvariantFailed(#condition, __FILE__, __LINE__, __func__))
