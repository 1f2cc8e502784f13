// Memory-maps a checkpoint file read-only and hands it to JS as an external ArrayBuffer, so weights
// live in the page cache and are shared, not copied; unmapped when the buffer is collected. Layer-streamed
// evaluation advises the kernel about a view's pages (drop a finished layer's, read ahead the next's);
// advice only ever applies inside these mappings, never to other memory.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "registry.h"

namespace lowbit {

namespace {

struct Mapping {
  uintptr_t begin, end;
};
std::mutex maps_mu;
std::vector<Mapping> maps;

void track(void* p, size_t size) {
  std::lock_guard<std::mutex> g(maps_mu);
  maps.push_back({reinterpret_cast<uintptr_t>(p), reinterpret_cast<uintptr_t>(p) + size});
}

void untrack(void* p) {
  std::lock_guard<std::mutex> g(maps_mu);
  const uintptr_t b = reinterpret_cast<uintptr_t>(p);
  maps.erase(std::remove_if(maps.begin(), maps.end(), [b](const Mapping& m) { return m.begin == b; }), maps.end());
}

}  // namespace

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
  track(p, size);
  return Napi::ArrayBuffer::New(env, p, size, [](Napi::Env, void* data, size_t* len) {
    untrack(data);
    ::munmap(data, *len);
    delete len;
  }, new size_t(size));
}

// adviseMapped(view: TypedArray, advice: 'dontneed' | 'willneed') → bytes advised (0 when the view is not
// inside a mapped checkpoint). dontneed covers only whole pages inside the view (its neighbours keep
// theirs); willneed rounds out. Read-only file pages dropped are read back from the file when touched.
static Napi::Value AdviseMapped(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray()) throw Napi::TypeError::New(env, "adviseMapped: a typed array view is required");
  const std::string advice = info[1].ToString().Utf8Value();
  if (advice != "dontneed" && advice != "willneed") throw Napi::TypeError::New(env, "adviseMapped: advice must be 'dontneed' or 'willneed'");
  Napi::TypedArray v = info[0].As<Napi::TypedArray>();
  const uintptr_t b = reinterpret_cast<uintptr_t>(v.ArrayBuffer().Data()) + v.ByteOffset();
  const uintptr_t e = b + v.ByteLength();
  {
    std::lock_guard<std::mutex> g(maps_mu);
    if (std::none_of(maps.begin(), maps.end(), [&](const Mapping& m) { return b >= m.begin && e <= m.end && b < e; }))
      return Napi::Number::New(env, 0);
  }
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const bool drop = advice == "dontneed";
  const uintptr_t lo = drop ? (b + page - 1) / page * page : b / page * page;
  const uintptr_t hi = drop ? e / page * page : (e + page - 1) / page * page;
  if (hi <= lo) return Napi::Number::New(env, 0);
  if (::madvise(reinterpret_cast<void*>(lo), hi - lo, drop ? MADV_DONTNEED : MADV_WILLNEED) != 0)
    throw Napi::Error::New(env, std::string("adviseMapped: madvise failed (") + std::strerror(errno) + ")");
  return Napi::Number::New(env, static_cast<double>(hi - lo));
}

LOWBIT_EXPORTS {
  exports.Set("mmapFile", Napi::Function::New(env, MmapFile));
  exports.Set("adviseMapped", Napi::Function::New(env, AdviseMapped));
}

}  // namespace lowbit
