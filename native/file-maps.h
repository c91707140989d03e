// Owns read-only mmaps of whole WAL segment files for the writev and uring strategies, shared by every stream
// that sends from the same file, so 100 replicas on one segment fault its page tables in once, not 100 times.
// A mapping keeps the file alive after storage closes its descriptor, so queued chunks need no dup().
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <utility>

#include "native-errors.h"

namespace walcast {

struct FileMap {
  const uint8_t* base = nullptr;
  size_t length = 0;
  FileMap(const uint8_t* mapped_base, size_t mapped_length) : base(mapped_base), length(mapped_length) {}
  ~FileMap();
  FileMap(const FileMap&) = delete;
  FileMap& operator=(const FileMap&) = delete;
};

class FileMapCache {
 public:
  // A mapping of the file behind fd that covers [0, end_offset); nullptr with *failure set otherwise.
  std::shared_ptr<FileMap> Get(int fd, uint64_t end_offset, Failure* failure);
  size_t size() const { return maps_.size(); }

 private:
  void PruneExpired();
  void KeepRecent(const std::shared_ptr<FileMap>& map);
  // The last few files stay mapped even with no stream on them, so prefetch checks (mincore) on the sendfile
  // strategy do not mmap and munmap a segment for every call.
  std::deque<std::shared_ptr<FileMap>> recent_;
  // Keyed by (st_dev, st_ino), never by fd: storage closes and reuses descriptor numbers.
  std::map<std::pair<dev_t, ino_t>, std::weak_ptr<FileMap>> maps_;
};

}  // namespace walcast
