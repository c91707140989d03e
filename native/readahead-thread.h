// Threads that read prefetch ranges at idle I/O priority (issue 13: cold catch-up next to live replicas). The block layer takes a read's priority from the task that submits it (get_current_ioprio at
// submit_bio), and mq-deadline serves the idle class only while no best-effort request is queued or in flight. So
// a cold catch-up's reads, submitted here, give way to the live writer's writes and fdatasyncs (and to any other
// best-effort I/O) instead of queueing them behind megabytes of reads.
//
// Why threads of our own: the engine's prefetch READs run on io_uring's io-wq workers, which share their submitter's
// io_context (CLONE_IO), i.e. the event-loop thread's: lowering theirs would lower the event loop's. libuv's pool
// threads run the live writer's fdatasync. Only threads nobody else's I/O goes through can carry the idle class.
//
// Each range is read whole (Run: how), so the kernel's readahead starts from these threads, and they meet its
// readahead marks before the sender's sendfile does (which would start the next window on the event loop, at its
// priority: Engine::ColdLately). The engine works on one request per file at a time, so a file's ranges reach the
// kernel in order. The event loop and the pool never wait for an idle read: the sender sends from (and checks) a
// piece only once its prefetch is done (send-wal.ts, Prefetcher). Only Engine::Close does, joining the threads: a
// read starved by best-effort I/O may take up to mq-deadline's prio_aging_expire (10 s) there, at shutdown.
#ifndef WALCAST_NATIVE_READAHEAD_THREAD_H_
#define WALCAST_NATIVE_READAHEAD_THREAD_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <vector>

#include "native-errors.h"

namespace walcast {

// Requests waiting for a thread; Submit refuses more (the engine then reads at its own priority). Bounded by the
// engine's reads in flight anyway (kPrefetchReadsInFlightMax), this is a second, local guard.
constexpr size_t kReadaheadQueueMax = 64;
// Threads: each read sleeps until its range is up to date, so one thread would be one read at a time for every
// stream; the engine works on one request per file at a time, so requests for different files run in parallel.
constexpr size_t kReadaheadThreads = 4;

class ReadaheadThread {
 public:
  // Starts the threads, each setting its own I/O priority to the idle class (`idle` false: best-effort, lowest level,
  // for A/B measurements; mq-deadline ignores levels); nullptr with *failure set when that fails (ioprio_set refused:
  // EPERM, or EINVAL on a kernel without it). `wake_fd` (an eventfd) gets a write after each request is read.
  static std::unique_ptr<ReadaheadThread> Start(int wake_fd, bool idle, Failure* failure);
  // Stops and joins the threads: after this returns they use no descriptor they were given.
  ~ReadaheadThread();
  ReadaheadThread(const ReadaheadThread&) = delete;
  ReadaheadThread& operator=(const ReadaheadThread&) = delete;

  // Queues a read of [offset, offset + bytes) of fd; `fd` must stay open until `slot` comes back from TakeDone.
  // False when full.
  bool Submit(uint64_t slot, int fd, uint64_t offset, size_t bytes);
  // Slots whose read returned (or failed: best effort), appended to *out.
  void TakeDone(std::vector<uint64_t>* out);

 private:
  struct Job {
    uint64_t slot;
    int fd;
    uint64_t offset;
    size_t bytes;
  };
  ReadaheadThread(int wake_fd, int null_fd) : wake_fd_(wake_fd), null_fd_(null_fd) {}
  static void* ThreadMain(void* self);
  void Run();

  const int wake_fd_;
  // /dev/null, where the reads go (Run); closed by the destructor once the threads are joined.
  const int null_fd_;
  // The class the threads set (Start).
  bool idle_ = true;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Job> jobs_;
  std::vector<uint64_t> done_;
  bool stopping_ = false;
  // Threads that set their priority (or failed to), and the first errno of ioprio_set.
  size_t started_count_ = 0;
  int start_errno_ = 0;
  std::condition_variable started_;
  std::vector<pthread_t> threads_;
};

}  // namespace walcast

#endif  // WALCAST_NATIVE_READAHEAD_THREAD_H_
