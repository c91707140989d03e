// Owns read-only mmaps of whole WAL segment files for the writev and uring strategies and for page checksums
// (crc32c.cc), shared by every stream that sends from the same file and by the verifier, so 100 replicas on one
// segment fault its page tables in once, not 100 times, and a page checksummed before its send is not faulted in
// again by the send. A mapping keeps the file alive after storage closes its descriptor, so queued chunks need no
// dup().
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

// The calling thread's cache, used by every engine and checksum call on it (one JavaScript thread each; the cache
// is not locked). Sharing it is what lets a send reuse the page tables its verification populated: measured on
// writev with verification, one set of faults and munmaps per GB instead of two (issue 14).
FileMapCache& ThreadFileMaps();

}  // namespace walcast
