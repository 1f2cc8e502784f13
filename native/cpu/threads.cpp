#include "threads.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "async.h"
#include "registry.h"

namespace lowbit {
namespace {

thread_local bool t_in_pool = false;

// A non-negative integer from the environment, else `fallback`.
int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return *end == '\0' && n >= 0 && n <= 1000000 ? static_cast<int>(n) : fallback;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Chunks are claimed from one atomic word that also names the region they belong to: generation (32 bits) | chunks
// (16) | next unclaimed chunk (16). A worker still draining one region when the next is published sees another
// generation and stops, instead of claiming the new region's chunks before its pending count is set (which lost a
// chunk's completion and left the caller waiting forever) or taking a chunk index the caller then hands out again.
class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return size_.load(); }

  void resize(int n) {
    std::lock_guard<std::mutex> run_lock(run_mu_);
    stop();
    stopping_ = false;
    n = std::min(n, kMaxThreads);
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { loop(); });
    size_.store(static_cast<int>(workers_.size()) + 1);
  }

  void run(std::size_t n, std::size_t min_chunk, const std::function<void(std::size_t, std::size_t, int)>& fn) {
    if (n == 0) return;
    const std::size_t max_chunks = (n + min_chunk - 1) / min_chunk;
    if (t_in_pool || size() == 1 || max_chunks <= 1) {
      fn(0, n, 0);
      return;
    }
    std::lock_guard<std::mutex> run_lock(run_mu_);  // one parallel region at a time; also holds off resize
    const uint64_t chunks = std::min(static_cast<std::size_t>(size()), max_chunks);  // ≥ 1: a resize may have come between
    uint32_t gen;
    {
      std::lock_guard<std::mutex> lk(mu_);
      gen = ++generation_;
      job_ = &fn;
      job_n_ = n;
      pending_.store(static_cast<int>(chunks));
      claim_.store(static_cast<uint64_t>(gen) << 32 | chunks << 16);  // published last: the fields above are set
    }
    cv_.notify_all();
    t_in_pool = true;
    drain(gen);
    t_in_pool = false;
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_.load() == 0; });
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));  // the first chunk's to throw, once all ended
  }

 private:
  static constexpr int kMaxThreads = 1024;  // chunks fit the claim word's 16 bits

  // Until region `seen` is no longer the newest one or spin_ has passed.
  void spin_while_idle(uint32_t seen) const {
    if (spin_.count() == 0) return;
    const auto until = std::chrono::steady_clock::now() + spin_;
    for (;;) {
      for (int i = 0; i < 64; ++i) {
        if (static_cast<uint32_t>(claim_.load(std::memory_order_relaxed) >> 32) != seen) return;
        cpu_relax();
      }
      if (std::chrono::steady_clock::now() >= until) return;
    }
  }

  // Runs chunks of region gen until none is left unclaimed.
  void drain(uint32_t gen) {
    uint64_t s = claim_.load();
    for (;;) {
      const uint64_t chunks = (s >> 16) & 0xffff, c = s & 0xffff;
      if (s >> 32 != gen || c >= chunks) return;
      if (!claim_.compare_exchange_weak(s, s + 1)) continue;  // s reloaded
      try {
        (*job_)(job_n_ * c / chunks, job_n_ * (c + 1) / chunks, static_cast<int>(c));
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
      }
      if (pending_.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_all();
      }
      s = claim_.load();
    }
  }

  void loop() {
    t_in_pool = true;
    uint32_t seen = 0;
    for (;;) {
      // Spin a while before sleeping: parallel regions come in runs (a layer's GEMMs), and a worker woken through
      // the condition variable arrives tens of µs late, after the caller has run a small region's chunks alone.
      spin_while_idle(seen);
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      drain(seen);
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  // How long an idle worker spins before it sleeps: LOWBIT_SPIN_US, default 200 (0 where processes share the cores,
  // as OMP_WAIT_POLICY=passive does for OpenMP).
  const std::chrono::microseconds spin_{env_int("LOWBIT_SPIN_US", 200)};
  std::atomic<int> size_{1};  // workers + the caller
  std::mutex mu_, run_mu_;
  std::condition_variable cv_, done_cv_;
  bool stopping_ = false;
  uint32_t generation_ = 0;  // of the last region published (wraps; only inequality matters)
  const std::function<void(std::size_t, std::size_t, int)>* job_ = nullptr;
  std::size_t job_n_ = 0;
  std::atomic<uint64_t> claim_{0};
  std::atomic<int> pending_{0};
  std::exception_ptr error_;  // under mu_
};

int default_threads() {
  if (const int n = env_int("LOWBIT_THREADS", 0); n > 0) return n;
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }

void set_num_threads(int n) { pool().resize(n <= 0 ? default_threads() : n); }

void parallel_for(std::size_t n, const std::function<void(std::size_t, std::size_t, int)>& fn, std::size_t min_chunk) {
  pool().run(n, std::max<std::size_t>(1, min_chunk), fn);
}

LOWBIT_EXPORTS {
  exports.Set("setThreads", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
    set_num_threads(info.Length() > 0 ? info[0].As<Napi::Number>().Int32Value() : 0);
    return Napi::Number::New(info.Env(), num_threads());
  }));
  exports.Set("getThreads", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), num_threads());
  }));
  // threadPoolSelfTest(regions, throwAt = -1) → Promise<{wrong, late}>: `regions` parallel regions in a row, each of
  // 2–64 one-item chunks (small work, so that workers are still draining one region when the next is published);
  // wrong: items not run exactly once; late: items run after their region returned. In region throwAt item 0 throws:
  // the promise rejects with that message once the region's other chunks have ended.
  exports.Set("threadPoolSelfTest", Napi::Function::New(env, [](const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const int64_t regions = info[0].As<Napi::Number>().Int64Value();
      const int64_t throw_at = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int64Value() : -1;
      auto out = std::make_shared<std::pair<int64_t, int64_t>>(0, 0);
      return run_async(info.Env(), [=] {
        std::vector<std::atomic<int>> hits(64);
        std::atomic<int64_t> current{-1}, late{0};
        for (int64_t r = 0; r < regions; ++r) {
          const std::size_t n = 2 + static_cast<std::size_t>((r * 2654435761ull) >> 8) % 63;
          for (std::size_t i = 0; i < n; ++i) hits[i].store(0);
          current.store(r);
          parallel_for(n, [&](std::size_t b, std::size_t e, int) {
            for (std::size_t i = b; i < e; ++i) {
              if (current.load() != r) late.fetch_add(1);
              if (r == throw_at && i == 0) throw std::runtime_error("threadPoolSelfTest: item 0 of region " + std::to_string(r) + " threw");
              hits[i].fetch_add(1);
            }
          }, 1);
          current.store(-1);
          for (std::size_t i = 0; i < n; ++i) out->first += hits[i].load() != 1;
        }
        out->second = late.load();
      }, [out](Napi::Env env) -> Napi::Value {
        Napi::Object o = Napi::Object::New(env);
        o.Set("wrong", static_cast<double>(out->first));
        o.Set("late", static_cast<double>(out->second));
        return o;
      }, {});
    });
  }));
}

}  // namespace lowbit
