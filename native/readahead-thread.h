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
// piece only once its prefetch is done (send-wal.ts, Prefetcher). Nor does Engine::Close: a read starved by best-effort
// I/O may take mq-deadline's prio_aging_expire (10 s) per request (measured: pieces waiting 7-8 s next to a saturating
// writer, docs/benchmarks.md), so stopping drops the queued jobs and leaves the threads to finish the read in hand
// detached. Each job reads its own dup of the caller's descriptor (closed by the thread), and the threads share their
// state (queue, /dev/null) through a shared_ptr: nothing a detached thread touches is closed or freed under it, and
// after stopping it writes to no eventfd (the engine's may be closed and its number reused).
#ifndef WALCAST_NATIVE_READAHEAD_THREAD_H_
#define WALCAST_NATIVE_READAHEAD_THREAD_H_

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <pthread.h>
#include <utility>
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
  // Stops the threads without waiting for them: queued jobs are dropped, a read in hand finishes on its own (its
  // descriptor is the job's own dup). After this returns no thread uses `wake_fd` or a descriptor passed to Submit.
  ~ReadaheadThread();
  ReadaheadThread(const ReadaheadThread&) = delete;
  ReadaheadThread& operator=(const ReadaheadThread&) = delete;

  // Queues a read of [offset, offset + bytes) of fd (the job reads a dup of it: the caller may close fd at once).
  // False when full, stopping, or the dup fails.
  bool Submit(uint64_t slot, int fd, uint64_t offset, size_t bytes);
  // Slots whose read returned (or failed: best effort), appended to *out.
  void TakeDone(std::vector<uint64_t>* out);
  // Threads still running (stopped ones included, until their read in hand returns): for tests.
  static size_t LiveThreadsForTest();
  // For the test of a stop while a read is blocked: reads go to `sink_fd` (a pipe the test holds full) instead of
  // /dev/null; the threads close it when the last one exits.
  static std::unique_ptr<ReadaheadThread> StartWithSinkForTest(int wake_fd, int sink_fd, Failure* failure);

 private:
  struct Job {
    uint64_t slot;
    int fd;  // the job's own dup, closed by whoever drops or finishes the job
    uint64_t offset;
    size_t bytes;
  };
  // Everything a thread touches, kept alive by every thread and the owner (shared_ptr): a stopped thread may still be
  // in its read when the owner is gone.
  struct Shared {
    ~Shared();
    int wake_fd;
    // /dev/null (or a test's sink), where the reads go (Run); closed when the last user is gone.
    int null_fd;
    // The class the threads set (Start).
    bool idle = true;
    std::mutex mutex;
    std::condition_variable wake;
    std::deque<Job> jobs;
    std::vector<uint64_t> done;
    bool stopping = false;
    // Threads that set their priority (or failed to), and the first errno of ioprio_set.
    size_t started_count = 0;
    int start_errno = 0;
    std::condition_variable started;
  };
  explicit ReadaheadThread(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}
  static std::unique_ptr<ReadaheadThread> StartOn(int wake_fd, int null_fd, bool idle, Failure* failure);
  static void* ThreadMain(void* arg);
  static void Run(Shared& shared);

  std::shared_ptr<Shared> shared_;
};

}  // namespace walcast

#endif  // WALCAST_NATIVE_READAHEAD_THREAD_H_
