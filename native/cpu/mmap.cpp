// Memory-maps a checkpoint file read-only and hands it to JS as an external ArrayBuffer, so weights
// live in the page cache and are shared, not copied; unmapped when the buffer is collected.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "registry.h"

namespace lowbit {

static Napi::Value MmapFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = info[0].As<Napi::String>();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Napi::Error::New(env, path + ": cannot open (" + std::strerror(errno) + ")");
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw Napi::Error::New(env, path + ": cannot stat (" + std::strerror(e) + ")");
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return Napi::ArrayBuffer::New(env, 0);
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  ::close(fd);
  if (p == MAP_FAILED) throw Napi::Error::New(env, path + ": mmap failed (" + std::strerror(e) + ")");
  return Napi::ArrayBuffer::New(env, p, size, [](Napi::Env, void* data, size_t* len) {
    ::munmap(data, *len);
    delete len;
  }, new size_t(size));
}

LOWBIT_EXPORTS { exports.Set("mmapFile", Napi::Function::New(env, MmapFile)); }

}  // namespace lowbit
