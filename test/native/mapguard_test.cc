// A guarded mapping read after its file was truncated: depthgate's SIGBUS handler must name the
// file and the cause before the default action ends the process (what happens when a checkpoint
// is truncated during a forward pass; between passes the engine refuses a changed file instead).
//   mapguard_test FILE     (FILE is truncated to 0 bytes)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>

#include "mapguard.h"

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  int fd = open(argv[1], O_RDWR | O_CLOEXEC);
  if (fd < 0) return 3;
  off_t size = lseek(fd, 0, SEEK_END);
  if (size < 8192) return 4;
  void* map = mmap(nullptr, size_t(size), PROT_READ, MAP_PRIVATE, fd, 0);
  if (map == MAP_FAILED) return 5;
  dg::guardMapping(map, size_t(size), argv[1]);
  volatile const unsigned char* bytes = static_cast<const unsigned char*>(map);
  unsigned sum = bytes[size - 1];  // readable while the file is whole
  if (ftruncate(fd, 0) != 0) return 6;
  sum += bytes[size - 1];  // the page is gone: SIGBUS
  std::printf("survived %u\n", sum);
  return 0;
}
