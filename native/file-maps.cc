// Owns the whole-file mmap cache (see file-maps.h).
#include "file-maps.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <cerrno>

#include "invariant.h"

namespace walcast {

namespace {
// Expired cache entries are swept once the table grows past this many files (16 MiB segments: 1 GiB mapped).
constexpr size_t kMapEntriesBeforePrune = 64;
// Files kept mapped after their last user (address space only; a deleted segment's blocks are freed later). On
// sendfile nothing else holds a checksum's mapping, and with 16, fan-out over ~60 segments remapped (mmap, faults,
// munmap) a segment per check (bench, 100 receivers: 0.06-0.08 CPU s/GB added by verification with 16, 0.01-0.04 with
// 64; issue 14). The page verifier keeps more segments' bitmaps (VERIFIED_SEGMENTS_MAX, 256): a bitmap is a few KiB,
// while a mapping keeps a segment that retention deleted allocated on disk until it is unmapped.
constexpr size_t kRecentMapsKept = 64;
}  // namespace

FileMap::~FileMap() {
  if (base != nullptr) munmap(const_cast<uint8_t*>(base), length);
}

std::shared_ptr<FileMap> FileMapCache::Get(int fd, uint64_t end_offset, Failure* failure) {
  struct stat info;
  if (fstat(fd, &info) != 0) {
    *failure = {errno, "fstat"};
    return nullptr;
  }
  const auto key = std::make_pair(info.st_dev, info.st_ino);
  auto found = maps_.find(key);
  if (found != maps_.end()) {
    std::shared_ptr<FileMap> map = found->second.lock();
    if (map && map->length >= end_offset) {
      KeepRecent(map);
      return map;
    }
  }
  // A new file, or one that grew past its mapping (the segment being written): map its current size. Older
  // mappings stay alive as long as queued chunks still point into them.
  const uint64_t file_bytes = static_cast<uint64_t>(info.st_size);
  if (file_bytes < end_offset || file_bytes == 0) {
    *failure = {ENXIO, "mmap"};
    return nullptr;
  }
  void* base = mmap(nullptr, file_bytes, PROT_READ, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    *failure = {errno, "mmap"};
    return nullptr;
  }
  auto map = std::make_shared<FileMap>(static_cast<const uint8_t*>(base), file_bytes);
  if (maps_.size() >= kMapEntriesBeforePrune) PruneExpired();
  maps_[key] = map;
  KeepRecent(map);
  WALCAST_ASSERT(map->length >= end_offset);
  return map;
}

FileMapCache& ThreadFileMaps() {
  thread_local FileMapCache maps;
  return maps;
}

void FileMapCache::KeepRecent(const std::shared_ptr<FileMap>& map) {
  if (!recent_.empty() && recent_.front() == map) return;
  recent_.push_front(map);
  if (recent_.size() > kRecentMapsKept) recent_.pop_back();
}

void FileMapCache::PruneExpired() {
  for (auto it = maps_.begin(); it != maps_.end();) {
    it = it->second.expired() ? maps_.erase(it) : std::next(it);
  }
}

}  // namespace walcast
