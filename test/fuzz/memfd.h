// Fuzz inputs as files: the loader opens paths, so each input goes into an anonymous memfd.
#pragma once
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

// Returns an fd holding data (or -1); the file is /proc/self/fd/<fd>. Close it when done.
inline int memfdWith(const uint8_t* data, size_t size) {
  int fd = memfd_create("fuzz-input", MFD_CLOEXEC);
  if (fd < 0) return -1;
  if (size && write(fd, data, size) != ssize_t(size)) {
    close(fd);
    return -1;
  }
  return fd;
}

inline std::string fdPath(int fd) { return "/proc/self/fd/" + std::to_string(fd); }
