// Owns CRC-32C in the addon (see crc32c.h).
//
// Cost model: one crc32q retires per cycle but has a three-cycle latency, so a single dependent chain runs at a
// third of the instruction's throughput (~8 GB/s at 3 GHz). Three independent lanes over adjacent 256-byte
// blocks keep the unit busy (~20+ GB/s), and the lanes are joined with precomputed "append N zero bytes"
// operators (Mark Adler, crc32c.c, zlib's crc32_combine). An 8 KiB page is 3 × 2720 bytes in three lanes plus 32
// bytes in one.
//
// CPUs with AVX-512 VPCLMULQDQ take a faster path (UpdateFold): carry-less multiplication folds 256 bytes per step
// (four 64-byte accumulators, "Fast CRC Computation Using PCLMULQDQ", Intel 2009), and the last 16 bytes are
// reduced with two crc32q. Measured on the 2-vCPU Xeon guest (issue 14): 0.009 CPU s/GB from L2 against 0.032 for
// the three lanes, and 0.064 from DRAM (the machine's single-core read floor is 0.062) against 0.111, so checking
// a page that is not in cache costs little more than reading it. A software prefetch 2 KiB ahead gets it there
// (0.076 without).
#include "crc32c.h"

#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <cstring>
#include <memory>

#include "file-maps.h"
#include "native-errors.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace walcast {

namespace {

constexpr uint32_t kPolynomial = 0x82F63B78;
// Lane length of the three-way hardware loop: 3 × 2720 = 8160 bytes, so an 8 KiB page is one three-lane block
// (two lane joins) and 32 single-lane bytes. A multiple of 8 (crc32q steps).
constexpr size_t kLaneBytes = 2720;
static_assert(kLaneBytes % 8 == 0, "lanes are whole 8-byte words");
// Largest page size crc32cFilePages takes (PostgreSQL's XLOG_BLCKSZ is at most 64 KiB).
constexpr int64_t kPageBytesMax = 64 * 1024;
// Largest range one crc32cFilePages call checksums: a 16 MiB default segment, so a verifier can do a whole
// prefetch window (4 MiB) in one call, while one call stays short on the event-loop thread (~1 ms at 16 GB/s).
constexpr int64_t kFileRangeBytesMax = 16 * 1024 * 1024;
// JS numbers hold offsets exactly up to 2^53.
constexpr int64_t kSafeIntegerMax = (int64_t{1} << 53) - 1;
constexpr int kFdMax = 1 << 30;

struct Tables {
  uint32_t slice[8][256];
  // shift[k][b]: the CRC state after appending kLaneBytes zero bytes to a state whose byte k is b.
  uint32_t shift[4][256];
};

uint32_t MatrixTimes(const uint32_t* matrix, uint32_t vector) {
  uint32_t sum = 0;
  for (int row = 0; vector != 0; row++, vector >>= 1) {
    if ((vector & 1U) != 0) sum ^= matrix[row];
  }
  return sum;
}

uint32_t UpdateSlices(const uint32_t (*slice)[256], uint32_t state, const uint8_t* data, size_t length);

Tables BuildTables() {
  Tables tables{};
  for (uint32_t byte = 0; byte < 256; byte++) {
    uint32_t crc = byte;
    for (int bit = 0; bit < 8; bit++) crc = (crc & 1U) != 0 ? (crc >> 1) ^ kPolynomial : crc >> 1;
    tables.slice[0][byte] = crc;
  }
  for (int slice = 1; slice < 8; slice++) {
    for (uint32_t byte = 0; byte < 256; byte++) {
      const uint32_t previous = tables.slice[slice - 1][byte];
      tables.slice[slice][byte] = (previous >> 8) ^ tables.slice[0][previous & 0xFF];
    }
  }
  // The zeros operator is linear: its column j is the raw state reached from state 1 << j over kLaneBytes zeros.
  uint32_t shift_operator[32];
  static const uint8_t zeros[kLaneBytes] = {};
  for (int row = 0; row < 32; row++) shift_operator[row] = UpdateSlices(tables.slice, 1U << row, zeros, kLaneBytes);
  for (uint32_t byte = 0; byte < 256; byte++) {
    for (int k = 0; k < 4; k++) tables.shift[k][byte] = MatrixTimes(shift_operator, byte << (8 * k));
  }
  return tables;
}

const Tables& GetTables() {
  static const Tables tables = BuildTables();
  return tables;
}

uint32_t ShiftLane(const Tables& tables, uint32_t crc) {
  return tables.shift[0][crc & 0xFF] ^ tables.shift[1][(crc >> 8) & 0xFF] ^ tables.shift[2][(crc >> 16) & 0xFF] ^
         tables.shift[3][crc >> 24];
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t UpdateHardware(uint32_t state, const uint8_t* data, size_t length) {
  const Tables& tables = GetTables();
  uint64_t crc0 = state;
  while (length > 0 && (reinterpret_cast<uintptr_t>(data) & 7U) != 0) {
    crc0 = _mm_crc32_u8(static_cast<uint32_t>(crc0), *data++);
    length--;
  }
  while (length >= 3 * kLaneBytes) {
    uint64_t crc1 = 0;
    uint64_t crc2 = 0;
    const uint8_t* end = data + kLaneBytes;
    do {
      uint64_t word0, word1, word2;
      std::memcpy(&word0, data, 8);
      std::memcpy(&word1, data + kLaneBytes, 8);
      std::memcpy(&word2, data + 2 * kLaneBytes, 8);
      crc0 = _mm_crc32_u64(crc0, word0);
      crc1 = _mm_crc32_u64(crc1, word1);
      crc2 = _mm_crc32_u64(crc2, word2);
      data += 8;
    } while (data < end);
    // Linearity: crc(A‖B) = shift(crc(A), |B|) xor crc_raw(B) with B's lane started from 0.
    crc0 = ShiftLane(tables, static_cast<uint32_t>(crc0)) ^ crc1;
    crc0 = ShiftLane(tables, static_cast<uint32_t>(crc0)) ^ crc2;
    data += 2 * kLaneBytes;
    length -= 3 * kLaneBytes;
  }
  while (length >= 8) {
    uint64_t word;
    std::memcpy(&word, data, 8);
    crc0 = _mm_crc32_u64(crc0, word);
    data += 8;
    length -= 8;
  }
  while (length > 0) {
    crc0 = _mm_crc32_u8(static_cast<uint32_t>(crc0), *data++);
    length--;
  }
  return static_cast<uint32_t>(crc0);
}

bool DetectHardware() { return __builtin_cpu_supports("sse4.2") != 0; }

// ---- Folding with VPCLMULQDQ ----
// A byte string is the polynomial whose first byte's lowest bit is its highest coefficient (CRC-32C is bit-reflected),
// and crc(S) with a zero start is S(x)·x^32 mod P. A 16-byte block A followed by d - 16 bytes can be replaced by the
// 16-byte F ≡ A·x^(8d) (mod P) xored onto the block d bytes later: F = A_hi·(x^(8d+64) mod P) + A_lo·(x^(8d) mod P),
// where A_hi is A's first 8 bytes. A register holds a polynomial reflected (bit j is coefficient x^(127-j)), and a
// carry-less product of two reflected 64-bit values comes out multiplied by x, so the constants are x^(8d+63) and
// x^(8d-1) mod P, reflected into 64 bits.
constexpr uint64_t kPolynomialNormal = 0x11EDC6F41ULL;  // P with its x^32 term, highest coefficient first

constexpr uint32_t XPowModP(uint64_t exponent) {
  uint64_t remainder = 1;
  for (uint64_t i = 0; i < exponent; i++) {
    remainder <<= 1;
    if ((remainder & (uint64_t{1} << 32)) != 0) remainder ^= kPolynomialNormal;
  }
  return static_cast<uint32_t>(remainder);
}

// A polynomial of degree < 32 as the 64-bit reflected operand of a carry-less multiply (bit j is x^(63-j)).
constexpr uint64_t Reflect64(uint32_t polynomial) {
  uint64_t out = 0;
  for (int i = 0; i < 32; i++) {
    if ((polynomial & (1U << i)) != 0) out |= uint64_t{1} << (63 - i);
  }
  return out;
}

struct FoldConstants {
  uint64_t first;   // multiplies the block's first 8 bytes (its low quadword)
  uint64_t second;  // multiplies its last 8 bytes
};

constexpr FoldConstants FoldBy(uint64_t distance_bytes) {
  return {Reflect64(XPowModP(8 * distance_bytes + 63)), Reflect64(XPowModP(8 * distance_bytes - 1))};
}

// Bytes folded per step: four 64-byte accumulators.
constexpr size_t kFoldStepBytes = 256;
// How far ahead of the loads the loop asks for cache lines: lets DRAM keep up with the multiplies (measured best of
// 512, 2048 and 4096). A prefetch never faults, so reaching past the end of the range or mapping is harmless.
constexpr size_t kFoldPrefetchBytes = 2048;
constexpr FoldConstants kFold256 = FoldBy(256);
constexpr FoldConstants kFold64 = FoldBy(64);
constexpr FoldConstants kFold48 = FoldBy(48);
constexpr FoldConstants kFold32 = FoldBy(32);
constexpr FoldConstants kFold16 = FoldBy(16);

// GCC 12's AVX-512 headers read a deliberately undefined vector (_mm512_undefined_epi32) in broadcast and extract,
// which -Wmaybe-uninitialized reports at every use; the lanes it stands for are all overwritten.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define WALCAST_FOLD_TARGET __attribute__((target("avx512f,avx512vl,vpclmulqdq,pclmul,sse4.2")))

WALCAST_FOLD_TARGET inline __m512i Fold512(__m512i accumulator, __m512i constants, __m512i next) {
  // 0x96: three-way xor.
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(accumulator, constants, 0x00),
                                   _mm512_clmulepi64_epi128(accumulator, constants, 0x11), next, 0x96);
}

WALCAST_FOLD_TARGET inline __m128i Fold128(__m128i accumulator, FoldConstants constants, __m128i next) {
  const __m128i k = _mm_set_epi64x(static_cast<long long>(constants.second), static_cast<long long>(constants.first));
  return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(accumulator, k, 0x00), _mm_clmulepi64_si128(accumulator, k, 0x11)), next);
}

WALCAST_FOLD_TARGET __m512i Broadcast(FoldConstants constants) {
  return _mm512_broadcast_i32x4(_mm_set_epi64x(static_cast<long long>(constants.second), static_cast<long long>(constants.first)));
}

// Needs length >= kFoldStepBytes. The state goes into the first four bytes (crc32q(s, w) = crc32q(0, w xor s)).
WALCAST_FOLD_TARGET uint32_t UpdateFold(uint32_t state, const uint8_t* data, size_t length) {
  assert(length >= kFoldStepBytes);
  __m512i a0 = _mm512_xor_si512(_mm512_loadu_si512(data), _mm512_zextsi128_si512(_mm_cvtsi32_si128(static_cast<int>(state))));
  __m512i a1 = _mm512_loadu_si512(data + 64);
  __m512i a2 = _mm512_loadu_si512(data + 128);
  __m512i a3 = _mm512_loadu_si512(data + 192);
  data += kFoldStepBytes;
  length -= kFoldStepBytes;
  const __m512i step = Broadcast(kFold256);
  while (length >= kFoldStepBytes) {
    for (size_t line = 0; line < kFoldStepBytes; line += 64) _mm_prefetch(reinterpret_cast<const char*>(data + kFoldPrefetchBytes + line), _MM_HINT_T0);
    a0 = Fold512(a0, step, _mm512_loadu_si512(data));
    a1 = Fold512(a1, step, _mm512_loadu_si512(data + 64));
    a2 = Fold512(a2, step, _mm512_loadu_si512(data + 128));
    a3 = Fold512(a3, step, _mm512_loadu_si512(data + 192));
    data += kFoldStepBytes;
    length -= kFoldStepBytes;
  }
  // Four accumulators into one, then its four 16-byte lanes into one.
  const __m512i by64 = Broadcast(kFold64);
  a1 = Fold512(a0, by64, a1);
  a2 = Fold512(a1, by64, a2);
  a3 = Fold512(a2, by64, a3);
  __m128i x = _mm512_extracti32x4_epi32(a3, 3);
  x = Fold128(_mm512_extracti32x4_epi32(a3, 0), kFold48, x);
  x = Fold128(_mm512_extracti32x4_epi32(a3, 1), kFold32, x);
  x = Fold128(_mm512_extracti32x4_epi32(a3, 2), kFold16, x);
  while (length >= 16) {
    x = Fold128(x, kFold16, _mm_loadu_si128(reinterpret_cast<const __m128i*>(data)));
    data += 16;
    length -= 16;
  }
  uint64_t crc = _mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(x)));
  crc = _mm_crc32_u64(crc, static_cast<uint64_t>(_mm_extract_epi64(x, 1)));
  while (length >= 8) {
    uint64_t word;
    std::memcpy(&word, data, 8);
    crc = _mm_crc32_u64(crc, word);
    data += 8;
    length -= 8;
  }
  while (length > 0) {
    crc = _mm_crc32_u8(static_cast<uint32_t>(crc), *data++);
    length--;
  }
  return static_cast<uint32_t>(crc);
}

#pragma GCC diagnostic pop

bool DetectFold() {
  return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("avx512vl") != 0 &&
         __builtin_cpu_supports("vpclmulqdq") != 0 && __builtin_cpu_supports("pclmul") != 0 && DetectHardware();
}
#else
uint32_t UpdateHardware(uint32_t state, const uint8_t* data, size_t length) {
  return Crc32cUpdateSoftware(state, data, length);
}
bool DetectHardware() { return false; }
constexpr size_t kFoldStepBytes = 256;
uint32_t UpdateFold(uint32_t state, const uint8_t* data, size_t length) { return UpdateHardware(state, data, length); }
bool DetectFold() { return false; }
#endif

const bool kHardware = DetectHardware();
const bool kFold = DetectFold();

// ---- Reading mapped pages without dying of SIGBUS ----
// A mapped page past the end of a file that shrank after it was mapped raises SIGBUS when touched. Storage never
// shrinks a published segment, but damage is exactly what this code exists to survive, so the checksum loop runs
// under a guard: a SIGBUS inside it jumps back and becomes ENXIO; any other SIGBUS goes to the previous handler.
thread_local sigjmp_buf* tls_guard = nullptr;
struct sigaction previous_bus_action;

void OnBus(int signal_number, siginfo_t* info, void* context) {
  sigjmp_buf* guard = tls_guard;
  if (guard != nullptr) siglongjmp(*guard, 1);
  // Not ours: restore whatever was installed before and let it (or the default action) handle the fault.
  sigaction(SIGBUS, &previous_bus_action, nullptr);
  if ((previous_bus_action.sa_flags & SA_SIGINFO) != 0 && previous_bus_action.sa_sigaction != nullptr) {
    previous_bus_action.sa_sigaction(signal_number, info, context);
  }
}

void InstallBusHandlerOnce() {
  static const bool installed = [] {
    struct sigaction action {};
    action.sa_sigaction = OnBus;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    return sigaction(SIGBUS, &action, &previous_bus_action) == 0;
  }();
  (void)installed;
}

// CRCs of each page of [base, base + bytes) into out; false when a page faulted (the file shrank under us).
bool ChecksumMappedPages(const uint8_t* base, size_t bytes, size_t page_bytes, uint32_t* out) {
  sigjmp_buf guard;
  if (sigsetjmp(guard, 1) != 0) {
    tls_guard = nullptr;
    return false;
  }
  tls_guard = &guard;
  for (size_t done = 0, page = 0; done < bytes; done += page_bytes, page++) {
    const size_t length = bytes - done < page_bytes ? bytes - done : page_bytes;
    out[page] = ~Crc32cUpdate(0xFFFFFFFFU, base + done, length);
  }
  tls_guard = nullptr;
  return true;
}

bool ReadInteger(const Napi::CallbackInfo& info, size_t index, const char* name, int64_t minimum, int64_t maximum,
                 int64_t* target) {
  if (!info[index].IsNumber()) {
    Napi::TypeError::New(info.Env(), std::string(name) + " must be a number").ThrowAsJavaScriptException();
    return false;
  }
  const double value = info[index].As<Napi::Number>().DoubleValue();
  if (!(value >= static_cast<double>(minimum) && value <= static_cast<double>(maximum)) ||
      value != static_cast<double>(static_cast<int64_t>(value))) {
    Napi::RangeError::New(info.Env(), std::string(name) + " is out of range").ThrowAsJavaScriptException();
    return false;
  }
  *target = static_cast<int64_t>(value);
  return true;
}

// Shared argument checks of crc32cUpdate / crc32cUpdateSoftware: (state, buffer, start, end).
bool ReadUpdateArguments(const Napi::CallbackInfo& info, uint32_t* state, const uint8_t** data, size_t* length) {
  if (info.Length() < 4 || !info[1].IsTypedArray()) {
    Napi::TypeError::New(info.Env(), "expected (state, bytes: Uint8Array, start, end)").ThrowAsJavaScriptException();
    return false;
  }
  Napi::TypedArray array = info[1].As<Napi::TypedArray>();
  if (array.TypedArrayType() != napi_uint8_array) {
    Napi::TypeError::New(info.Env(), "bytes must be a Uint8Array").ThrowAsJavaScriptException();
    return false;
  }
  const int64_t array_bytes = static_cast<int64_t>(array.ByteLength());
  int64_t raw_state = 0, start = 0, end = 0;
  if (!ReadInteger(info, 0, "state", 0, 0xFFFFFFFFLL, &raw_state) || !ReadInteger(info, 2, "start", 0, array_bytes, &start) ||
      !ReadInteger(info, 3, "end", start, array_bytes, &end)) {
    return false;
  }
  const uint8_t* base = static_cast<const uint8_t*>(array.ArrayBuffer().Data()) + array.ByteOffset();
  *state = static_cast<uint32_t>(raw_state);
  *data = base + start;
  *length = static_cast<size_t>(end - start);
  return true;
}

// crc32cUpdate(state, bytes, start, end) -> state: COMP_CRC32C over bytes[start, end).
Napi::Value UpdateJs(const Napi::CallbackInfo& info) {
  uint32_t state = 0;
  const uint8_t* data = nullptr;
  size_t length = 0;
  if (!ReadUpdateArguments(info, &state, &data, &length)) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), Crc32cUpdate(state, data, length));
}

// crc32cUpdateLanes: the three-lane crc32q path even where folding is available, so tests cover both.
Napi::Value UpdateLanesJs(const Napi::CallbackInfo& info) {
  uint32_t state = 0;
  const uint8_t* data = nullptr;
  size_t length = 0;
  if (!ReadUpdateArguments(info, &state, &data, &length)) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), kHardware ? UpdateHardware(state, data, length) : Crc32cUpdateSoftware(state, data, length));
}

Napi::Value UpdateSoftwareJs(const Napi::CallbackInfo& info) {
  uint32_t state = 0;
  const uint8_t* data = nullptr;
  size_t length = 0;
  if (!ReadUpdateArguments(info, &state, &data, &length)) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), Crc32cUpdateSoftware(state, data, length));
}

// The (fd, offset, byteCount, pageBytes, out) arguments of crc32cFilePages and crc32cFilePagesAsync, out's type
// already checked by the caller: false with the JS exception pending.
bool ReadFilePagesArguments(const Napi::CallbackInfo& info, int64_t* fd, int64_t* offset, int64_t* byte_count,
                            int64_t* page_bytes) {
  if (!ReadInteger(info, 0, "fd", 0, kFdMax, fd) || !ReadInteger(info, 1, "offset", 0, kSafeIntegerMax, offset) ||
      !ReadInteger(info, 2, "byteCount", 1, kFileRangeBytesMax, byte_count) ||
      !ReadInteger(info, 3, "pageBytes", 1, kPageBytesMax, page_bytes)) {
    return false;
  }
  if (info[4].As<Napi::Uint32Array>().ElementLength() < static_cast<size_t>((*byte_count + *page_bytes - 1) / *page_bytes)) {
    Napi::RangeError::New(info.Env(), "out is too short for the pages of the range").ThrowAsJavaScriptException();
    return false;
  }
  return true;
}

// crc32cFilePages(fd, offset, byteCount, pageBytes, out: Uint32Array): out[i] = CRC-32C of the i-th page-sized
// piece of the file range (the last may be shorter). Throws the native error (ENXIO past the end of the file).
Napi::Value FilePagesJs(const Napi::CallbackInfo& info) {
  if (info.Length() < 5 || !info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    Napi::TypeError::New(info.Env(), "expected (fd, offset, byteCount, pageBytes, out: Uint32Array)").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  int64_t fd = 0, offset = 0, byte_count = 0, page_bytes = 0;
  if (!ReadFilePagesArguments(info, &fd, &offset, &byte_count, &page_bytes)) return info.Env().Undefined();
  Napi::Uint32Array out = info[4].As<Napi::Uint32Array>();
  Failure failure;
  std::shared_ptr<FileMap> map = ThreadFileMaps().Get(static_cast<int>(fd), static_cast<uint64_t>(offset + byte_count), &failure);
  if (!map) {
    ThrowNativeError(info.Env(), failure);
    return info.Env().Undefined();
  }
  assert(map->length >= static_cast<size_t>(offset + byte_count));
  InstallBusHandlerOnce();
  if (!ChecksumMappedPages(map->base + offset, static_cast<size_t>(byte_count), static_cast<size_t>(page_bytes), out.Data())) {
    ThrowNativeError(info.Env(), {ENXIO, "crc32c (file shrank)"});
  }
  return info.Env().Undefined();
}

// The window the pool checksum maps around its range: x86-64's and arm64's (4 KiB pages) PMD size, the largest folio
// a fault maps in one entry. On other page sizes it is only a slightly larger mapping.
constexpr uint64_t kHugeWindowBytes = 2 * 1024 * 1024;

// crc32cFilePagesAsync(fd, offset, byteCount, pageBytes, out: Uint32Array, done(error | null)): crc32cFilePages on
// a libuv pool thread. The sender's prefetcher verifies each window piece with it once the piece is in page cache
// (replication/send-wal.ts Prefetcher), so the checksum and the page faults of reading the mapping happen beside the
// event loop instead of on it: in a cold catch-up they were the event-loop thread's largest cost (~40% of its
// samples, docs/benchmarks.md "Profiling cold catch-up"). The descriptor is duplicated before the call returns
// (storage may close and reuse the caller's number meanwhile) and the range is mapped for the call only, so pool
// threads keep no mapping, and no deleted segment's blocks, alive afterwards.
//
// The mapping covers the range's whole 2 MiB-aligned windows of the file (kHugeWindowBytes), not just its pages:
// the kernel places a file mapping of 2 MiB or more at a 2 MiB-aligned address (thp_get_unmapped_area), and the
// readahead of a cold sequential read leaves much of the file in 2 MiB folios, which a fault then maps with one
// page-middle-directory entry instead of 512 page-table entries and their reverse-map updates (about half of a
// cold 64 MiB file on the 6.18 / ext4 test machine). Mapping only the range (1 MiB pieces at 4 KiB alignment) makes
// every page a PTE. The pages are mapped by the checksum's own faults (fault-around maps 16 cached pages per fault),
// not populated: MAP_POPULATE and MADV_POPULATE_READ go through get_user_pages, page by page, and mark every page
// accessed, which (after sendfile's mark) moves the pages of a one-time catch-up to the active LRU list. The window
// is MADV_SEQUENTIAL so that the unmap does not mark them accessed either (zap_pte_range skips the mark for it).
// Measured in a cold catch-up: the mapping's samples (faults or populate, munmap, mmap) -17% against
// MADV_POPULATE_READ, -30% in munmap (docs/benchmarks.md, "Where a cold catch-up's CPU goes").

class FilePagesWorker : public Napi::AsyncWorker {
 public:
  FilePagesWorker(Napi::Function done, int fd, uint64_t offset, size_t bytes, size_t page_bytes, Napi::Uint32Array out)
      : Napi::AsyncWorker(done, "walcast.crc32cFilePages"),
        fd_(fd),
        offset_(offset),
        bytes_(bytes),
        page_bytes_(page_bytes),
        out_(out.Data()),
        out_ref_(Napi::Persistent(out)) {}
  ~FilePagesWorker() override {
    if (fd_ >= 0) close(fd_);
  }

  void Execute() override {
    struct stat info;
    if (fstat(fd_, &info) != 0) {
      failure_ = {errno, "fstat"};
      return;
    }
    if (!S_ISREG(info.st_mode) || static_cast<uint64_t>(info.st_size) < offset_ + bytes_) {
      failure_ = {ENXIO, "mmap"};
      return;
    }
    // Past the end of the file the window maps nothing that is touched (the range ends inside the file, checked
    // above); a mapping may extend past the end of its file.
    const uint64_t first = offset_ / kHugeWindowBytes * kHugeWindowBytes;
    const uint64_t last = (offset_ + bytes_ + kHugeWindowBytes - 1) / kHugeWindowBytes * kHugeWindowBytes;
    const size_t span = static_cast<size_t>(last - first);
    void* base = mmap(nullptr, span, PROT_READ, MAP_SHARED, fd_, static_cast<off_t>(first));
    if (base == MAP_FAILED) {
      failure_ = {errno, "mmap"};
      return;
    }
    // Advisory: a kernel that refuses it only marks the pages accessed at unmap.
    (void)madvise(base, span, MADV_SEQUENTIAL);
    const uint8_t* range = static_cast<const uint8_t*>(base) + (offset_ - first);
    InstallBusHandlerOnce();
    if (!ChecksumMappedPages(range, bytes_, page_bytes_, out_)) {
      failure_ = {ENXIO, "crc32c (file shrank)"};
    }
    munmap(base, span);
  }

  void OnOK() override {
    Napi::Env env = Env();
    Callback().Call({failure_.errnum != 0 ? MakeNativeError(env, failure_) : env.Null()});
  }

 private:
  int fd_;
  const uint64_t offset_;
  const size_t bytes_;
  const size_t page_bytes_;
  uint32_t* const out_;
  // Keeps `out` (and so out_) alive until the callback ran.
  Napi::Reference<Napi::Uint32Array> out_ref_;
  Failure failure_;
};

Napi::Value FilePagesAsyncJs(const Napi::CallbackInfo& info) {
  if (info.Length() < 6 || !info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array ||
      !info[5].IsFunction()) {
    Napi::TypeError::New(info.Env(), "expected (fd, offset, byteCount, pageBytes, out: Uint32Array, done: Function)").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  int64_t fd = 0, offset = 0, byte_count = 0, page_bytes = 0;
  if (!ReadFilePagesArguments(info, &fd, &offset, &byte_count, &page_bytes)) return info.Env().Undefined();
  Napi::Uint32Array out = info[4].As<Napi::Uint32Array>();
  const int own = fcntl(static_cast<int>(fd), F_DUPFD_CLOEXEC, 0);
  if (own < 0) {
    ThrowNativeError(info.Env(), {errno, "dup"});
    return info.Env().Undefined();
  }
  auto* worker = new FilePagesWorker(info[5].As<Napi::Function>(), own, static_cast<uint64_t>(offset), static_cast<size_t>(byte_count),
                                     static_cast<size_t>(page_bytes), out);
  worker->Queue();
  return info.Env().Undefined();
}

}  // namespace

uint32_t Crc32cUpdateSoftware(uint32_t state, const uint8_t* data, size_t length) {
  return UpdateSlices(GetTables().slice, state, data, length);
}

namespace {
// Slice-by-8: eight table lookups fold eight input bytes (the same scheme as src/storage/crc32c.ts).
uint32_t UpdateSlices(const uint32_t (*slice)[256], uint32_t state, const uint8_t* data, size_t length) {
  uint32_t crc = state;
  while (length >= 8) {
    uint32_t low, high;
    std::memcpy(&low, data, 4);
    std::memcpy(&high, data + 4, 4);
    low ^= crc;
    crc = slice[7][low & 0xFF] ^ slice[6][(low >> 8) & 0xFF] ^ slice[5][(low >> 16) & 0xFF] ^ slice[4][low >> 24] ^
          slice[3][high & 0xFF] ^ slice[2][(high >> 8) & 0xFF] ^ slice[1][(high >> 16) & 0xFF] ^ slice[0][high >> 24];
    data += 8;
    length -= 8;
  }
  while (length > 0) {
    crc = (crc >> 8) ^ slice[0][(crc ^ *data++) & 0xFF];
    length--;
  }
  return crc;
}
}  // namespace

uint32_t Crc32cUpdate(uint32_t state, const uint8_t* data, size_t length) {
  if (kFold && length >= kFoldStepBytes) return UpdateFold(state, data, length);
  return kHardware ? UpdateHardware(state, data, length) : Crc32cUpdateSoftware(state, data, length);
}

bool Crc32cHardware() { return kHardware; }

void RegisterCrc32c(Napi::Env env, Napi::Object exports) {
  exports.Set("crc32cUpdate", Napi::Function::New(env, UpdateJs, "crc32cUpdate"));
  exports.Set("crc32cUpdateSoftware", Napi::Function::New(env, UpdateSoftwareJs, "crc32cUpdateSoftware"));
  exports.Set("crc32cFilePages", Napi::Function::New(env, FilePagesJs, "crc32cFilePages"));
  exports.Set("crc32cFilePagesAsync", Napi::Function::New(env, FilePagesAsyncJs, "crc32cFilePagesAsync"));
  exports.Set("crc32cUpdateLanes", Napi::Function::New(env, UpdateLanesJs, "crc32cUpdateLanes"));
  exports.Set("crc32cHardware", Napi::Boolean::New(env, kHardware));
  exports.Set("crc32cFold", Napi::Boolean::New(env, kFold));
  exports.Set("crc32cFileRangeBytesMax", Napi::Number::New(env, static_cast<double>(kFileRangeBytesMax)));
}

}  // namespace walcast
