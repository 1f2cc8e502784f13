// Runs native work on a libuv worker thread and settles a Promise, so long kernels never block the
// event loop. Inputs stay referenced until the work is done; a cancel flag (an Int32Array the JS side
// sets from an AbortSignal) is polled by long loops between units of work.
#pragma once
#include <napi.h>

#include <atomic>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

namespace lowbit {

struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("cancelled") {}
};

class CancelFlag {
 public:
  CancelFlag() = default;
  explicit CancelFlag(const Napi::Value& v) {
    if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array)
      flag_ = v.As<Napi::Int32Array>().Data();
  }
  bool requested() const { return flag_ && __atomic_load_n(flag_, __ATOMIC_RELAXED) != 0; }
  void check() const {
    if (requested()) throw Cancelled();
  }

 private:
  int32_t* flag_ = nullptr;
};

class LambdaWorker : public Napi::AsyncWorker {
 public:
  using Exec = std::function<void()>;
  using Done = std::function<Napi::Value(Napi::Env)>;

  LambdaWorker(Napi::Env env, Exec exec, Done done, const std::vector<Napi::Value>& keep)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), exec_(std::move(exec)), done_(std::move(done)) {
    for (auto& v : keep) {
      if (v.IsObject()) refs_.push_back(Napi::Persistent(v.As<Napi::Object>()));
    }
  }

  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      exec_();
    } catch (const Cancelled&) {
      cancelled_ = true;
      SetError("cancelled");
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }
  void OnOK() override {
    Napi::Env env = Env();
    try {
      deferred_.Resolve(done_ ? done_(env) : env.Undefined());
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override {
    Napi::Error err = Napi::Error::New(Env(), e.Message());
    if (cancelled_) err.Set("name", Napi::String::New(Env(), "AbortError"));
    deferred_.Reject(err.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Exec exec_;
  Done done_;
  std::vector<Napi::ObjectReference> refs_;
  bool cancelled_ = false;
};

// Queues exec on the pool; done (optional) builds the resolved value on the JS thread.
inline Napi::Promise run_async(Napi::Env env, LambdaWorker::Exec exec, LambdaWorker::Done done,
                               const std::vector<Napi::Value>& keep) {
  auto* w = new LambdaWorker(env, std::move(exec), std::move(done), keep);
  auto p = w->promise();
  w->Queue();
  return p;
}

// Wraps a binding body so C++ exceptions become JS errors with the message intact.
template <class F>
Napi::Value guarded(const Napi::CallbackInfo& info, F&& f) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), e.what());
  }
}

}  // namespace lowbit
