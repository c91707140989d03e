// See readahead-thread.h.
#include "readahead-thread.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/sendfile.h>
#include <sys/syscall.h>
#include <unistd.h>

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

}  // namespace

std::unique_ptr<ReadaheadThread> ReadaheadThread::Start(int wake_fd, bool idle, Failure* failure) {
  const int null_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (null_fd < 0) {
    *failure = {errno, "open /dev/null"};
    return nullptr;
  }
  std::unique_ptr<ReadaheadThread> self(new ReadaheadThread(wake_fd, null_fd));
  ReadaheadThread* raw = self.get();
  for (size_t index = 0; index < kReadaheadThreads; index++) {
    raw->threads_.emplace_back([raw, idle]() {
      pthread_setname_np(pthread_self(), "walcast-ra");
      const int status = SetLowPriority(idle) == 0 ? 0 : errno;
      {
        std::lock_guard<std::mutex> lock(raw->mutex_);
        raw->started_count_++;
        if (status != 0 && raw->start_errno_ == 0) raw->start_errno_ = status;
      }
      raw->started_.notify_one();
      if (status == 0) raw->Run();
    });
  }
  int status;
  {
    std::unique_lock<std::mutex> lock(raw->mutex_);
    raw->started_.wait(lock, [raw]() { return raw->started_count_ == kReadaheadThreads; });
    status = raw->start_errno_;
  }
  if (status != 0) {
    *failure = {status, "ioprio_set"};
    return nullptr;  // the destructor stops the threads that did start
  }
  return self;
}

ReadaheadThread::~ReadaheadThread() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& thread : threads_) {
    if (thread.joinable()) thread.join();
  }
  close(null_fd_);
}

bool ReadaheadThread::Submit(uint64_t slot, int fd, uint64_t offset, size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || jobs_.size() >= kReadaheadQueueMax) return false;
    jobs_.push_back({slot, fd, offset, bytes});
  }
  wake_.notify_one();
  return true;
}

void ReadaheadThread::TakeDone(std::vector<uint64_t>* out) {
  std::lock_guard<std::mutex> lock(mutex_);
  out->insert(out->end(), done_.begin(), done_.end());
  done_.clear();
}

void ReadaheadThread::Run() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    wake_.wait(lock, [this]() { return stopping_ || !jobs_.empty(); });
    if (stopping_) return;
    const Job job = jobs_.front();
    jobs_.pop_front();
    lock.unlock();
    // The range is read as a reader would read it, but into /dev/null: sendfile to /dev/null takes page references
    // and copies nothing. The read starts the kernel's own (on-demand, large-folio) readahead from this thread and
    // sleeps until the range is up to date. readahead(2) was tried first: it reads in single pages, and the send path
    // paid per page (cold MB/s 0.65-0.9x main, docs/benchmarks.md). Best effort: a failure (the file truncated)
    // leaves the pages to the engine's READ, which reads what is missing at the event loop's priority.
    off_t position = static_cast<off_t>(job.offset);
    size_t done = 0;
    while (done < job.bytes) {
      const ssize_t count = sendfile(null_fd_, job.fd, &position, job.bytes - done);
      if (count <= 0) break;
      done += static_cast<size_t>(count);
    }
    lock.lock();
    done_.push_back(job.slot);
    const uint64_t one = 1;
    // The eventfd is the engine's ring eventfd (non-blocking): the engine drains done_ when it wakes.
    (void)!write(wake_fd_, &one, sizeof one);
  }
}

}  // namespace walcast
