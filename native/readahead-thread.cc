// See readahead-thread.h.
#include "readahead-thread.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

namespace walcast {

namespace {

// linux/ioprio.h, spelled out: glibc has no wrapper and older headers lack the file.
constexpr int kIoprioClassShift = 13;
constexpr int kIoprioClassBestEffort = 2;
constexpr int kIoprioClassIdle = 3;
constexpr int kIoprioBestEffortLowest = 7;
constexpr int kIoprioWhoProcess = 1;

// The idle class for the calling thread only (who 0 = the caller; each thread has its own io_context, and this one
// was created by pthread_create, not with CLONE_IO).
int SetLowPriority(bool idle) {
  const int value = idle ? kIoprioClassIdle << kIoprioClassShift : (kIoprioClassBestEffort << kIoprioClassShift) | kIoprioBestEffortLowest;
  return static_cast<int>(syscall(SYS_ioprio_set, kIoprioWhoProcess, 0, value));
}

// Threads running, stopped ones in their last read included (LiveThreadsForTest).
std::atomic<size_t> live_threads{0};

}  // namespace

std::unique_ptr<ReadaheadThread> ReadaheadThread::Start(int wake_fd, bool idle, Failure* failure) {
  const int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (null_fd < 0) {
    *failure = {errno, "open /dev/null"};
    return nullptr;
  }
  return StartOn(wake_fd, null_fd, idle, failure);
}

std::unique_ptr<ReadaheadThread> ReadaheadThread::StartWithSinkForTest(int wake_fd, int sink_fd, Failure* failure) {
  return StartOn(wake_fd, sink_fd, true, failure);
}

size_t ReadaheadThread::LiveThreadsForTest() { return live_threads.load(); }

std::unique_ptr<ReadaheadThread> ReadaheadThread::StartOn(int wake_fd, int null_fd, bool idle, Failure* failure) {
  auto shared = std::make_shared<Shared>();
  shared->wake_fd = wake_fd;
  shared->null_fd = null_fd;
  shared->idle = idle;
  std::unique_ptr<ReadaheadThread> self(new ReadaheadThread(shared));
  // pthread_create, not std::thread: the addon builds without exceptions, and a thread that cannot be created (EAGAIN
  // at a thread limit) must leave the engine on its old path, not abort the process. Detached: nobody joins them
  // (the destructor stops them without waiting, readahead-thread.h); each holds the shared state.
  size_t created_count = 0;
  int created = 0;
  for (; created_count < kReadaheadThreads; created_count++) {
    pthread_t thread;
    auto* arg = new std::shared_ptr<Shared>(shared);
    live_threads++;
    created = pthread_create(&thread, nullptr, &ReadaheadThread::ThreadMain, arg);
    if (created != 0) {
      live_threads--;
      delete arg;
      break;
    }
    pthread_detach(thread);
  }
  int status;
  {
    std::unique_lock<std::mutex> lock(shared->mutex);
    shared->started.wait(lock, [&]() { return shared->started_count == created_count; });
    status = shared->start_errno;
  }
  if (created != 0) {
    *failure = {created, "pthread_create"};
    return nullptr;  // the destructor stops the threads that did start
  }
  if (status != 0) {
    *failure = {status, "ioprio_set"};
    return nullptr;  // the destructor stops the threads that did start
  }
  return self;
}

void* ReadaheadThread::ThreadMain(void* arg) {
  std::shared_ptr<Shared> shared = std::move(*static_cast<std::shared_ptr<Shared>*>(arg));
  delete static_cast<std::shared_ptr<Shared>*>(arg);
  pthread_setname_np(pthread_self(), "walcast-ra");
  const int status = SetLowPriority(shared->idle) == 0 ? 0 : errno;
  {
    std::lock_guard<std::mutex> lock(shared->mutex);
    shared->started_count++;
    if (status != 0 && shared->start_errno == 0) shared->start_errno = status;
  }
  shared->started.notify_one();
  if (status == 0) Run(*shared);
  shared.reset();
  live_threads--;
  return nullptr;
}

ReadaheadThread::Shared::~Shared() {
  for (const Job& job : jobs) close(job.fd);
  close(null_fd);
}

ReadaheadThread::~ReadaheadThread() {
  std::deque<Job> dropped;
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    shared_->stopping = true;
    dropped.swap(shared_->jobs);
  }
  shared_->wake.notify_all();
  for (const Job& job : dropped) close(job.fd);
}

bool ReadaheadThread::Submit(uint64_t slot, int fd, uint64_t offset, size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    if (shared_->stopping || shared_->jobs.size() >= kReadaheadQueueMax) return false;
    // The job's own descriptor: a stopped engine closes its own at once while a thread may still read this one.
    const int own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (own < 0) return false;
    shared_->jobs.push_back({slot, own, offset, bytes});
  }
  shared_->wake.notify_one();
  return true;
}

void ReadaheadThread::TakeDone(std::vector<uint64_t>* out) {
  std::lock_guard<std::mutex> lock(shared_->mutex);
  out->insert(out->end(), shared_->done.begin(), shared_->done.end());
  shared_->done.clear();
}

void ReadaheadThread::Run(Shared& shared) {
  std::unique_lock<std::mutex> lock(shared.mutex);
  for (;;) {
    shared.wake.wait(lock, [&shared]() { return shared.stopping || !shared.jobs.empty(); });
    if (shared.stopping) return;
    const Job job = shared.jobs.front();
    shared.jobs.pop_front();
    lock.unlock();
    // The range is read as a reader would read it, but into /dev/null: sendfile to /dev/null takes page references
    // and copies nothing. The read starts the kernel's own (on-demand, large-folio) readahead from this thread and
    // sleeps until the range is up to date. readahead(2) was tried first: it reads in single pages, and the send path
    // paid per page (cold MB/s 0.65-0.9x main, docs/benchmarks.md). Best effort: a failure (the file truncated)
    // leaves the pages to the engine's READ, which reads what is missing at the event loop's priority.
    off_t position = static_cast<off_t>(job.offset);
    size_t done = 0;
    while (done < job.bytes) {
      const ssize_t count = sendfile(shared.null_fd, job.fd, &position, job.bytes - done);
      if (count <= 0) break;
      done += static_cast<size_t>(count);
    }
    close(job.fd);
    lock.lock();
    // Stopped meanwhile: the engine's eventfd may be closed (and its number reused); nobody takes the slot.
    if (shared.stopping) return;
    shared.done.push_back(job.slot);
    const uint64_t one = 1;
    // The eventfd is the engine's ring eventfd (non-blocking): the engine drains done when it wakes.
    (void)!write(shared.wake_fd, &one, sizeof one);
  }
}

}  // namespace walcast
