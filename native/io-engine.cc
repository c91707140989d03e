// Owns the I/O engine (see io-engine.h): fd ownership, send queues, the epoll/io_uring turn and prefetch reads.
#include "io-engine.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "invariant.h"

namespace walcast {

namespace {
// Engine::SetReadaheadSinkForTest: taken by the next engine that starts its readahead threads.
int readahead_sink_for_test = -1;
}  // namespace

namespace {

// epoll data of the io_uring eventfd; stream ids start at 1.
constexpr uint64_t kRingEventTag = 0;
// io_uring user_data: (id << kOpBits) | operation.
constexpr unsigned kOpBits = 2;
constexpr uint64_t kOpSend = 1;
constexpr uint64_t kOpRead = 2;
constexpr uint64_t kOpCancel = 3;
constexpr uint64_t kOpMask = (1u << kOpBits) - 1;

// Stops a libuv handle the engine owns, detaches it from the engine and frees it once libuv has closed it.
template <typename Handle>
void StopAndCloseHandle(Handle*& handle, int (*stop)(Handle*)) {
  if (handle == nullptr) return;
  handle->data = nullptr;
  stop(handle);
  uv_close(reinterpret_cast<uv_handle_t*>(handle), [](uv_handle_t* closed) { delete reinterpret_cast<Handle*>(closed); });
  handle = nullptr;
}

uint64_t Tag(uint64_t id, uint64_t op) { return (id << kOpBits) | op; }

bool WouldBlock(int errnum) { return errnum == EAGAIN || errnum == EWOULDBLOCK; }

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    reset();
    fd_ = other.release();
  }
  return *this;
}

void UniqueFd::reset() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

void SendUnit::Advance(size_t bytes) {
  const size_t head_part = std::min(bytes, head_bytes - head_sent);
  head_sent += head_part;
  payload_sent += bytes - head_part;
  WALCAST_ASSERT(payload_sent <= payload_bytes);
}

Engine::Engine(Strategy strategy, EventSink sink)
    : strategy_(strategy), sink_(std::move(sink)), page_bytes_(static_cast<uint64_t>(sysconf(_SC_PAGESIZE))) {}

std::unique_ptr<Engine> Engine::Create(Strategy strategy, uv_loop_t* loop, EventSink sink, Failure* failure) {
  std::unique_ptr<Engine> engine(new Engine(strategy, std::move(sink)));
  if (!engine->Start(loop, failure)) return nullptr;
  return engine;
}

bool Engine::Start(uv_loop_t* loop, Failure* failure) {
  epoll_fd_ = UniqueFd(epoll_create1(EPOLL_CLOEXEC));
  if (epoll_fd_.get() < 0) {
    *failure = {errno, "epoll_create1"};
    return false;
  }
  // The ring is optional for sendfile/writev (prefetch then falls back to fadvise), required for uring.
  Failure ring_failure;
  if (!StartRing(&ring_failure) && strategy_ == Strategy::kUring) {
    *failure = ring_failure;
    return false;
  }
  scratch_.reset(new uint8_t[kPrefetchBytesMax]);
  poll_ = new uv_poll_t();
  int status = uv_poll_init(loop, poll_, epoll_fd_.get());
  if (status != 0) {
    delete poll_;
    poll_ = nullptr;
    *failure = {-status, "uv_poll_init"};
    return false;
  }
  idle_ = new uv_idle_t();
  prepare_ = new uv_prepare_t();
  check_ = new uv_check_t();
  uv_idle_init(loop, idle_);
  uv_prepare_init(loop, prepare_);
  uv_check_init(loop, check_);
  poll_->data = this;
  idle_->data = this;
  prepare_->data = this;
  check_->data = this;
  // Unreferenced: live sockets keep the loop alive; the engine alone must not keep a process from exiting.
  uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  uv_unref(reinterpret_cast<uv_handle_t*>(idle_));
  uv_unref(reinterpret_cast<uv_handle_t*>(prepare_));
  uv_unref(reinterpret_cast<uv_handle_t*>(check_));
  uv_poll_start(poll_, UV_READABLE, OnPoll);
  uv_prepare_start(prepare_, OnPrepare);
  uv_check_start(check_, OnCheck);
  if (readahead_ != nullptr) {
    starve_timer_ = new uv_timer_t();
    uv_timer_init(loop, starve_timer_);
    starve_timer_->data = this;
    uv_unref(reinterpret_cast<uv_handle_t*>(starve_timer_));
    uv_timer_start(starve_timer_, OnStarveTimer, kIdleReadWaitMaxMs / 2, kIdleReadWaitMaxMs / 2);
  }
  return true;
}

void Engine::SetReadaheadSinkForTest(int fd) { readahead_sink_for_test = fd; }

void Engine::OnStarveTimer(uv_timer_t* handle) {
  Engine* engine = static_cast<Engine*>(handle->data);
  if (engine == nullptr) return;
  engine->TakeBackStarvedReadaheads();
  engine->SubmitRing();
  engine->DeliverEvents();
}

void Engine::TakeBackStarvedReadaheads() {
  if (closed_ || readaheads_in_flight_.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  std::vector<uint64_t> starved;
  for (const auto& entry : readaheads_in_flight_) {
    if (now - entry.second.readahead_at >= std::chrono::milliseconds(kIdleReadWaitMaxMs)) starved.push_back(entry.first);
  }
  for (const uint64_t slot : starved) {
    // The thread keeps its own dup and finishes (or stays starved) on its own; TakeReadaheads skips its slot.
    auto found = readaheads_in_flight_.find(slot);
    PrefetchRead read = std::move(found->second);
    readaheads_in_flight_.erase(found);
    idle_read_fallbacks_++;
    // Starved again right after a back-off (the first idle read tried since): the disk stays busy, back off longer.
    if (idle_starved_until_.time_since_epoch().count() != 0 && read.readahead_at >= idle_starved_until_) {
      idle_starved_backoff_ms_ = std::min(idle_starved_backoff_ms_ * 2, kIdleStarvedBackoffMaxMs);
    }
    idle_starved_until_ = now + std::chrono::milliseconds(idle_starved_backoff_ms_);
    const uint64_t missing = FirstNotUpToDate(read.fd.get(), read.offset, read.bytes);
    if (missing >= read.offset + read.bytes) {
      PrefetchDone(read);
      continue;
    }
    read.wait_offset = missing;
    StartRead(std::move(read));
  }
}

bool Engine::StartRing(Failure* failure) {
  int status = io_uring_queue_init(kRingEntries, &ring_, 0);
  if (status < 0) {
    *failure = {-status, "io_uring_queue_init"};
    return false;
  }
  event_fd_ = UniqueFd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (event_fd_.get() < 0) {
    *failure = {errno, "eventfd"};
    io_uring_queue_exit(&ring_);
    return false;
  }
  status = io_uring_register_eventfd(&ring_, event_fd_.get());
  struct epoll_event interest {};
  interest.events = EPOLLIN;
  interest.data.u64 = kRingEventTag;
  if (status < 0 || epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, event_fd_.get(), &interest) != 0) {
    *failure = {status < 0 ? -status : errno, status < 0 ? "io_uring_register_eventfd" : "epoll_ctl"};
    io_uring_queue_exit(&ring_);
    event_fd_.reset();
    return false;
  }
  ring_ready_ = true;
  // Prefetch reads at idle I/O priority (readahead-thread.h). For A/B measurements in one build:
  // WALCAST_PREFETCH_IOPRIO=default keeps them on the io-wq READs at the event loop's priority, =best-effort starts
  // them on the readahead thread at the best-effort class (the thread without the priority).
  const char* ioprio = getenv("WALCAST_PREFETCH_IOPRIO");
  if (ioprio != nullptr && strcmp(ioprio, "default") == 0) {
    readahead_failure_ = {0, "switched off (WALCAST_PREFETCH_IOPRIO=default)"};
  } else {
    const bool idle = ioprio == nullptr || strcmp(ioprio, "best-effort") != 0;
    const int sink = readahead_sink_for_test;
    readahead_sink_for_test = -1;
    readahead_ = sink >= 0 ? ReadaheadThread::StartWithSinkForTest(event_fd_.get(), sink, &readahead_failure_)
                           : ReadaheadThread::Start(event_fd_.get(), idle, &readahead_failure_);
  }
  return true;
}

Engine::~Engine() { Close(); }

// Nothing the kernel may still read or write is freed before its completion is reaped: every send and read in
// flight is cancelled and waited for (bounded), then streams, reads and buffers go, and only then the ring.
void Engine::Close() {
  if (closed_) return;
  closed_ = true;
  // First, and without waiting for a read in hand (it may be starved for seconds behind best-effort I/O): the threads
  // read their own dups, and after this they write to no eventfd and take no slot (readahead-thread.h).
  readahead_.reset();
  StopAndCloseHandle(starve_timer_, uv_timer_stop);
  readaheads_in_flight_.clear();
  readaheads_done_.clear();
  reads_waiting_.clear();
  file_prefetches_.clear();
  if (ring_ready_) {
    CancelAndWaitForRing();
    if (RequestsInFlight() > 0) AbandonInFlight();
  }
  for (auto& entry : streams_) {
    if (entry.second && entry.second->in_epoll) epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, entry.second->fd.get(), nullptr);
  }
  streams_.clear();
  reads_in_flight_.clear();
  cancels_waiting_.clear();
  loans_.ExpectNone("when the engine closed");
  // The kernel holds no more of our memory (or the rest was leaked above): the ring can go.
  if (ring_ready_) io_uring_queue_exit(&ring_);
  ring_ready_ = false;
  // Nothing of the batch ring is in flight between calls (each send is reaped before SendChunkBatch returns).
  if (batch_ring_state_ == BatchRing::kReady || batch_ring_state_ == BatchRing::kBroken) io_uring_queue_exit(&batch_ring_);
  batch_ring_state_ = BatchRing::kUnavailable;
  ready_.clear();
  StopAndCloseHandle(poll_, uv_poll_stop);
  StopAndCloseHandle(prepare_, uv_prepare_stop);
  StopAndCloseHandle(check_, uv_check_stop);
  StopAndCloseHandle(idle_, uv_idle_stop);
  // Only after uv_poll_stop: libuv must not watch a closed (and possibly reused) descriptor.
  event_fd_.reset();
  epoll_fd_.reset();
}

// Cancels every send and read in flight and reaps completions until none is left or kCloseWaitMs passed. The
// completion handlers see closed_ and start nothing new; closing streams stay in streams_ until Close frees them.
void Engine::CancelAndWaitForRing() {
  for (auto& entry : streams_) {
    if (entry.second->uring_busy) SubmitCancel(Tag(entry.first, kOpSend));
  }
  for (auto& entry : reads_in_flight_) SubmitCancel(Tag(entry.first, kOpRead));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kCloseWaitMs);
  while (RequestsInFlight() > 0) {
    SubmitWaitingCancels();
    ring_dirty_ = true;
    SubmitRing();
    const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return;
    __kernel_timespec timeout{};
    timeout.tv_sec = left.count() / 1000000000;
    timeout.tv_nsec = left.count() % 1000000000;
    io_uring_cqe* cqe = nullptr;
    const int status = io_uring_wait_cqe_timeout(&ring_, &cqe, &timeout);
    if (status < 0 && status != -EINTR && status != -ETIME) return;
    ReapRing();
  }
}

// The bounded wait ran out: what the kernel may still use is leaked, never freed. Busy streams keep their unit,
// msghdr, iovecs and mapping; reads keep the scratch buffer (each read holds its own file reference).
void Engine::AbandonInFlight() {
  for (auto& entry : streams_) {
    if (entry.second->uring_busy) (void)entry.second.release();
  }
  if (!reads_in_flight_.empty()) (void)scratch_.release();
}

Stream* Engine::Find(uint64_t id) const {
  auto found = streams_.find(id);
  return found == streams_.end() ? nullptr : found->second.get();
}

uint64_t Engine::OpenStream(int socket_fd, Failure* failure) {
  WALCAST_ASSERT(!closed_);
  // Our own descriptor for the socket: Node may close (and the kernel reuse) its number at any time, ours
  // stays valid until CloseStream, which removes it from the epoll set before closing it.
  UniqueFd fd(fcntl(socket_fd, F_DUPFD_CLOEXEC, 0));
  if (fd.get() < 0) {
    *failure = {errno, "dup"};
    return 0;
  }
  auto stream = std::make_unique<Stream>();
  stream->id = next_stream_id_++;
  if (strategy_ != Strategy::kUring) {
    // Write interest only, edge-triggered: Node keeps reading replica feedback on its own descriptor.
    struct epoll_event interest {};
    interest.events = EPOLLOUT | EPOLLET;
    interest.data.u64 = stream->id;
    if (epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd.get(), &interest) != 0) {
      *failure = {errno, "epoll_ctl"};
      return 0;
    }
    stream->in_epoll = true;
  }
  stream->fd = std::move(fd);
  const uint64_t id = stream->id;
  streams_.emplace(id, std::move(stream));
  return id;
}

int Engine::SendChunk(uint64_t id, const uint8_t* header, size_t header_bytes, int file_fd, uint64_t offset,
                      size_t payload_bytes, Failure* failure) {
  WALCAST_ASSERT(header_bytes > 0 && header_bytes <= kHeaderBytesMax);
  WALCAST_ASSERT(payload_bytes > 0 && payload_bytes <= kPayloadBytesMax);
  Stream* stream = Find(id);
  if (stream == nullptr || stream->closing) {
    *failure = {EBADF, "send"};
    return kSendFailed;
  }
  SendUnit unit;
  if (!MakeFileUnit(*stream, header, header_bytes, file_fd, offset, payload_bytes, &unit, failure)) return kSendFailed;
  return Submit(*stream, std::move(unit), failure);
}

// One addon call per run instead of one per chunk: JavaScript (the sender loop, its promise, the argument checks)
// runs once per ~512 KiB in catch-up. Each chunk keeps its own unit and its own SendChunk rules (queue bounds,
// iteration budget, byte accounting), so the bytes on the wire are those of the same chunks sent one by one.
int Engine::SendChunkRun(uint64_t id, const uint8_t* headers, size_t header_bytes, const FileRange* ranges,
                         size_t count, size_t* accepted, Failure* failure) {
  WALCAST_ASSERT(count > 0 && count <= kRunChunksMax);
  *accepted = 0;
  int status = kSendDone;
  for (size_t index = 0; index < count; index++) {
    const FileRange& range = ranges[index];
    status = SendChunk(id, headers + index * header_bytes, header_bytes, range.fd, range.offset, range.bytes, failure);
    if (status == kSendFailed) return kSendFailed;
    *accepted = index + 1;
    if (status == kSendQueueFull) break;
  }
  return status;
}

bool Engine::MakeFileUnit(Stream& stream, const uint8_t* header, size_t header_bytes, int file_fd, uint64_t offset,
                          size_t payload_bytes, SendUnit* unit, Failure* failure) {
  std::memcpy(unit->inline_head.data(), header, header_bytes);
  unit->head_bytes = header_bytes;
  unit->payload_offset = offset;
  unit->payload_bytes = payload_bytes;
  if (strategy_ == Strategy::kSendfile) {
    unit->payload_fd = file_fd;
    return true;
  }
  unit->map = maps_.Get(file_fd, offset + payload_bytes, failure);
  if (!unit->map) return false;
  stream.current_map = unit->map;
  return true;
}

void Engine::SendChunkBatch(const uint64_t* ids, size_t count, const uint8_t* header, size_t header_bytes,
                            int file_fd, uint64_t offset, size_t payload_bytes, int32_t* statuses,
                            Failure* failures) {
  WALCAST_ASSERT(header_bytes > 0 && header_bytes <= kHeaderBytesMax);
  WALCAST_ASSERT(payload_bytes > 0 && payload_bytes <= kPayloadBytesMax);
  // Per stream the rules of SendChunk (queue bounds, iteration budget, byte accounting); the batch saves the
  // crossings into the addon and the per-stream promise chains in JavaScript. The uring strategy takes the copied
  // path only through the batch ring (SendCopiedBatch); without it, its sends go per stream on its own ring.
  if (payload_bytes > kBatchCopyBytesMax || (strategy_ == Strategy::kUring && (closed_ || !StartBatchRing()))) {
    for (size_t index = 0; index < count; index++) {
      statuses[index] = SendChunk(ids[index], header, header_bytes, file_fd, offset, payload_bytes, &failures[index]);
    }
    return;
  }
  if (batch_bytes_.capacity() < kHeaderBytesMax + kBatchCopyBytesMax) batch_bytes_.reserve(kHeaderBytesMax + kBatchCopyBytesMax);
  batch_bytes_.resize(header_bytes + payload_bytes);
  std::memcpy(batch_bytes_.data(), header, header_bytes);
  size_t read_bytes = 0;
  Failure read_failure;
  while (read_bytes < payload_bytes) {
    ssize_t got = pread(file_fd, batch_bytes_.data() + header_bytes + read_bytes, payload_bytes - read_bytes,
                        static_cast<off_t>(offset + read_bytes));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      // As sendfile reports it: an error, or a file that ends before the range (ENXIO).
      read_failure = {got < 0 ? errno : ENXIO, "pread"};
      break;
    }
    read_bytes += static_cast<size_t>(got);
  }
  if (read_failure.errnum != 0) {
    for (size_t index = 0; index < count; index++) {
      Stream* stream = Find(ids[index]);
      if (stream != nullptr && !stream->closing) Fail(*stream, read_failure, false);
      failures[index] = stream != nullptr && stream->failure.errnum != 0 ? stream->failure : Failure{EBADF, "send"};
      statuses[index] = kSendFailed;
    }
    return;
  }
  if (SendCopiedBatch(ids, count, header, header_bytes, file_fd, offset, payload_bytes, statuses, failures)) return;
  for (size_t index = 0; index < count; index++) {
    statuses[index] = SendOneCopied(ids[index], header, header_bytes, file_fd, offset, payload_bytes, &failures[index]);
  }
}

int Engine::SendOneCopied(uint64_t id, const uint8_t* header, size_t header_bytes, int file_fd, uint64_t offset,
                          size_t payload_bytes, Failure* failure) {
  if (strategy_ == Strategy::kUring) return SendChunk(id, header, header_bytes, file_fd, offset, payload_bytes, failure);
  return SubmitCopied(id, batch_bytes_.data(), batch_bytes_.size(), header, header_bytes, file_fd, offset, payload_bytes,
                      failure);
}

bool Engine::StartBatchRing() {
  if (batch_ring_state_ == BatchRing::kUntried) {
    batch_ring_state_ = io_uring_queue_init(kBatchRingEntries, &batch_ring_, 0) == 0 ? BatchRing::kReady : BatchRing::kUnavailable;
    if (batch_ring_state_ == BatchRing::kReady) batch_pending_.reserve(kBatchRingEntries);
  }
  return batch_ring_state_ == BatchRing::kReady;
}

// The copied batch in rounds of at most kBatchRingEntries sends, each round one io_uring_enter. Per stream the
// same steps as SubmitCopied: the checks, a send while nothing is queued, the socket had room and the iteration
// has budget (counted as if every earlier send of the round took its bytes whole), else the whole chunk queued; a
// short send goes on with send() until the socket is full, as SubmitCopied's loop does, and the rest is queued.
bool Engine::SendCopiedBatch(const uint64_t* ids, size_t count, const uint8_t* header, size_t header_bytes,
                             int file_fd, uint64_t offset, size_t payload_bytes, int32_t* statuses, Failure* failures) {
  if (closed_ || !StartBatchRing()) return false;
  const uint8_t* bytes = batch_bytes_.data();
  const size_t byte_count = batch_bytes_.size();
  size_t next = 0;
  while (next < count) {
    batch_pending_.clear();
    uint64_t planned_bytes = 0;
    for (; next < count && batch_pending_.size() < kBatchRingEntries; next++) {
      Stream* stream = CopiedTarget(ids[next], &failures[next]);
      if (stream == nullptr) {
        statuses[next] = kSendFailed;
        continue;
      }
      if (!stream->queue.empty() || !stream->writable || stream->uring_busy ||
          iteration_bytes_ + planned_bytes >= kIterationBudgetBytes) {
        statuses[next] = FinishCopied(*stream, 0, false, byte_count, header, header_bytes, file_fd, offset, payload_bytes, &failures[next]);
        continue;
      }
      io_uring_sqe* sqe = io_uring_get_sqe(&batch_ring_);
      WALCAST_ASSERT(sqe != nullptr);  // at most kBatchRingEntries per round, each reaped before the next round
      io_uring_prep_send(sqe, stream->fd.get(), bytes, byte_count, MSG_DONTWAIT | MSG_NOSIGNAL);
      io_uring_sqe_set_data64(sqe, batch_pending_.size());
      batch_pending_.push_back(next);
      planned_bytes += byte_count;
    }
    if (batch_pending_.empty()) continue;
    // Every send is issued inline and completes in this call (MSG_DONTWAIT never arms a poll). io_uring_enter only
    // fails before it took any request, and then for want of kernel memory (EAGAIN) or a signal (EINTR): retried.
    // A ring that still fails leaves the unsubmitted sends' streams to fail with its error, the others reaped.
    const size_t submitted_count = batch_pending_.size();
    int status = 0;
    for (int attempt = 0; attempt < 3 && io_uring_sq_ready(&batch_ring_) > 0; attempt++) {
      status = io_uring_submit(&batch_ring_);
      if (status >= 0) attempt = -1;  // progress: keep going while requests are left
      else if (status != -EINTR && status != -EAGAIN && status != -EBUSY) break;
    }
    const size_t unsubmitted = io_uring_sq_ready(&batch_ring_);
    if (unsubmitted > 0) {
      // Never entered again: the requests left in the submission queue are dropped with the ring.
      batch_ring_state_ = BatchRing::kBroken;
      const Failure failure{status < 0 ? -status : EIO, "io_uring_submit"};
      for (size_t slot = submitted_count - unsubmitted; slot < submitted_count; slot++) {
        const size_t index = batch_pending_[slot];
        Stream* stream = Find(ids[index]);
        WALCAST_ASSERT(stream != nullptr);
        Fail(*stream, failure, false);
        failures[index] = failure;
        statuses[index] = kSendFailed;
      }
    }
    for (size_t reaped = 0; reaped < submitted_count - unsubmitted;) {
      io_uring_cqe* cqe = nullptr;
      int wait = io_uring_wait_cqe(&batch_ring_, &cqe);
      if (wait == -EINTR) continue;
      WALCAST_ASSERT(wait == 0 && cqe != nullptr);
      const size_t slot = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
      const int result = cqe->res;
      io_uring_cqe_seen(&batch_ring_, cqe);
      reaped++;
      WALCAST_ASSERT(slot < submitted_count);
      const size_t index = batch_pending_[slot];
      Stream* stream = Find(ids[index]);
      WALCAST_ASSERT(stream != nullptr);
      size_t sent = result > 0 ? static_cast<size_t>(result) : 0;
      Progress progress = Progress::kDone;
      if (result < 0 && !WouldBlock(-result) && result != -EINTR) {
        failures[index] = {-result, "send"};
        progress = Progress::kFailed;
      } else if (result < 0 && WouldBlock(-result)) {
        progress = Progress::kBlocked;
      } else if (sent < byte_count) {
        progress = SendCopiedFrom(*stream, bytes, byte_count, &sent, &failures[index]);
      }
      if (progress == Progress::kFailed) {
        Fail(*stream, failures[index], false);
        statuses[index] = kSendFailed;
        continue;
      }
      statuses[index] = FinishCopied(*stream, sent, progress == Progress::kBlocked, byte_count, header, header_bytes, file_fd, offset, payload_bytes, &failures[index]);
    }
    if (batch_ring_state_ != BatchRing::kReady) {
      // The rest of the batch per stream.
      for (; next < count; next++) {
        statuses[next] = SendOneCopied(ids[next], header, header_bytes, file_fd, offset, payload_bytes, &failures[next]);
      }
    }
  }
  return true;
}

Stream* Engine::CopiedTarget(uint64_t id, Failure* failure) {
  Stream* stream = Find(id);
  if (stream == nullptr || stream->closing) {
    *failure = {EBADF, "send"};
    return nullptr;
  }
  if (stream->failure.errnum != 0) {
    *failure = stream->failure;
    return nullptr;
  }
  if (stream->queue.size() >= kQueuedUnitsHardMax) {
    *failure = {ENOBUFS, "send"};
    return nullptr;
  }
  return stream;
}

Engine::Progress Engine::SendCopiedFrom(Stream& stream, const uint8_t* bytes, size_t byte_count, size_t* sent,
                                        Failure* failure) {
  while (*sent < byte_count) {
    ssize_t written = send(stream.fd.get(), bytes + *sent, byte_count - *sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (written < 0) {
      if (errno == EINTR) continue;
      if (WouldBlock(errno)) return Progress::kBlocked;
      *failure = {errno, "send"};
      return Progress::kFailed;
    }
    *sent += static_cast<size_t>(written);
  }
  return Progress::kDone;
}

int Engine::FinishCopied(Stream& stream, size_t sent, bool blocked, size_t byte_count, const uint8_t* header,
                         size_t header_bytes, int file_fd, uint64_t offset, size_t payload_bytes, Failure* failure) {
  stream.bytes_sent += sent;
  iteration_bytes_ += sent;
  if (sent == byte_count) return kSendDone;
  SendUnit unit;
  if (!MakeFileUnit(stream, header, header_bytes, file_fd, offset, payload_bytes, &unit, failure)) {
    // The socket may already have `sent` bytes of this unit: the stream cannot go on without the rest.
    Fail(stream, *failure, false);
    return kSendFailed;
  }
  unit.Advance(sent);
  if (strategy_ == Strategy::kUring) {
    // As Submit queues for uring: its ring sends the rest, waiting in the kernel for room after a full socket.
    stream.queue.push_back(std::move(unit));
    if (blocked) stream.poll_first = true;
    if (OverIterationBudget()) {
      MarkReady(stream);
    } else {
      KickUring(stream);
    }
    return QueueStatus(stream);
  }
  if (blocked) stream.writable = false;
  return QueueUnit(stream, std::move(unit), failure);
}

// SendChunk for one stream of a batch whose header + payload are in `bytes`: written with send() while the socket
// has room; whatever it does not take is queued as SendChunk queues it (inline header, file range), so the
// stream's queue never holds the copy.
int Engine::SubmitCopied(uint64_t id, const uint8_t* bytes, size_t byte_count, const uint8_t* header,
                         size_t header_bytes, int file_fd, uint64_t offset, size_t payload_bytes, Failure* failure) {
  WALCAST_ASSERT(strategy_ != Strategy::kUring);
  WALCAST_ASSERT(byte_count == header_bytes + payload_bytes);
  Stream* stream = CopiedTarget(id, failure);
  if (stream == nullptr) return kSendFailed;
  size_t sent = 0;
  bool blocked = false;
  if (stream->queue.empty() && stream->writable && !OverIterationBudget()) {
    const Progress progress = SendCopiedFrom(*stream, bytes, byte_count, &sent, failure);
    if (progress == Progress::kFailed) {
      Fail(*stream, *failure, false);
      return kSendFailed;
    }
    blocked = progress == Progress::kBlocked;
  }
  return FinishCopied(*stream, sent, blocked, byte_count, header, header_bytes, file_fd, offset, payload_bytes, failure);
}

int Engine::SendMessage(uint64_t id, const uint8_t* bytes, size_t byte_count, Failure* failure) {
  WALCAST_ASSERT(byte_count > 0 && byte_count <= kMessageBytesMax);
  Stream* stream = Find(id);
  if (stream == nullptr || stream->closing) {
    *failure = {EBADF, "send"};
    return kSendFailed;
  }
  SendUnit unit;
  if (byte_count <= kHeaderBytesMax) {
    std::memcpy(unit.inline_head.data(), bytes, byte_count);
  } else {
    unit.heap_head.assign(bytes, bytes + byte_count);
  }
  unit.head_bytes = byte_count;
  return Submit(*stream, std::move(unit), failure);
}

int Engine::Submit(Stream& stream, SendUnit&& unit, Failure* failure) {
  if (stream.failure.errnum != 0) {
    *failure = stream.failure;
    return kSendFailed;
  }
  if (stream.queue.size() >= kQueuedUnitsHardMax) {
    *failure = {ENOBUFS, "send"};
    return kSendFailed;
  }
  if (strategy_ == Strategy::kUring) {
    stream.queue.push_back(std::move(unit));
    // Not submitted here: a publish wakes every waiting stream, and each sends in the same loop iteration. One
    // io_uring_enter per stream cost 1,000 syscalls per publish at 1,000 replicas (the largest native item in the
    // profile); the check handle (after this iteration's callbacks) or the next prepare submits them all at once.
    if (OverIterationBudget()) {
      MarkReady(stream);
    } else {
      KickUring(stream);
    }
    return QueueStatus(stream);
  }
  // Nothing queued, the socket had room last time and this loop iteration has budget left: write now, on the
  // caller's stack, from the caller's fd.
  if (stream.queue.empty() && stream.writable && !OverIterationBudget()) {
    const uint64_t before = stream.bytes_sent;
    Progress progress = WriteUnit(stream, unit, failure);
    iteration_bytes_ += stream.bytes_sent - before;
    if (progress == Progress::kDone) return kSendDone;
    if (progress == Progress::kFailed) {
      Fail(stream, *failure, false);
      return kSendFailed;
    }
    stream.writable = false;
  }
  return QueueUnit(stream, std::move(unit), failure);
}

// Queues what a stream could not write now (or all of it), behind what it has queued.
int Engine::QueueUnit(Stream& stream, SendUnit&& unit, Failure* failure) {
  // Queued: the caller may close its fd once we return, so the rest is sent from our own dup.
  if (unit.payload_fd >= 0 && unit.owned_fd.get() < 0) {
    unit.owned_fd = UniqueFd(fcntl(unit.payload_fd, F_DUPFD_CLOEXEC, 0));
    if (unit.owned_fd.get() < 0) {
      *failure = {errno, "dup"};
      Fail(stream, *failure, false);
      return kSendFailed;
    }
    unit.payload_fd = unit.owned_fd.get();
  }
  stream.queue.push_back(std::move(unit));
  if (stream.writable) MarkReady(stream);
  return QueueStatus(stream);
}

int Engine::QueueStatus(Stream& stream) {
  if (stream.queue.size() < kQueuedUnitsSoftMax) return kSendQueued;
  stream.want_space = true;
  return kSendQueueFull;
}

bool Engine::Flush(uint64_t id) {
  Stream* stream = Find(id);
  if (stream == nullptr || stream->failure.errnum != 0) return true;
  if (stream->queue.empty() && !stream->uring_busy) return true;
  stream->want_drain = true;
  return false;
}

uint64_t Engine::BytesSent(uint64_t id) const {
  Stream* stream = Find(id);
  return stream == nullptr ? 0 : stream->bytes_sent;
}

void Engine::CloseStream(uint64_t id) {
  Stream* stream = Find(id);
  if (stream == nullptr || stream->closing) return;
  stream->closing = true;
  stream->want_space = false;
  stream->want_drain = false;
  DropQueued(*stream);
  if (stream->uring_busy) {
    // The kernel still reads the front unit, the msghdr and the socket: the stream stays (closing) and is freed
    // by FinishClose when the cancelled send's completion is reaped.
    SubmitCancel(Tag(id, kOpSend));
    return;
  }
  FinishClose(id);
}

void Engine::FinishClose(uint64_t id) {
  Stream* stream = Find(id);
  WALCAST_ASSERT(stream != nullptr);
  WALCAST_ASSERT(!stream->uring_busy);
  // EPOLL_CTL_DEL before close: the set must never hold a descriptor number the kernel may hand out again.
  if (stream->in_epoll) epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, stream->fd.get(), nullptr);
  streams_.erase(id);
}

Engine::Progress Engine::WriteUnit(Stream& stream, SendUnit& unit, Failure* failure) {
  if (strategy_ == Strategy::kSendfile && unit.payload_bytes > 0) return WriteSendfile(stream, unit, failure);
  return WriteVectored(stream, unit, failure);
}

Engine::Progress Engine::WriteSendfile(Stream& stream, SendUnit& unit, Failure* failure) {
  while (!unit.done()) {
    if (unit.head_sent < unit.head_bytes) {
      // MSG_MORE: the header waits for the payload, so header and payload leave in full segments.
      ssize_t sent = send(stream.fd.get(), unit.head() + unit.head_sent, unit.head_bytes - unit.head_sent,
                          MSG_DONTWAIT | MSG_NOSIGNAL | MSG_MORE);
      if (sent < 0) {
        if (errno == EINTR) continue;
        if (WouldBlock(errno)) return Progress::kBlocked;
        *failure = {errno, "send"};
        return Progress::kFailed;
      }
      unit.Advance(static_cast<size_t>(sent));
      stream.bytes_sent += static_cast<uint64_t>(sent);
      continue;
    }
    off_t offset = static_cast<off_t>(unit.payload_offset + unit.payload_sent);
    ssize_t sent = sendfile(stream.fd.get(), unit.payload_fd, &offset, unit.payload_bytes - unit.payload_sent);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (WouldBlock(errno)) return Progress::kBlocked;
      *failure = {errno, "sendfile"};
      return Progress::kFailed;
    }
    if (sent == 0) {
      // The file ends before the chunk does: storage handed out a range it does not hold.
      *failure = {ENXIO, "sendfile"};
      return Progress::kFailed;
    }
    unit.Advance(static_cast<size_t>(sent));
    stream.bytes_sent += static_cast<uint64_t>(sent);
  }
  return Progress::kDone;
}

Engine::Progress Engine::WriteVectored(Stream& stream, SendUnit& unit, Failure* failure) {
  while (!unit.done()) {
    // The header is its own iovec: the payload is never copied, least of all to an unaligned offset.
    struct iovec iov[2];
    size_t count = 0;
    if (unit.head_sent < unit.head_bytes) {
      iov[count++] = {const_cast<uint8_t*>(unit.head() + unit.head_sent), unit.head_bytes - unit.head_sent};
    }
    if (unit.payload_sent < unit.payload_bytes) {
      iov[count++] = {const_cast<uint8_t*>(unit.map->base + unit.payload_offset + unit.payload_sent),
                      unit.payload_bytes - unit.payload_sent};
    }
    struct msghdr message {};
    message.msg_iov = iov;
    message.msg_iovlen = count;
    // sendmsg is writev plus MSG_NOSIGNAL (no SIGPIPE when the replica is gone).
    ssize_t sent = sendmsg(stream.fd.get(), &message, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (WouldBlock(errno)) return Progress::kBlocked;
      *failure = {errno, "sendmsg"};
      return Progress::kFailed;
    }
    unit.Advance(static_cast<size_t>(sent));
    stream.bytes_sent += static_cast<uint64_t>(sent);
  }
  return Progress::kDone;
}

void Engine::Fail(Stream& stream, Failure failure, bool emit) {
  if (stream.failure.errnum != 0) return;
  stream.failure = failure;
  DropQueued(stream);
  stream.want_space = false;
  stream.want_drain = false;
  if (emit) events_.push_back({EventKind::kFailed, stream.id, failure});
}

// Drops the units no request points at. While a SENDMSG is in flight the front unit is the kernel's (its head bytes
// and its mapping) and stays until the completion; the stream's current mapping is only a cache for the next chunk.
void Engine::DropQueued(Stream& stream) {
  WALCAST_ASSERT(!stream.uring_busy || !stream.queue.empty());
  const size_t kept = stream.uring_busy ? 1 : 0;
  stream.queue.erase(stream.queue.begin() + static_cast<std::ptrdiff_t>(kept), stream.queue.end());
  stream.current_map.reset();
}

void Engine::AfterUnitSent(Stream& stream) {
  if (stream.want_space && stream.queue.size() < kQueuedUnitsSoftMax) {
    stream.want_space = false;
    events_.push_back({EventKind::kSpace, stream.id, {}});
  }
  if (stream.want_drain && stream.queue.empty() && !stream.uring_busy) {
    stream.want_drain = false;
    events_.push_back({EventKind::kDrained, stream.id, {}});
  }
}

void Engine::MarkReady(Stream& stream) {
  if (stream.in_ready) return;
  stream.in_ready = true;
  ready_.push_back(stream.id);
  if (!idle_active_ && idle_ != nullptr) {
    idle_active_ = true;
    uv_idle_start(idle_, OnIdle);
  }
}

void Engine::DrainStream(Stream& stream) {
  size_t written_before = static_cast<size_t>(stream.bytes_sent);
  while (!stream.queue.empty() && static_cast<size_t>(stream.bytes_sent) - written_before < kTurnBudgetBytes) {
    Failure failure;
    Progress progress = WriteUnit(stream, stream.queue.front(), &failure);
    if (progress == Progress::kBlocked) {
      stream.writable = false;
      return;
    }
    if (progress == Progress::kFailed) {
      Fail(stream, failure, true);
      return;
    }
    stream.queue.pop_front();
    AfterUnitSent(stream);
  }
}

// One round over the streams that are writable and have work; a stream that used its budget goes to the back.
// The round stops early once the loop iteration's budget (kIterationBudgetBytes) is used; the ready list keeps its order, so the next
// callback starts with the streams that did not get their go.
void Engine::RunTurn() {
  for (size_t turns = ready_.size(); turns > 0 && !ready_.empty() && !OverIterationBudget(); turns--) {
    const uint64_t id = ready_.front();
    ready_.pop_front();
    Stream* stream = Find(id);
    if (stream == nullptr) continue;
    stream->in_ready = false;
    if (stream->closing || stream->failure.errnum != 0) continue;
    if (strategy_ == Strategy::kUring) {
      // Deferred by the budget; completions keep the stream going from here.
      KickUring(*stream);
      continue;
    }
    const uint64_t before = stream->bytes_sent;
    DrainStream(*stream);
    iteration_bytes_ += stream->bytes_sent - before;
    if (stream->writable && !stream->queue.empty() && stream->failure.errnum == 0) MarkReady(*stream);
  }
  SubmitRing();
  if (ready_.empty() && idle_active_ && idle_ != nullptr) {
    idle_active_ = false;
    uv_idle_stop(idle_);
  }
}

void Engine::OnPoll(uv_poll_t* handle, int status, int) {
  Engine* engine = static_cast<Engine*>(handle->data);
  if (engine == nullptr || status < 0) return;
  struct epoll_event events[kEpollEventsPerWait];
  int count = epoll_wait(engine->epoll_fd_.get(), events, kEpollEventsPerWait, 0);
  for (int index = 0; index < count; index++) {
    const uint64_t id = events[index].data.u64;
    if (id == kRingEventTag) {
      uint64_t ignored;
      while (read(engine->event_fd_.get(), &ignored, sizeof ignored) > 0) {
      }
      engine->ReapRing();
      engine->TakeReadaheads();
      continue;
    }
    // Events fetched for a stream closed earlier in this batch find nothing and are dropped.
    Stream* stream = engine->Find(id);
    if (stream == nullptr || stream->closing) continue;
    stream->writable = true;
    if (!stream->queue.empty()) engine->MarkReady(*stream);
  }
  engine->RunTurn();
  engine->SubmitRing();
  engine->DeliverEvents();
}

// Each loop iteration starts here (just before libuv polls): a fresh byte budget, and streams left over from the
// last iteration go first, before this iteration's synchronous sends from JS (check phase) can use it up.
void Engine::OnPrepare(uv_prepare_t* handle) {
  Engine* engine = static_cast<Engine*>(handle->data);
  if (engine == nullptr) return;
  // Sends queued since the check phase (timers, setImmediate callbacks) go before the loop sleeps.
  engine->SubmitRing();
  engine->iteration_bytes_ = 0;
  if (engine->ready_.empty()) return;
  engine->RunTurn();
  engine->DeliverEvents();
}

// After the poll phase's callbacks (socket reads, ingest publishing to the senders) and the microtasks they ran:
// the sends they queued are submitted in one io_uring_enter.
void Engine::OnCheck(uv_check_t* handle) {
  Engine* engine = static_cast<Engine*>(handle->data);
  if (engine == nullptr) return;
  engine->SubmitRing();
}

// Active only while streams wait in the ready list: an active idle handle makes libuv poll without blocking, so
// the next iteration (and OnPrepare) comes at once. The work itself happens in OnPrepare.
void Engine::OnIdle(uv_idle_t*) {}

// Events go to JavaScript only after a turn, when no iteration is in progress: JS may call back in.
void Engine::DeliverEvents() {
  if (events_.empty()) return;
  std::vector<Event> batch;
  batch.swap(events_);
  sink_(batch);
}

io_uring_sqe* Engine::NextSqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (sqe != nullptr) return sqe;
  // The submission queue is full: hand it to the kernel and take a fresh entry.
  io_uring_submit(&ring_);
  return io_uring_get_sqe(&ring_);
}

void Engine::KickUring(Stream& stream) {
  if (closed_ || stream.uring_busy || stream.queue.empty() || stream.closing || stream.failure.errnum != 0) return;
  SendUnit& unit = stream.queue.front();
  io_uring_sqe* sqe = NextSqe();
  if (sqe == nullptr) {
    Fail(stream, {EBUSY, "io_uring_get_sqe"}, true);
    return;
  }
  size_t count = 0;
  if (unit.head_sent < unit.head_bytes) {
    stream.iov[count++] = {const_cast<uint8_t*>(unit.head() + unit.head_sent), unit.head_bytes - unit.head_sent};
  }
  if (unit.payload_sent < unit.payload_bytes) {
    stream.iov[count++] = {const_cast<uint8_t*>(unit.map->base + unit.payload_offset + unit.payload_sent),
                           unit.payload_bytes - unit.payload_sent};
  }
  stream.message = {};
  stream.message.msg_iov = stream.iov.data();
  stream.message.msg_iovlen = count;
  // MSG_WAITALL: the kernel retries short sends itself, so one completion usually covers the whole unit.
  io_uring_prep_sendmsg(sqe, stream.fd.get(), &stream.message, MSG_NOSIGNAL | MSG_WAITALL);
  // After -EAGAIN, wait for room inside the kernel instead of spinning on the socket.
  if (stream.poll_first) sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
  io_uring_sqe_set_data64(sqe, Tag(stream.id, kOpSend));
  // The kernel reads all of these until the completion is reaped (checked in sanitizer builds).
  const LoanKind first_kind = unit.head_sent < unit.head_bytes ? LoanKind::kHeap : LoanKind::kMapped;
  loans_.Lend(Tag(stream.id, kOpSend), {{{&stream.message, sizeof stream.message, LoanKind::kHeap},
                                         {stream.iov.data(), sizeof stream.iov, LoanKind::kHeap},
                                         {stream.iov[0].iov_base, count > 0 ? stream.iov[0].iov_len : 0, first_kind},
                                         {stream.iov[1].iov_base, count > 1 ? stream.iov[1].iov_len : 0, LoanKind::kMapped}}});
  stream.uring_busy = true;
  sends_in_flight_++;
  ring_dirty_ = true;
  // The kernel tries the send inline in io_uring_enter, on this thread: it counts against the iteration.
  iteration_bytes_ += (unit.head_bytes - unit.head_sent) + (unit.payload_bytes - unit.payload_sent);
}

// Cancels the request tagged `target`. A full submission queue is flushed and the entry taken again; if even that
// finds none (the kernel refused the flush), the cancel waits in cancels_waiting_ for the next reap, never dropped.
void Engine::SubmitCancel(uint64_t target) {
  io_uring_sqe* sqe = NextSqe();
  if (sqe == nullptr) {
    cancels_waiting_.push_back(target);
    return;
  }
  io_uring_prep_cancel64(sqe, target, 0);
  io_uring_sqe_set_data64(sqe, Tag(target >> kOpBits, kOpCancel));
  ring_dirty_ = true;
  SubmitRing();
}

void Engine::SubmitWaitingCancels() {
  for (size_t count = cancels_waiting_.size(); count > 0; count--) {
    const uint64_t target = cancels_waiting_.front();
    cancels_waiting_.pop_front();
    SubmitCancel(target);
  }
}

void Engine::SubmitRing() {
  if (!ring_ready_ || !ring_dirty_) return;
  ring_dirty_ = false;
  io_uring_submit(&ring_);
}

void Engine::ReapRing() {
  if (!ring_ready_) return;
  // Completions may queue new submissions (next unit, next read); they are submitted once, after the batch.
  for (;;) {
    io_uring_cqe* cqe = nullptr;
    if (io_uring_peek_cqe(&ring_, &cqe) != 0 || cqe == nullptr) break;
    const uint64_t data = io_uring_cqe_get_data64(cqe);
    const int result = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    loans_.Return(data);
    const uint64_t op = data & kOpMask;
    if (op == kOpSend) OnSendCompletion(data >> kOpBits, result);
    if (op == kOpRead) OnReadCompletion(data >> kOpBits, result);
  }
  // Completions freed submission entries: cancels that found none before go now.
  SubmitWaitingCancels();
  SubmitRing();
}

void Engine::OnSendCompletion(uint64_t id, int result) {
  Stream* stream = Find(id);
  WALCAST_ASSERT(stream != nullptr);  // a stream with a send in flight is only erased after this completion
  WALCAST_ASSERT(stream->uring_busy);
  stream->uring_busy = false;
  WALCAST_ASSERT(sends_in_flight_ > 0);
  sends_in_flight_--;
  // Engine closing: Close() frees every stream once nothing is in flight.
  if (closed_) return;
  if (stream->closing) {
    FinishClose(id);
    return;
  }
  if (result == -EAGAIN || result == -EINTR) {
    stream->poll_first = true;
    KickUring(*stream);
    return;
  }
  if (result < 0) {
    Fail(*stream, {-result, "io_uring_sendmsg"}, true);
    return;
  }
  // A failure recorded meanwhile: the unit this send carried is all that is left, and it is not sent on.
  if (stream->failure.errnum != 0 || stream->queue.empty()) {
    stream->queue.clear();
    return;
  }
  stream->poll_first = false;
  SendUnit& unit = stream->queue.front();
  unit.Advance(static_cast<size_t>(result));
  stream->bytes_sent += static_cast<uint64_t>(result);
  if (unit.done()) {
    stream->queue.pop_front();
    AfterUnitSent(*stream);
  }
  if (OverIterationBudget()) {
    if (!stream->queue.empty()) MarkReady(*stream);
    return;
  }
  KickUring(*stream);
}

// "In the page cache" must mean "up to date": readahead inserts pages before their read completes, and a sendfile
// that meets such a page sleeps on it (measured: 2-8 ms stalls right after cachestat(2) said "cached").
// mincore(2) on a mapping of the file reports a page only once it is up to date (mm/mincore.c mincore_page:
// folio_test_uptodate), costs a page-cache lookup per page and copies nothing. The mapping comes from the
// shared cache, so no page tables are populated for it.
bool Engine::IsUpToDate(int fd, uint64_t offset, size_t byte_count) {
  return FirstNotUpToDate(fd, offset, byte_count) >= offset + byte_count;
}

uint64_t Engine::FirstNotUpToDate(int fd, uint64_t offset, size_t byte_count) {
  WALCAST_ASSERT(byte_count > 0 && byte_count <= kPrefetchBytesMax);
  Failure ignored;
  std::shared_ptr<FileMap> map = maps_.Get(fd, offset + byte_count, &ignored);
  if (!map) return offset;
  const uint64_t page_bytes = page_bytes_;
  const uint64_t first = offset / page_bytes * page_bytes;
  const size_t span = static_cast<size_t>(offset + byte_count - first);
  std::array<unsigned char, kResidencyPagesMax> pages;
  WALCAST_ASSERT((span + page_bytes - 1) / page_bytes <= pages.size());
  if (mincore(const_cast<uint8_t*>(map->base + first), span, pages.data()) != 0) return offset;
  for (size_t index = 0; index < (span + page_bytes - 1) / page_bytes; index++) {
    if ((pages[index] & 1) == 0) return std::max(offset, first + index * page_bytes);
  }
  return offset + byte_count;
}

int Engine::Prefetch(int file_fd, uint64_t offset, size_t byte_count, size_t read_bytes, uint64_t token, Failure* failure) {
  WALCAST_ASSERT(byte_count > 0 && byte_count <= kPrefetchBytesMax);
  if (read_bytes == 0 || read_bytes > byte_count) read_bytes = byte_count;
  // A warm range (every piece of a warm catch-up) is answered from the caller's descriptor within this call: a
  // residency check reads nothing, and needs no dup, fstat and close of its own (three of the five system calls per
  // 1 MiB piece; strace in docs/benchmarks.md, "One replica"). A number that is no regular file any more (a socket
  // that reused it) has no mapping, so it reads as "not up to date" and meets the checks below. A file cold lately
  // goes to a readahead thread even when up to date (ColdLately).
  const bool cold_lately = ColdLately(file_fd);
  if (!cold_lately && FirstNotUpToDate(file_fd, offset, byte_count) >= offset + byte_count) return 1;
  // Our own dup first, and every check and read on it: the caller's number may be closed (and reused) by another
  // thread at any time, ours cannot.
  UniqueFd fd(fcntl(file_fd, F_DUPFD_CLOEXEC, 0));
  if (fd.get() < 0) {
    *failure = {errno, "dup"};
    return -1;
  }
  // A prefetch reads and throws the bytes away. On a socket or pipe that read would consume a client's bytes (seen:
  // a segment descriptor closed by storage, its number reused by accept() for a new client, whose startup packet
  // this READ then swallowed), so anything but a regular file is refused before any read.
  struct stat info;
  if (fstat(fd.get(), &info) != 0) {
    *failure = {errno, "fstat"};
    return -1;
  }
  if (!S_ISREG(info.st_mode)) {
    *failure = {ESPIPE, "prefetch (not a regular file)"};
    return -1;
  }
  const uint64_t missing = FirstNotUpToDate(fd.get(), offset, byte_count);
  if (missing >= offset + byte_count && !cold_lately) return 1;
  if (missing < offset + byte_count && readahead_ != nullptr) {
    if (cold_files_.size() >= kColdFilesMax) cold_files_.clear();
    cold_files_[file_fd] = std::chrono::steady_clock::now();
  }
  if (!ring_ready_) {
    // No ring: ask for readahead and hope; sendfile may then block on a miss (documented fallback).
    posix_fadvise(fd.get(), static_cast<off_t>(offset), static_cast<off_t>(byte_count), POSIX_FADV_WILLNEED);
    return 1;
  }
  // The kernel's own readahead reads the file; a prefetch only waits, off the event loop, until the range is up to
  // date (a READ of one page sleeps on an io-wq worker until that page is; when the page is not in page cache at
  // all, that READ starts readahead from it, as a PostgreSQL walsender's read() would). A file's requests are worked
  // on one at a time, in order, so the kernel sees one sequential reader per file and sizes its readahead up to
  // read_ahead_kb in large folios, while sendfile, passing the readahead marks, keeps the next window coming.
  // Until 2026-12-06 every piece of the sender's window was READ in full into the scratch buffer, all at once: the
  // concurrent reads of one file broke its readahead into small, serialized requests, and every byte was copied
  // once more (docs/benchmarks.md, "Profiling cold catch-up": 0.39-0.42 vs 0.34-0.36 CPU s/GB, and slower).
  // Collisions of the key only serialize two files' requests, never mix them up.
  const uint64_t file_key = static_cast<uint64_t>(info.st_ino) * 1000003u + static_cast<uint64_t>(info.st_dev);
  // A range split into reads (read_bytes): each part is a request of its own, queued in file order behind the file's
  // earlier ones, so the readahead threads see the same jobs, and the disk the same gaps between them, as if the
  // caller had asked part by part (src/io/native-backend.ts NATIVE_PREFETCH_READ_BYTES: 1 MiB reads keep a live
  // writer's fdatasync from waiting behind 4 MiB ones); the caller pays one call, one dup check and one event. Only
  // with readahead threads: the READ fallback below them assumes a part that is not up to date yet. A failed dup of
  // a part leaves the rest of the range to the last part.
  uint64_t part_offset = offset;
  const uint64_t end = offset + byte_count;
  // Queues [part_offset, part_offset + bytes) behind the file's earlier requests, or starts it when there are none;
  // a silent part sends no event (the last part carries the token).
  auto append = [&](UniqueFd&& part_fd, size_t bytes, uint64_t part_token) {
    PrefetchRead read;
    read.token = part_token;
    read.silent = part_token == 0;
    read.fd = std::move(part_fd);
    read.offset = part_offset;
    read.bytes = bytes;
    read.step = PrefetchStep::kWait;
    read.wait_offset = std::max(missing, part_offset);
    read.file_key = file_key;
    auto active = file_prefetches_.find(file_key);
    if (active != file_prefetches_.end()) {
      active->second.push_back(std::move(read));
      return;
    }
    file_prefetches_.emplace(file_key, std::deque<PrefetchRead>());
    QueueRead(std::move(read));
  };
  while (readahead_ != nullptr && end - part_offset > read_bytes) {
    UniqueFd part_fd(fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
    if (part_fd.get() < 0) break;
    append(std::move(part_fd), read_bytes, 0);
    part_offset += read_bytes;
  }
  append(std::move(fd), static_cast<size_t>(end - part_offset), token);
  SubmitRing();
  return 0;
}

// The kernel's readahead of a cold file runs ahead of the prefetch window, so most pieces of a cold catch-up are up
// to date when asked for, some with a readahead mark in them; the sender's sendfile meeting one would start the next
// window on the event loop, at its priority (measured: a third to half of a cold catch-up's disk reads, perf: all
// from filemap_readahead under sendfile). So every piece of a file that was cold lately is read by a readahead thread
// before the sender gets it, and meets the marks first (a read of pages up to date only takes page references). Warm
// files (a warm catch-up, the live tail) never were cold and keep the residency check alone. A descriptor number
// reused by another file costs one needless hop.
bool Engine::ColdLately(int file_fd) {
  if (readahead_ == nullptr) return false;
  auto found = cold_files_.find(file_fd);
  if (found == cold_files_.end()) return false;
  if (std::chrono::steady_clock::now() - found->second <= std::chrono::milliseconds(kColdFileMs)) return true;
  cold_files_.erase(found);
  return false;
}

void Engine::QueueRead(PrefetchRead&& read) {
  if (PrefetchesInFlight() < kPrefetchReadsInFlightMax) {
    StartRead(std::move(read));
  } else {
    reads_waiting_.push_back(std::move(read));
  }
}

void Engine::StartRead(PrefetchRead&& read) {
  if (read.step == PrefetchStep::kWait && read.waits == 0 && !read.readahead_submitted && readahead_ != nullptr) {
    // The whole range goes to a readahead thread first, its pages up to date too (they may hold a readahead mark the
    // sender's sendfile must not meet: ColdLately); READ waits follow only for what is still missing after
    // (TakeReadaheads). A full queue (never seen: the engine's own bound is lower) reads as before.
    read.readahead_submitted = true;
    const auto now = std::chrono::steady_clock::now();
    // Not while idle reads were starved lately (kIdleReadWaitMaxMs): then the engine reads at its own priority.
    if (now >= idle_starved_until_) {
      const uint64_t slot = next_read_slot_++;
      read.readahead_at = now;
      if (readahead_->Submit(slot, read.fd.get(), read.offset, read.bytes)) {
        readahead_jobs_++;
        readaheads_in_flight_.emplace(slot, std::move(read));
        return;
      }
    }
    // Refused or starved lately: a READ of what is missing, if anything (a range up to date came only for the thread).
    if (read.wait_offset >= read.offset + read.bytes) {
      PrefetchDone(read);
      return;
    }
  }
  io_uring_sqe* sqe = NextSqe();
  if (sqe == nullptr) {
    PrefetchDone(read);
    return;
  }
  const uint64_t slot = next_read_slot_++;
  uint64_t read_offset = read.offset;
  size_t read_bytes = read.bytes;
  if (read.step == PrefetchStep::kWait) {
    read_offset = read.wait_offset;
    // The first wait of a request reads up to kPrefetchFirstReadBytes, later ones a page (see kPrefetchFirstReadBytes).
    const uint64_t wait_end = read.waits == 0 ? read_offset + kPrefetchFirstReadBytes : (read_offset / page_bytes_ + 1) * page_bytes_;
    read_bytes = static_cast<size_t>(std::min<uint64_t>(read.offset + read.bytes, wait_end) - read_offset);
  }
  // Every read lands in the same scratch buffer: the bytes are thrown away, only the page cache matters.
  io_uring_prep_read(sqe, read.fd.get(), scratch_.get(), static_cast<unsigned>(read_bytes), read_offset);
  // IOSQE_ASYNC: straight to an io-wq worker. Tried inline, a cold buffered read starts its readahead I/O
  // inside io_uring_enter on this (the event-loop) thread. (Measured here: no clear difference within the
  // machine's noise; the flag costs one worker hop per cold read, which is cheap next to the disk.)
  io_uring_sqe_set_flags(sqe, IOSQE_ASYNC);
  io_uring_sqe_set_data64(sqe, Tag(slot, kOpRead));
  loans_.Lend(Tag(slot, kOpRead), {{{scratch_.get(), read_bytes, LoanKind::kHeap}}});
  ring_dirty_ = true;
  reads_in_flight_.emplace(slot, std::move(read));
}

void Engine::OnReadCompletion(uint64_t slot, int) {
  auto found = reads_in_flight_.find(slot);
  WALCAST_ASSERT(found != reads_in_flight_.end());
  // The scratch buffer is free of this read now; its dup closes with the entry (or goes on to the next step).
  PrefetchRead done = std::move(found->second);
  reads_in_flight_.erase(found);
  if (closed_) return;
  if (done.step == PrefetchStep::kWait) {
    const uint64_t missing = FirstNotUpToDate(done.fd.get(), done.offset, done.bytes);
    if (missing < done.offset + done.bytes) {
      // The next page not up to date yet (readahead completes a range roughly in order), or, after
      // kPrefetchWaitsMax waits, the whole range: a READ of it waits for pages in flight and reads what is missing.
      // Best effort throughout: a failed READ (its result is not looked at) is followed by the next step.
      done.waits++;
      done.step = done.waits < kPrefetchWaitsMax ? PrefetchStep::kWait : PrefetchStep::kRead;
      done.wait_offset = missing;
      StartRead(std::move(done));
      return;
    }
  }
  // Best effort: a failed read is reported as done; the send path surfaces real errors.
  PrefetchDone(done);
  while (!reads_waiting_.empty() && PrefetchesInFlight() < kPrefetchReadsInFlightMax) {
    StartRead(std::move(reads_waiting_.front()));
    reads_waiting_.pop_front();
  }
}

void Engine::TakeReadaheads() {
  if (readahead_ == nullptr) return;
  readaheads_done_.clear();
  readahead_->TakeDone(&readaheads_done_);
  for (const uint64_t slot : readaheads_done_) {
    auto found = readaheads_in_flight_.find(slot);
    // Taken back when it starved (TakeBackStarvedReadaheads): its READ waits run already.
    if (found == readaheads_in_flight_.end()) continue;
    PrefetchRead read = std::move(found->second);
    readaheads_in_flight_.erase(found);
    if (closed_) continue;
    // An idle read done in time: the disk gives the idle class its turns again.
    idle_starved_backoff_ms_ = kIdleStarvedBackoffMs;
    // Usually up to date now; else on to its READ waits (readahead_submitted is set): it moves from one in-flight set
    // to the other.
    const uint64_t missing = FirstNotUpToDate(read.fd.get(), read.offset, read.bytes);
    if (missing >= read.offset + read.bytes) {
      PrefetchDone(read);
      continue;
    }
    read.wait_offset = missing;
    StartRead(std::move(read));
  }
  readaheads_done_.clear();
  while (!closed_ && !reads_waiting_.empty() && PrefetchesInFlight() < kPrefetchReadsInFlightMax) {
    StartRead(std::move(reads_waiting_.front()));
    reads_waiting_.pop_front();
  }
}

void Engine::PrefetchDone(const PrefetchRead& read) {
  if (!read.silent) events_.push_back({EventKind::kPrefetched, read.token, {}});
  auto active = file_prefetches_.find(read.file_key);
  if (active == file_prefetches_.end()) return;
  // The file's next request, unless it is up to date by now (the readahead this one started covered it). With the
  // readahead threads it goes to one anyway: its pages may hold a readahead mark (ColdLately).
  std::deque<PrefetchRead>& queued = active->second;
  while (!queued.empty()) {
    PrefetchRead next = std::move(queued.front());
    queued.pop_front();
    const uint64_t missing = FirstNotUpToDate(next.fd.get(), next.offset, next.bytes);
    if (missing < next.offset + next.bytes || readahead_ != nullptr) {
      next.wait_offset = missing;
      QueueRead(std::move(next));
      return;
    }
    if (!next.silent) events_.push_back({EventKind::kPrefetched, next.token, {}});
  }
  file_prefetches_.erase(active);
}

}  // namespace walcast
