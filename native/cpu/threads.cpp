#include "threads.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "registry.h"

namespace lowbit {
namespace {

thread_local bool t_in_pool = false;

class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n) {
    std::lock_guard<std::mutex> run_lock(run_mu_);
    stop();
    stopping_ = false;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { loop(i); });
  }

  void run(std::size_t n, std::size_t min_chunk, const std::function<void(std::size_t, std::size_t, int)>& fn) {
    if (n == 0) return;
    std::size_t nthreads = static_cast<std::size_t>(size());
    std::size_t max_chunks = (n + min_chunk - 1) / min_chunk;
    if (t_in_pool || nthreads == 1 || max_chunks <= 1) {
      fn(0, n, 0);
      return;
    }
    std::lock_guard<std::mutex> run_lock(run_mu_);  // one parallel region at a time
    std::size_t chunks = std::min(nthreads, max_chunks);
    {
      std::lock_guard<std::mutex> lk(mu_);
      job_ = &fn;
      job_n_ = n;
      job_chunks_ = chunks;
      next_.store(1);
      pending_.store(static_cast<int>(chunks));
      ++generation_;
    }
    cv_.notify_all();
    t_in_pool = true;
    do_chunk(0);
    for (;;) {
      std::size_t c = next_.fetch_add(1);
      if (c >= job_chunks_) break;
      do_chunk(c);
    }
    t_in_pool = false;
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_.load() == 0; });
    job_ = nullptr;
  }

 private:
  void do_chunk(std::size_t c) {
    std::size_t b = job_n_ * c / job_chunks_, e = job_n_ * (c + 1) / job_chunks_;
    (*job_)(b, e, static_cast<int>(c));
    if (pending_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lk(mu_);
      done_cv_.notify_all();
    }
  }

  void loop(int) {
    t_in_pool = true;
    unsigned long seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      for (;;) {
        std::size_t c = next_.fetch_add(1);
        if (c >= job_chunks_) break;
        do_chunk(c);
      }
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
  std::mutex mu_, run_mu_;
  std::condition_variable cv_, done_cv_;
  bool stopping_ = false;
  unsigned long generation_ = 0;
  const std::function<void(std::size_t, std::size_t, int)>* job_ = nullptr;
  std::size_t job_n_ = 0, job_chunks_ = 0;
  std::atomic<std::size_t> next_{0};
  std::atomic<int> pending_{0};
};

int default_threads() {
  if (const char* env = std::getenv("LOWBIT_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
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
}

}  // namespace lowbit
