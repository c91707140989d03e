// Owns the AddressSanitizer check that memory lent to the kernel by an io_uring request (a SENDMSG's msghdr,
// iovecs, header bytes and mapped payload; a prefetch READ's scratch buffer) stays allocated and mapped until that
// request's completion is reaped. ASan instruments user-space loads and stores only: the kernel reading a freed
// header or writing into a freed scratch buffer is invisible to it. So in sanitizer builds the engine records each
// loan when it prepares the request and returns it when the completion is reaped; at that moment (and when the
// engine closes) every lent heap region is checked against ASan's shadow memory, and a region freed meanwhile is
// read once from user space, which makes ASan print its heap-use-after-free report (with the stacks that
// allocated and freed it) and abort. Mapped regions are checked with mincore(2), never touched. In other builds
// every member is an empty inline function: no cost on the hot path.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#if defined(__SANITIZE_ADDRESS__)
#define WALCAST_KERNEL_LOANS 1
#include <unordered_map>
#else
#define WALCAST_KERNEL_LOANS 0
#endif

namespace walcast {

enum class LoanKind : int { kHeap, kMapped };

struct LoanRegion {
  const void* base = nullptr;
  size_t bytes = 0;
  LoanKind kind = LoanKind::kHeap;
};

// A SENDMSG lends its msghdr, its iovec array and the (at most two) regions those iovecs point at.
constexpr size_t kLoanRegionsMax = 4;
using LoanRegions = std::array<LoanRegion, kLoanRegionsMax>;

class KernelLoans {
 public:
#if WALCAST_KERNEL_LOANS
  // Records that the request tagged `tag` (its io_uring user_data) may read or write `regions` until reaped.
  void Lend(uint64_t tag, const LoanRegions& regions);
  // The request's completion was reaped: its regions must still be allocated (checked), and are free to go now.
  void Return(uint64_t tag);
  // Nothing may be lent any more (the engine is about to free its buffers): reports and aborts otherwise.
  void ExpectNone(const char* where);
  size_t outstanding() const { return loans_.size(); }

 private:
  std::unordered_map<uint64_t, LoanRegions> loans_;
#else
  void Lend(uint64_t, const LoanRegions&) {}
  void Return(uint64_t) {}
  void ExpectNone(const char*) {}
  size_t outstanding() const { return 0; }
#endif
};

}  // namespace walcast
