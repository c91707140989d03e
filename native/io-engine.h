// Owns the addon's I/O engine: one epoll set (and, when available, one io_uring whose completions signal an
// eventfd in that set) watched by a single uv_poll handle on the JS thread. Each replica stream has a dup of its
// socket fd, a bounded queue of send units (header bytes + a file range, or a whole small message), and is
// drained round-robin with a per-turn byte budget. Prefetch reads go through io_uring so a cold segment never
// blocks the event loop. The engine knows nothing about PostgreSQL: headers arrive as finished bytes.
#pragma once

#include <liburing.h>
#include <sys/uio.h>
#include <uv.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "file-maps.h"
#include "kernel-loans.h"
#include "native-errors.h"
#include "readahead-thread.h"

namespace walcast {

enum class Strategy : int { kSendfile = 0, kWritev = 1, kUring = 2 };

// Largest header sendChunk takes (the XLogData CopyData header is 30 bytes).
constexpr size_t kHeaderBytesMax = 64;
// Largest sendMessage (keepalives, ErrorResponse, CopyDone are far smaller).
constexpr size_t kMessageBytesMax = 1024 * 1024;
// Largest payload of one unit: MAX_SEND_BYTES of the sender loop.
constexpr size_t kPayloadBytesMax = 128 * 1024;
// Units queued per stream before sendChunk makes its caller wait (2-4 chunks in flight per replica).
constexpr size_t kQueuedUnitsSoftMax = 4;
// Hard cap per stream: messages are accepted past the soft bound, but never without limit.
constexpr size_t kQueuedUnitsHardMax = 64;
// Bytes one stream may write per turn before the next ready stream gets its go (fairness, as nginx's
// sendfile_max_chunk): 512 KiB is four chunks and matches the sender loop's per-turn budget.
constexpr size_t kTurnBudgetBytes = 512 * 1024;
// Bytes all streams together may hand to the kernel in one libuv loop iteration, synchronous sendChunk calls and
// engine turns alike; past it, sends queue and the rest of the ready list goes on in the next iteration (a
// uv_prepare handle resets the count and runs the leftover streams first). 100 replicas each sending their 512 KiB per turn from JS held the event
// loop for 50-90 ms per iteration; 4 MiB is a few milliseconds at loopback speeds.
constexpr size_t kIterationBudgetBytes = 4 * 1024 * 1024;
// sendChunkBatch payloads up to this size (one WAL page) are read once per call and sent to each stream with the
// header in one send(): a commit's few hundred bytes cost one syscall per replica instead of send(MSG_MORE) +
// sendfile. Larger payloads go per stream as SendChunk. Whatever a socket does not take is queued as SendChunk
// would queue it (inline header, file range), so the copy never outlives the call.
constexpr size_t kBatchCopyBytesMax = 8 * 1024;
// sendChunkBatch's copied sends go to the kernel through a ring of their own, kBatchRingEntries per io_uring_enter,
// instead of one send() each: on this kernel (PREEMPT_NONE) every syscall's return to user space is where a
// replica process the send just woke takes the CPU, and with a same-host consumer on 2 vCPUs 100 send() calls saw
// up to 100 involuntary context switches in one batch (the publish -> socket p99 at 100 replicas, issue 13).
// One io_uring_enter issues every send inline (MSG_DONTWAIT: a full socket completes at once with what it took or
// -EAGAIN, never waits) and returns once: the woken readers get the CPU after the whole batch. The uring strategy
// uses it too (before, its batch only queued, and the sends went out after the loop iteration's callbacks, their
// written reports one iteration later).
constexpr unsigned kBatchRingEntries = 256;
// Chunks one SendChunkRun call takes: a catch-up run is at most the sender's per-turn budget (512 KiB, four chunks of
// kPayloadBytesMax) and never more than the prefetch piece it comes from; 16 leaves room for short chunks.
constexpr size_t kRunChunksMax = 16;
// Events taken from the epoll set per uv_poll callback; more stay ready for the next loop iteration.
constexpr int kEpollEventsPerWait = 256;
// io_uring submission queue entries (completion queue is twice that; the kernel never drops overflow).
constexpr unsigned kRingEntries = 256;
// Prefetch reads in flight at once (one per file being prefetched, see Engine::Prefetch); further requests wait in
// a FIFO.
constexpr size_t kPrefetchReadsInFlightMax = 32;
// Largest prefetch request, and the size of the scratch buffer all prefetch reads land in (and are discarded). The
// sender asks for 4 MiB pieces (native-backend.ts NATIVE_PREFETCH_PIECE_BYTES), one request each: every request is a
// readahead thread's read, an event, a check ahead on the pool and their promises, and with 1 MiB requests those
// per-piece costs were a quarter of a cold catch-up's CPU (docs/benchmarks.md, "Cold catch-up next to a busy CPU").
constexpr size_t kPrefetchBytesMax = 4 * 1024 * 1024;
// A file stays "cold lately" (Engine::ColdLately) this long after a prefetch of it found pages missing: a cold
// catch-up meets one at least every few pieces, far more often than this.
constexpr int kColdFileMs = 1000;
// Files remembered as cold lately; a bound, reached only with that many cold catch-ups at once.
constexpr size_t kColdFilesMax = 256;
// A prefetch at a readahead thread (idle I/O priority) not done after this long is starved: mq-deadline serves the
// idle class only while no best-effort request is queued, and a saturating writer holds it back up to
// prio_aging_expire (10 s) per request (measured: a cold catch-up at 0.6 MiB/s against 100 MiB/s at the event
// loop's priority, docs/benchmarks.md). The engine then reads the rest itself, at its own priority (io-wq READs), and
// sends every prefetch that way for a back-off: a catch-up slows down next to a busy disk, never stalls. The back-off
// starts at kIdleStarvedBackoffMs and doubles, up to kIdleStarvedBackoffMaxMs, each time the first idle read tried
// after it starves again (a disk that stays saturated: every retry of the idle class costs a starved piece, and the
// pages its readahead put in flight stay at the idle class until prio_aging_expire); an idle read done in time
// resets it.
constexpr int kIdleReadWaitMaxMs = 1000;
constexpr int kIdleStarvedBackoffMs = 10000;
constexpr int kIdleStarvedBackoffMaxMs = 160000;
// How long Close() waits for the io_uring requests it cancelled before it frees what they use. Cancelled socket
// sends complete at once; a prefetch read already running on an io-wq worker cannot be cancelled and finishes
// with the disk (milliseconds). Past the bound the engine leaks those buffers rather than free them under the
// kernel: 5 s of a blocked event loop at shutdown is the worst case, a corrupted heap is not an option.
constexpr int kCloseWaitMs = 5000;

static_assert(kTurnBudgetBytes <= kIterationBudgetBytes, "one stream's turn fits in one loop iteration");
static_assert(kPayloadBytesMax <= kTurnBudgetBytes, "a stream's turn holds at least one full chunk");
static_assert(kPayloadBytesMax <= kPrefetchBytesMax, "one chunk fits one prefetch read");
static_assert(kQueuedUnitsSoftMax < kQueuedUnitsHardMax, "messages can pass the soft bound");
static_assert(kHeaderBytesMax >= 30, "the XLogData CopyData header fits inline");

// kWait steps per prefetch request before the whole range is read (kRead): with the kernel's readahead running
// (read_ahead_kb of 128 KiB and up) a 1 MiB piece is up to date within a few; a range the kernel will not read ahead
// (readahead off for the file, pages dropped again under memory pressure) is read in full soon.
constexpr int kPrefetchWaitsMax = 16;

// Bytes the first kWait step of a request reads (the later ones read a page). Where that step finds the range's pages
// not in page cache at all, the READ starts the kernel's readahead, sized from it: a one-page READ at the start of
// a segment began a ramp of synchronous windows of 16, 36, 108, 324 KiB..., each read, waited for and followed by
// the next (traced with the readahead: tracepoints, docs/benchmarks.md "Profiling cold catch-up"), where a 128 KiB
// read, like a PostgreSQL walsender's, starts at 512 KiB with an asynchronous part, and later waits meet its mark.
// The copy it costs into the scratch buffer is an eighth of a cold piece.
constexpr size_t kPrefetchFirstReadBytes = 128 * 1024;
static_assert(kPrefetchFirstReadBytes <= kPrefetchBytesMax, "the first read fits the scratch buffer");

// mincore() result bytes for one prefetch request: its pages at 4 KiB, plus one when it is not page-aligned.
constexpr size_t kResidencyPagesMax = kPrefetchBytesMax / 4096 + 1;

enum class EventKind : int { kSpace = 1, kDrained = 2, kFailed = 3, kPrefetched = 4 };

struct Event {
  EventKind kind;
  uint64_t id;  // stream id, or prefetch token
  Failure failure;
};

// SendChunk / SendMessage results (negative: failure, see the Failure out-parameter).
enum SendStatus : int { kSendFailed = -1, kSendDone = 0, kSendQueued = 1, kSendQueueFull = 2 };

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset();

 private:
  int fd_ = -1;
};

// One thing to send: head bytes (a header, or a whole message) and optionally a file range after it.
struct SendUnit {
  std::array<uint8_t, kHeaderBytesMax> inline_head{};
  std::vector<uint8_t> heap_head;  // messages larger than inline_head
  size_t head_bytes = 0;
  size_t head_sent = 0;
  int payload_fd = -1;  // sendfile: the caller's fd while sending synchronously, then owned_fd
  UniqueFd owned_fd;
  uint64_t payload_offset = 0;
  std::shared_ptr<FileMap> map;  // writev / uring: the payload lives in this mapping
  size_t payload_bytes = 0;
  size_t payload_sent = 0;

  const uint8_t* head() const { return heap_head.empty() ? inline_head.data() : heap_head.data(); }
  bool done() const { return head_sent == head_bytes && payload_sent == payload_bytes; }
  // Moves the cursor over `bytes` just sent: header first, then payload.
  void Advance(size_t bytes);
};

struct Stream {
  uint64_t id = 0;
  UniqueFd fd;  // dup of Node's socket fd: ours alone, so Node closing its fd cannot alias it
  bool in_epoll = false;
  bool writable = true;
  bool in_ready = false;
  bool want_space = false;
  bool want_drain = false;
  // Closed by JS: no new units; freed by FinishClose once no io_uring send of it is in flight.
  bool closing = false;
  // A SENDMSG is in flight: the kernel reads msghdr, iov and the front unit (its head bytes and its mapping)
  // until the completion is reaped, so none of them may be freed or changed before then.
  bool uring_busy = false;
  bool poll_first = false;
  Failure failure;
  uint64_t bytes_sent = 0;
  std::deque<SendUnit> queue;
  std::shared_ptr<FileMap> current_map;  // keeps the segment mapped between chunks
  // The in-flight io_uring SENDMSG points here; the stream (and so these) outlives the send's completion.
  struct msghdr message {};
  std::array<struct iovec, 2> iov{};
};

// How a prefetch request brings its range in (io-engine.cc, Engine::Prefetch): kWait steps READ one page, the first
// one of the range not up to date, which sleeps until it is (or, when the page is not in page cache at all, starts
// the kernel's readahead from it); after kPrefetchWaitsMax of them, one kRead step READs the whole range.
enum class PrefetchStep : int { kWait = 0, kRead = 1 };

struct PrefetchRead {
  uint64_t token = 0;
  UniqueFd fd;
  // The range to bring into page cache.
  uint64_t offset = 0;
  size_t bytes = 0;
  PrefetchStep step = PrefetchStep::kWait;
  // kWait: the page to read, and how many kWait steps ran.
  uint64_t wait_offset = 0;
  int waits = 0;
  // The file (inode and device): its requests are worked on one at a time, in order (Engine::Prefetch).
  uint64_t file_key = 0;
  // The readahead thread started this range's reads (at idle I/O priority) before its first READ, and when.
  bool readahead_submitted = false;
  std::chrono::steady_clock::time_point readahead_at{};
  // One of the leading parts of a request split into reads (Engine::Prefetch's read_bytes): done without an event; the
  // request's last part carries the token, and the file's parts run in order, so its event means the whole range.
  bool silent = false;
};

class Engine {
 public:
  using EventSink = std::function<void(std::vector<Event>&)>;

  // nullptr with *failure set when the event source (or, for kUring, the ring) cannot be set up.
  static std::unique_ptr<Engine> Create(Strategy strategy, uv_loop_t* loop, EventSink sink, Failure* failure);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  uint64_t OpenStream(int socket_fd, Failure* failure);
  int SendChunk(uint64_t id, const uint8_t* header, size_t header_bytes, int file_fd, uint64_t offset,
                size_t payload_bytes, Failure* failure);
  int SendMessage(uint64_t id, const uint8_t* bytes, size_t byte_count, Failure* failure);
  // One commit's chunk to many streams: the same header and file range, submitted to each stream in `ids` order as
  // SendChunk would (written now while the socket has room, else the rest queued from a dup). statuses[i] and
  // failures[i] are SendChunk's result for ids[i]; a failure is recorded on that stream only. Payloads up to
  // kBatchCopyBytesMax are written within the call through the batch ring (every strategy, uring included: a stream
  // with nothing queued or in flight), so kSendDone means in the kernel for them too.
  void SendChunkBatch(const uint64_t* ids, size_t count, const uint8_t* header, size_t header_bytes, int file_fd,
                      uint64_t offset, size_t payload_bytes, int32_t* statuses, Failure* failures);
  // One stream's catch-up run: chunk i is header i (headers + i * header_bytes) followed by ranges[i]. Chunks are
  // taken in order exactly as that many SendChunk calls would take them, stopping after the first that fails or
  // leaves the stream at its in-flight bound (kSendQueueFull). *accepted: chunks taken (the failed one is not).
  // Returns the last taken chunk's status, or kSendFailed with *failure set.
  struct FileRange {
    int fd;
    uint64_t offset;
    size_t bytes;
  };
  int SendChunkRun(uint64_t id, const uint8_t* headers, size_t header_bytes, const FileRange* ranges, size_t count,
                   size_t* accepted, Failure* failure);
  // True when everything accepted reached the kernel (or the stream failed); else a kDrained event follows.
  bool Flush(uint64_t id);
  void CloseStream(uint64_t id);
  uint64_t BytesSent(uint64_t id) const;
  // 1: the range is in page cache now; 0: a kPrefetched event with `token` follows; -1 (with *failure): file_fd
  // is not an open regular file (ESPIPE for a socket or pipe: a prefetch never reads one, see io-engine.cc).
  // `read_bytes` (0: byte_count) splits the range into reads of at most that many bytes, each its own readahead-thread
  // job, one after another; the caller still gets one answer and one event for the range.
  int Prefetch(int file_fd, uint64_t offset, size_t byte_count, size_t read_bytes, uint64_t token, Failure* failure);
  void Close();

  Strategy strategy() const { return strategy_; }
  bool closed() const { return closed_; }
  bool ring_ready() const { return ring_ready_; }
  size_t stream_count() const { return streams_.size(); }
  size_t mapped_file_count() const { return maps_.size(); }
  // io_uring requests whose completion is not reaped yet, and prefetch requests at the readahead thread (tests check
  // that a close happens with some in flight).
  size_t sends_in_flight() const { return sends_in_flight_; }
  size_t reads_in_flight() const { return PrefetchesInFlight(); }
  // Prefetch reads are started at idle I/O priority (readahead-thread.h); when not, why (ioprio_set refused, no
  // ring, or WALCAST_PREFETCH_IOPRIO=default).
  bool low_priority_reads() const { return readahead_ != nullptr; }
  const Failure& low_priority_failure() const { return readahead_failure_; }
  // Prefetches taken back from a starved readahead thread and read at the engine's priority (kIdleReadWaitMaxMs).
  uint64_t idle_read_fallbacks() const { return idle_read_fallbacks_; }
  // Ranges handed to the readahead threads (a request split into reads counts each read): for tests and measurements.
  uint64_t readahead_jobs() const { return readahead_jobs_; }
  // Tests: the next engine's readahead threads read into this descriptor (a pipe held full: a read that never ends)
  // instead of /dev/null; -1: /dev/null. The engine's threads own it from then on.
  static void SetReadaheadSinkForTest(int fd);

 private:
  enum class Progress { kDone, kBlocked, kFailed };

  Engine(Strategy strategy, EventSink sink);
  bool Start(uv_loop_t* loop, Failure* failure);
  bool StartRing(Failure* failure);
  Stream* Find(uint64_t id) const;
  // A send unit for header + file range, as every send path queues it: the file's fd for sendfile, a mapping of it for
  // writev and uring (which becomes the stream's current map). False, with `failure` set, when the file cannot be mapped.
  bool MakeFileUnit(Stream& stream, const uint8_t* header, size_t header_bytes, int file_fd, uint64_t offset,
                    size_t payload_bytes, SendUnit* unit, Failure* failure);
  int Submit(Stream& stream, SendUnit&& unit, Failure* failure);
  int SubmitCopied(uint64_t id, const uint8_t* bytes, size_t byte_count, const uint8_t* header, size_t header_bytes,
                   int file_fd, uint64_t offset, size_t payload_bytes, Failure* failure);
  // SubmitCopied's checks: the stream a copied send may go to, or nullptr with *failure and kSendFailed to report.
  Stream* CopiedTarget(uint64_t id, Failure* failure);
  // A copied send's end, `sent` bytes of it written (`blocked`: the socket filled): done, or the rest queued as
  // SendChunk queues it.
  int FinishCopied(Stream& stream, size_t sent, bool blocked, size_t byte_count, const uint8_t* header, size_t header_bytes,
                   int file_fd, uint64_t offset, size_t payload_bytes, Failure* failure);
  // send() from bytes[*sent] on until all is written or the socket is full (kBlocked); kFailed with *failure set.
  Progress SendCopiedFrom(Stream& stream, const uint8_t* bytes, size_t byte_count, size_t* sent, Failure* failure);
  // SendChunkBatch's copied sends through batch_ring_ (see kBatchRingEntries); false when that ring cannot be made
  // (then nothing was sent and the caller sends per stream).
  bool SendCopiedBatch(const uint64_t* ids, size_t count, const uint8_t* header, size_t header_bytes, int file_fd,
                       uint64_t offset, size_t payload_bytes, int32_t* statuses, Failure* failures);
  bool StartBatchRing();
  // One stream's copied send without the batch ring: SubmitCopied, or for uring SendChunk (its own ring).
  int SendOneCopied(uint64_t id, const uint8_t* header, size_t header_bytes, int file_fd, uint64_t offset,
                    size_t payload_bytes, Failure* failure);
  int QueueUnit(Stream& stream, SendUnit&& unit, Failure* failure);
  int QueueStatus(Stream& stream);
  Progress WriteUnit(Stream& stream, SendUnit& unit, Failure* failure);
  Progress WriteSendfile(Stream& stream, SendUnit& unit, Failure* failure);
  Progress WriteVectored(Stream& stream, SendUnit& unit, Failure* failure);
  void DrainStream(Stream& stream);
  void AfterUnitSent(Stream& stream);
  void Fail(Stream& stream, Failure failure, bool emit);
  void DropQueued(Stream& stream);
  void MarkReady(Stream& stream);
  void RunTurn();
  void DeliverEvents();
  void FinishClose(uint64_t id);
  // io_uring side.
  io_uring_sqe* NextSqe();
  void KickUring(Stream& stream);
  void SubmitCancel(uint64_t target);
  void SubmitWaitingCancels();
  void CancelAndWaitForRing();
  void AbandonInFlight();
  size_t RequestsInFlight() const { return sends_in_flight_ + reads_in_flight_.size(); }
  void SubmitRing();
  void ReapRing();
  void OnSendCompletion(uint64_t id, int result);
  void OnReadCompletion(uint64_t slot, int result);
  // Moves the requests whose readahead the thread submitted on to their READ waits.
  void TakeReadaheads();
  // Every kIdleReadWaitMaxMs / 2: takes back readaheads starved past kIdleReadWaitMaxMs (their READ waits start now).
  static void OnStarveTimer(uv_timer_t* handle);
  void TakeBackStarvedReadaheads();
  // A prefetch of `file_fd` found pages missing within kColdFileMs: its pieces go to a readahead thread even when up
  // to date (io-engine.cc).
  bool ColdLately(int file_fd);
  size_t PrefetchesInFlight() const { return reads_in_flight_.size() + readaheads_in_flight_.size(); }
  // Starts the read, or queues it while kPrefetchReadsInFlightMax are in flight.
  void QueueRead(PrefetchRead&& read);
  void StartRead(PrefetchRead&& read);
  // Posts the request's kPrefetched event and moves its file on to the next request waiting for it.
  void PrefetchDone(const PrefetchRead& read);
  bool IsUpToDate(int fd, uint64_t offset, size_t byte_count);
  // The offset of the first page of the range not up to date in page cache (`offset` itself when that is the
  // range's first page, or when residency cannot be checked), or offset + byte_count when all are.
  uint64_t FirstNotUpToDate(int fd, uint64_t offset, size_t byte_count);

  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnIdle(uv_idle_t* handle);
  static void OnPrepare(uv_prepare_t* handle);
  static void OnCheck(uv_check_t* handle);
  bool OverIterationBudget() const { return iteration_bytes_ >= kIterationBudgetBytes; }

  Strategy strategy_;
  EventSink sink_;
  UniqueFd epoll_fd_;
  UniqueFd event_fd_;
  uv_poll_t* poll_ = nullptr;
  uv_idle_t* idle_ = nullptr;
  uv_prepare_t* prepare_ = nullptr;
  // Submits the sends JavaScript queued in this loop iteration's poll phase, once for all of them (see Submit).
  uv_check_t* check_ = nullptr;
  bool idle_active_ = false;
  // Bytes handed to the kernel (or, for uring, submitted) in the current loop iteration.
  uint64_t iteration_bytes_ = 0;
  io_uring ring_{};
  bool ring_ready_ = false;
  bool ring_dirty_ = false;
  uint64_t page_bytes_;
  bool closed_ = false;
  uint64_t next_stream_id_ = 1;
  uint64_t next_read_slot_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Stream>> streams_;
  std::deque<uint64_t> ready_;
  std::vector<Event> events_;
  // SendChunkBatch's header + payload copy (kBatchCopyBytesMax + kHeaderBytesMax at most), reused across calls.
  // Reserved whole before the first use, so its data never moves: batch_ring_'s sends point into it.
  std::vector<uint8_t> batch_bytes_;
  // SendChunkBatch's ring (kBatchRingEntries): only its copied sends, each reaped before the call returns. Made at
  // the first batch; kUntried, then kReady or kUnavailable (io_uring refused: per-stream send() as before); kBroken
  // after an io_uring_enter that kept failing (never entered again; freed at Close).
  enum class BatchRing { kUntried, kReady, kBroken, kUnavailable };
  BatchRing batch_ring_state_ = BatchRing::kUntried;
  io_uring batch_ring_{};
  // Per batch_ring_ round: the batch index of each send submitted, in submission order.
  std::vector<size_t> batch_pending_;
  // The thread's shared cache (file-maps.h): page checksums map the same files, and a send reuses their page tables.
  FileMapCache& maps_ = ThreadFileMaps();
  std::unordered_map<uint64_t, PrefetchRead> reads_in_flight_;
  std::deque<PrefetchRead> reads_waiting_;
  // Started with the ring, unless ioprio_set is refused (readahead_failure_ says why): requests at the readahead
  // thread, by slot, keeping their descriptors open until it is done with them.
  std::unique_ptr<ReadaheadThread> readahead_;
  Failure readahead_failure_;
  std::unordered_map<uint64_t, PrefetchRead> readaheads_in_flight_;
  uv_timer_t* starve_timer_ = nullptr;
  uint64_t idle_read_fallbacks_ = 0;
  uint64_t readahead_jobs_ = 0;
  // Until then prefetches skip the readahead threads (a starved one was taken back lately).
  std::chrono::steady_clock::time_point idle_starved_until_{};
  int idle_starved_backoff_ms_ = kIdleStarvedBackoffMs;
  std::vector<uint64_t> readaheads_done_;
  // Caller descriptors that had a prefetch with pages missing, and when (ColdLately); cleared when full.
  std::unordered_map<int, std::chrono::steady_clock::time_point> cold_files_;
  // Files with a prefetch request being worked on, each with the requests for it that wait their turn.
  std::unordered_map<uint64_t, std::deque<PrefetchRead>> file_prefetches_;
  // Every prefetch READ writes here until its completion is reaped; freed only after the last one (Close()).
  std::unique_ptr<uint8_t[]> scratch_;
  // SENDMSGs in flight (streams with uring_busy, closing ones included).
  size_t sends_in_flight_ = 0;
  // Cancels that found no free submission entry even after a flush: submitted after the next reap (at most one
  // per stream or read in flight, so bounded by them).
  std::deque<uint64_t> cancels_waiting_;
  // Sanitizer builds: every buffer lent to an io_uring request, checked when it comes back.
  KernelLoans loans_;
};

}  // namespace walcast
