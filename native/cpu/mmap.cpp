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

// releasePages(buffer from mmapFile, offset, length): the whole pages inside [offset, offset+length) leave
// this process's resident set (MADV_DONTNEED on a read-only private file mapping: a later read faults them
// back in from the page cache). For tensors a loader has copied out of the file and no longer reads.
static Napi::Value ReleasePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsArrayBuffer() || !info[1].IsNumber() || !info[2].IsNumber())
    throw Napi::TypeError::New(env, "releasePages(buffer, offset, length)");
  Napi::ArrayBuffer ab = info[0].As<Napi::ArrayBuffer>();
  const int64_t off = info[1].As<Napi::Number>().Int64Value(), len = info[2].As<Napi::Number>().Int64Value();
  if (off < 0 || len < 0 || static_cast<size_t>(off + len) > ab.ByteLength()) throw Napi::RangeError::New(env, "releasePages: range outside the buffer");
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t b = reinterpret_cast<uintptr_t>(ab.Data()) + off, e = b + len;
  const uintptr_t b0 = (b + page - 1) / page * page, e0 = e / page * page;
  if (e0 > b0) ::madvise(reinterpret_cast<void*>(b0), e0 - b0, MADV_DONTNEED);
  return env.Undefined();
}

LOWBIT_EXPORTS {
  exports.Set("mmapFile", Napi::Function::New(env, MmapFile));
  exports.Set("releasePages", Napi::Function::New(env, ReleasePages));
}

}  // namespace lowbit
