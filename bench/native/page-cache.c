/*
 * page-cache: evicts files from the page cache, or reports how much of them is cached, for the cold catch-up
 * scenario. Built by the harness with cc, never shipped.
 *
 *   page-cache evict FILE...     fdatasync (dirty pages cannot be dropped) + posix_fadvise(POSIX_FADV_DONTNEED)
 *   page-cache resident FILE...  nothing else
 * Both print {"files":N,"bytes":B,"residentBytes":R} measured with mincore() afterwards, so the harness can
 * state how cold "cold" really was.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t resident_bytes(int fd, uint64_t size) {
  if (size == 0) return 0;
  void *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) return 0;
  long page = sysconf(_SC_PAGESIZE);
  size_t pages = (size + (uint64_t)page - 1) / (uint64_t)page;
  unsigned char *vector = malloc(pages);
  uint64_t resident = 0;
  if (vector != NULL && mincore(map, size, vector) == 0) {
    for (size_t i = 0; i < pages; i++) if (vector[i] & 1) resident += (uint64_t)page;
  }
  free(vector);
  munmap(map, size);
  return resident > size ? size : resident;
}

int main(int argc, char **argv) {
  if (argc < 2 || (strcmp(argv[1], "evict") != 0 && strcmp(argv[1], "resident") != 0)) {
    fprintf(stderr, "usage: page-cache evict|resident FILE...\n");
    return 2;
  }
  int evict = strcmp(argv[1], "evict") == 0;
  uint64_t total = 0, resident = 0;
  int files = 0;
  for (int i = 2; i < argc; i++) {
    int fd = open(argv[i], evict ? O_RDWR : O_RDONLY);
    if (fd < 0 && evict) fd = open(argv[i], O_RDONLY);
    if (fd < 0) { perror(argv[i]); return 1; }
    struct stat st;
    fstat(fd, &st);
    if (evict) {
      fdatasync(fd);
      posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    }
    total += (uint64_t)st.st_size;
    resident += resident_bytes(fd, (uint64_t)st.st_size);
    files++;
    close(fd);
  }
  printf("{\"files\":%d,\"bytes\":%llu,\"residentBytes\":%llu}\n", files, (unsigned long long)total, (unsigned long long)resident);
  return 0;
}
