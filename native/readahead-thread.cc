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
  raw->idle_ = idle;
  // pthread_create, not std::thread: the addon builds without exceptions, and a thread that cannot be created (EAGAIN
  // at a thread limit) must leave the engine on its old path, not abort the process.
  for (size_t index = 0; index < kReadaheadThreads; index++) {
    pthread_t thread;
    const int created = pthread_create(&thread, nullptr, &ReadaheadThread::ThreadMain, raw);
    if (created != 0) {
      *failure = {created, "pthread_create"};
      return nullptr;  // the destructor stops and joins the threads that did start
    }
    raw->threads_.push_back(thread);
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

void* ReadaheadThread::ThreadMain(void* arg) {
  ReadaheadThread* self = static_cast<ReadaheadThread*>(arg);
  pthread_setname_np(pthread_self(), "walcast-ra");
  const int status = SetLowPriority(self->idle_) == 0 ? 0 : errno;
  {
    std::lock_guard<std::mutex> lock(self->mutex_);
    self->started_count_++;
    if (status != 0 && self->start_errno_ == 0) self->start_errno_ = status;
  }
  self->started_.notify_one();
  if (status == 0) self->Run();
  return nullptr;
}

ReadaheadThread::~ReadaheadThread() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (const pthread_t thread : threads_) pthread_join(thread, nullptr);
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
