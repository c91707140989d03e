// Owns the sanitizer-build loan checks (see kernel-loans.h). Compiled to nothing without -fsanitize=address.
#include "kernel-loans.h"

#if WALCAST_KERNEL_LOANS

#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace walcast {

namespace {

// Reports a region the kernel may still use but user space already gave up; aborts (through ASan or directly).
void CheckRegion(uint64_t tag, const LoanRegion& region, const char* when) {
  if (region.base == nullptr || region.bytes == 0) return;
  if (region.kind == LoanKind::kHeap) {
    void* bad = __asan_region_is_poisoned(const_cast<void*>(region.base), region.bytes);
    if (bad == nullptr) return;
    std::fprintf(stderr, "walcast kernel-loans: io_uring request %#" PRIx64 " (%s) was lent %zu bytes at %p, freed %s\n",
                 tag, (tag & 3) == 2 ? "read" : "send", region.bytes, region.base, when);
    // An instrumented load of the freed byte: ASan prints heap-use-after-free with both stacks and aborts.
    volatile uint8_t byte = *static_cast<const volatile uint8_t*>(bad);
    (void)byte;
    std::abort();
  }
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t first = reinterpret_cast<uintptr_t>(region.base) / page * page;
  const uintptr_t end = reinterpret_cast<uintptr_t>(region.base) + region.bytes;
  std::vector<unsigned char> pages((end - first + page - 1) / page);
  // mincore fails with ENOMEM when part of the range is no longer mapped; it never touches the pages.
  if (mincore(reinterpret_cast<void*>(first), end - first, pages.data()) == 0 || errno != ENOMEM) return;
  std::fprintf(stderr, "walcast kernel-loans: io_uring request %#" PRIx64 " was lent a mapping at %p (%zu bytes) that was unmapped %s\n",
               tag, region.base, region.bytes, when);
  __sanitizer_print_stack_trace();
  std::abort();
}

}  // namespace

void KernelLoans::Lend(uint64_t tag, const LoanRegions& regions) {
  if (loans_.count(tag) != 0) {
    std::fprintf(stderr, "walcast kernel-loans: request tag %#" PRIx64 " lent twice\n", tag);
    __sanitizer_print_stack_trace();
    std::abort();
  }
  loans_.emplace(tag, regions);
}

void KernelLoans::Return(uint64_t tag) {
  auto found = loans_.find(tag);
  if (found == loans_.end()) return;  // cancel requests lend nothing
  for (const LoanRegion& region : found->second) CheckRegion(tag, region, "before its completion was reaped");
  loans_.erase(found);
}

void KernelLoans::ExpectNone(const char* where) {
  if (loans_.empty()) return;
  for (const auto& loan : loans_) {
    for (const LoanRegion& region : loan.second) CheckRegion(loan.first, region, where);
  }
  std::fprintf(stderr, "walcast kernel-loans: %zu io_uring requests still hold buffers %s\n", loans_.size(), where);
  __sanitizer_print_stack_trace();
  std::abort();
}

}  // namespace walcast

#endif  // WALCAST_KERNEL_LOANS
