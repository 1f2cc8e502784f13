// N-API bindings of the CUDA backend (built only with LOWBIT_CUDA; stub.cpp stands in otherwise).
//   cudaInfo() → {built: true, runtimeVersion, driverVersion, error?}
//   cudaDevices() → [{index, name, computeCapability, multiProcessors, totalMemory}] ([] without GPU/driver)
//   gpuModelCreate({cfg, layers, embed, lmHead, finalNorm}, {device, dtype, actFp32, actBits?}) → Promise<handle>
//   gpuScore(handle, ids: Int32Array, seqLen, hidden?, select?) → Promise<Float64Array>  (per-position NLL, 0 at each
//     last position); with select {rows, targets: Int32Array} → Promise<{nll, greedy: Uint8Array}> for those
//     (row, target) pairs only (the head runs on those rows)
//   gpuModelInfo(handle) → {device, dtype, actFp32, actBits, weightBytes, lastGpuMs}
//   gpuBatchTokens(handle, cap) → tokens (≤ cap) a gpuScore call can take in the device memory free now
//   gpuModelFree(handle)
//   cudaSelfTest({device, dtype, nseq, seqLen, heads, kvHeads, headDim}) → {relError, report}
#include <atomic>
#include <cstring>
#include <memory>

#include "cpu/async.h"
#include "napi_host.h"

namespace lowbit {
namespace {

struct Box {
  std::shared_ptr<cuda::GpuModel> model;
  std::shared_ptr<std::atomic<float>> last_ms = std::make_shared<std::atomic<float>>(0.f);
};

const char* dtype_name(int d) { return d == 0 ? "fp32" : d == 1 ? "bf16" : "fp16"; }

Box* unbox(const Napi::Value& v) {
  if (!v.IsExternal()) throw std::invalid_argument("expected a GPU model handle");
  Box* b = v.As<Napi::External<Box>>().Data();
  if (!b || !b->model) throw std::invalid_argument("the GPU model was freed");
  return b;
}

Napi::Value CudaInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object r = Napi::Object::New(env);
  r.Set("built", true);
  r.Set("runtimeVersion", cuda::runtime_version());
  r.Set("driverVersion", cuda::driver_version());
  std::string why;
  auto devs = cuda::list_devices(&why);
  if (devs.empty()) r.Set("error", why.empty() ? "no CUDA device found" : why);
  return r;
}

Napi::Value CudaDevices(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string why;
  auto devs = cuda::list_devices(&why);
  Napi::Array a = Napi::Array::New(env, devs.size());
  for (size_t i = 0; i < devs.size(); ++i) {
    Napi::Object d = Napi::Object::New(env);
    d.Set("index", devs[i].index);
    d.Set("name", devs[i].name);
    d.Set("computeCapability", std::to_string(devs[i].major) + "." + std::to_string(devs[i].minor));
    d.Set("multiProcessors", devs[i].multiProcessors);
    d.Set("totalMemory", static_cast<double>(devs[i].totalMemory));
    a.Set(static_cast<uint32_t>(i), d);
  }
  return a;
}

Napi::Value GpuModelCreate(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object o = info[0].As<Napi::Object>();
    Napi::Object opts = info.Length() > 1 && info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(info.Env());
    auto hm = std::make_shared<cuda::HostModel>();
    hm->cfg = cuda_js::model_cfg(o.Get("cfg").As<Napi::Object>());
    const cuda::ModelCfg& g = hm->cfg;
    Napi::Array layers = o.Get("layers").As<Napi::Array>();
    for (uint32_t i = 0; i < layers.Length(); ++i) hm->layers.push_back(cuda_js::host_layer(layers.Get(i).As<Napi::Object>(), g));
    hm->embed = cuda_js::host_mat(o.Get("embed"), g.vocab, g.hidden, "embed_tokens");
    hm->head = cuda_js::host_mat(o.Get("lmHead"), g.vocab, g.hidden, "lm_head");
    hm->final_norm = cf32_from_js(o.Get("finalNorm"), g.hidden, "finalNorm");
    int device = opts.Has("device") && opts.Get("device").IsNumber() ? opts.Get("device").As<Napi::Number>().Int32Value() : 0;
    std::string dt = opts.Has("dtype") && opts.Get("dtype").IsString() ? opts.Get("dtype").As<Napi::String>().Utf8Value() : "bf16";
    int dtype;
    if (dt == "fp32" || dt == "f32" || dt == "float32") dtype = 0;
    else if (dt == "bf16" || dt == "bfloat16") dtype = 1;
    else if (dt == "fp16" || dt == "f16" || dt == "float16") dtype = 2;
    else throw std::invalid_argument("dtype must be bf16, fp16 or fp32, got '" + dt + "'");
    const bool act32 = opts.Has("actFp32") && opts.Get("actFp32").ToBoolean();
    if (opts.Has("actBits") && opts.Get("actBits").IsNumber()) hm->act_bits = opts.Get("actBits").As<Napi::Number>().Int32Value();
    // A pipeline stage (layers split across GPUs): `layers` holds its run of layers.
    hm->first = !opts.Has("first") || opts.Get("first").ToBoolean();
    hm->last = !opts.Has("last") || opts.Get("last").ToBoolean();
    auto result = std::make_shared<std::shared_ptr<cuda::GpuModel>>();
    return run_async(info.Env(), [=] { *result = cuda::create_model(*hm, device, dtype, act32); },
                     [result](Napi::Env env) -> Napi::Value {
                       Box* b = new Box();
                       b->model = *result;
                       return Napi::External<Box>::New(env, b, [](Napi::Env, Box* p) { delete p; });
                     },
                     {info[0]});
  });
}

Napi::Value GpuScore(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Box* box = unbox(info[0]);
    std::shared_ptr<cuda::GpuModel> model = box->model;
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw std::invalid_argument("ids: expected an Int32Array");
    auto ids = info[1].As<Napi::Int32Array>();
    int64_t L = info[2].As<Napi::Number>().Int64Value();
    int64_t n = static_cast<int64_t>(ids.ElementLength());
    if (L <= 0 || n % L) throw std::invalid_argument("ids length " + std::to_string(n) + " is not a multiple of seqLen " + std::to_string(L));
    const int32_t* idp = ids.Data();
    // Pipeline stages pass the hidden states [n, hidden] fp32 through `hidden` (in, and out unless last).
    float* hidden = nullptr;
    if (info.Length() > 3 && !info[3].IsUndefined() && !info[3].IsNull()) {
      if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
        throw std::invalid_argument("hidden: expected a Float32Array");
      auto hv = info[3].As<Napi::Float32Array>();
      if (static_cast<int64_t>(hv.ElementLength()) != n * cuda::model_hidden(*model))
        throw std::invalid_argument("hidden: expected " + std::to_string(n * cuda::model_hidden(*model)) + " floats, got " + std::to_string(hv.ElementLength()));
      hidden = hv.Data();
    }
    const bool last_stage = cuda::model_last_stage(*model);
    // The head on chosen rows only: {rows: Int32Array, targets: Int32Array} (same length).
    std::shared_ptr<cuda::HeadSelect> sel;
    auto greedy = std::make_shared<std::vector<uint8_t>>();
    Napi::Value selv = info.Length() > 4 ? info[4] : info.Env().Undefined();
    if (selv.IsObject()) {
      Napi::Object so = selv.As<Napi::Object>();
      auto i32 = [&](const char* key) {
        Napi::Value v = so.Get(key);
        if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
          throw std::invalid_argument(std::string("select.") + key + ": expected an Int32Array");
        return v.As<Napi::Int32Array>();
      };
      auto rows = i32("rows"), targets = i32("targets");
      if (rows.ElementLength() != targets.ElementLength()) throw std::invalid_argument("select: rows and targets differ in length");
      sel = std::make_shared<cuda::HeadSelect>();
      sel->rows = rows.Data();
      sel->targets = targets.Data();
      sel->n = static_cast<int64_t>(rows.ElementLength());
      greedy->resize(sel->n);
      sel->greedy = greedy->data();
    }
    const int64_t nout = sel ? sel->n : n;
    auto out = std::make_shared<std::vector<double>>(last_stage ? nout : 0);
    auto ms = std::make_shared<float>(0.f);
    auto last = box->last_ms;
    // The external is not an object: keep the model alive through the shared_ptr captured here.
    return run_async(info.Env(), [=] { cuda::score(*model, idp, n / L, L, out->data(), ms.get(), hidden, sel.get()); },
                     [=](Napi::Env env) -> Napi::Value {
                       *last = *ms;
                       if (!last_stage) return env.Undefined();
                       auto a = Napi::Float64Array::New(env, nout);
                       if (nout) std::memcpy(a.Data(), out->data(), nout * sizeof(double));
                       if (!sel) return a;
                       auto g = Napi::Uint8Array::New(env, nout);
                       if (nout) std::memcpy(g.Data(), greedy->data(), nout);
                       Napi::Object r = Napi::Object::New(env);
                       r.Set("nll", a);
                       r.Set("greedy", g);
                       return r;
                     },
                     {info[1], info.Length() > 3 ? info[3] : info.Env().Undefined(), selv});
  });
}

Napi::Value GpuModelInfo(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Box* b = unbox(info[0]);
    Napi::Object r = Napi::Object::New(info.Env());
    r.Set("device", cuda::model_device(*b->model));
    r.Set("dtype", dtype_name(cuda::model_dtype(*b->model)));
    r.Set("actFp32", cuda::model_act32(*b->model));
    r.Set("actBits", cuda::model_act_bits(*b->model));
    r.Set("weightBytes", static_cast<double>(cuda::model_bytes(*b->model)));
    r.Set("lastGpuMs", static_cast<double>(b->last_ms->load()));
    return r;
  });
}

Napi::Value GpuBatchTokens(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const int64_t cap = info[1].As<Napi::Number>().Int64Value();
    return Napi::Number::New(info.Env(), static_cast<double>(cuda::batch_tokens(*unbox(info[0])->model, cap)));
  });
}

Napi::Value GpuModelFree(const Napi::CallbackInfo& info) {
  if (info[0].IsExternal()) {
    Box* b = info[0].As<Napi::External<Box>>().Data();
    if (b) b->model.reset();  // freed now, or when the last in-flight score finishes
  }
  return info.Env().Undefined();
}

Napi::Value CudaSelfTest(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object o = info[0].As<Napi::Object>();
    auto get = [&](const char* k, int d) { return o.Has(k) && o.Get(k).IsNumber() ? o.Get(k).As<Napi::Number>().Int32Value() : d; };
    int device = get("device", 0), nseq = get("nseq", 2), L = get("seqLen", 1000), nh = get("heads", 8),
        nkv = get("kvHeads", 2), hd = get("headDim", 128);
    std::string dt = o.Has("dtype") ? o.Get("dtype").As<Napi::String>().Utf8Value() : "bf16";
    int dtype = dt == "fp32" ? 0 : dt == "fp16" ? 2 : 1;
    auto rep = std::make_shared<std::string>();
    auto rel = std::make_shared<double>(0);
    return run_async(info.Env(), [=] { *rel = cuda::selftest_attention(device, dtype, nseq, L, nh, nkv, hd, rep.get()); },
                     [=](Napi::Env env) -> Napi::Value {
                       Napi::Object r = Napi::Object::New(env);
                       r.Set("relError", *rel);
                       r.Set("report", *rep);
                       return r;
                     },
                     {});
  });
}

}  // namespace

LOWBIT_EXPORTS {
  exports.Set("cudaInfo", Napi::Function::New(env, CudaInfo));
  exports.Set("cudaDevices", Napi::Function::New(env, CudaDevices));
  exports.Set("gpuModelCreate", Napi::Function::New(env, GpuModelCreate));
  exports.Set("gpuScore", Napi::Function::New(env, GpuScore));
  exports.Set("gpuModelInfo", Napi::Function::New(env, GpuModelInfo));
  exports.Set("gpuBatchTokens", Napi::Function::New(env, GpuBatchTokens));
  exports.Set("gpuModelFree", Napi::Function::New(env, GpuModelFree));
  exports.Set("cudaSelfTest", Napi::Function::New(env, CudaSelfTest));
}

}  // namespace lowbit
