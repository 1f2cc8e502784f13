// N-API bindings of the packed low-bit linears on the GPU (built only with LOWBIT_CUDA; the host-side repack
// into the device layout is qlayout_pack.cpp, in every build):
//   gpuQLinearCreate(weight: PackedWeight | Int8Weight, {device}) → Promise<handle>
//   gpuQLinearMatmul(handle, x: Float32Array [M·cols], {dtype: 'fp16'|'bf16', kernel?: 'auto'|'mma'|'wgmma', fuseX?})
//                   → Promise<Float32Array [M·rows]>
//   gpuQLinearBench(handle, {batch, dtype, iters, kernel?, stages?, warpsPerSm?, fuseX?}) → Promise<{oursUs, kernelUs, prepUs,
//                   finishUs, denseUs, copyGBs, oursBytes, denseBytes, relErr, splits, wgmma, fusedX}>
//   gpuQLinearInfo(handle) → {device, bits, int8, rows, cols, deviceBytes, lastSplits, lastKernel, lastFusedX, wgmma, gemmFrom}
//   gpuQLinearFree(handle)
#include <cmath>
#include <cstring>
#include <memory>

#include "cpu/async.h"
#include "cpu/packed.h"
#include "cpu/registry.h"
#include "cuda/gpu.h"
#include "cuda/qlayout_pack.h"

namespace lowbit {
namespace {

struct QBox {
  std::shared_ptr<cuda::GpuQLinear> q;
};

std::shared_ptr<cuda::GpuQLinear> unbox(const Napi::Value& v) {
  if (!v.IsExternal()) throw std::invalid_argument("expected a GPU packed-linear handle");
  QBox* b = v.As<Napi::External<QBox>>().Data();
  if (!b || !b->q) throw std::invalid_argument("the GPU packed linear was freed");
  return b->q;
}

int act_dtype(const Napi::Object& o) {
  if (!o.Has("dtype") || o.Get("dtype").IsUndefined()) return 2;
  const std::string d = o.Get("dtype").ToString().Utf8Value();
  if (d == "fp16" || d == "f16" || d == "float16") return 2;
  if (d == "bf16" || d == "bfloat16") return 1;
  throw std::invalid_argument("dtype must be fp16 or bf16, got '" + d + "'");
}

// 'auto' (default): the kernel that serves the batch; 'mma' / 'wgmma' force one (qlinear_matmul's kernel).
int kernel_of(const Napi::Object& o) {
  if (!o.Has("kernel") || o.Get("kernel").IsUndefined()) return 0;
  const std::string k = o.Get("kernel").ToString().Utf8Value();
  if (k == "auto") return 0;
  if (k == "mma") return 1;
  if (k == "wgmma") return 2;
  throw std::invalid_argument("kernel must be auto, mma or wgmma, got '" + k + "'");
}

// fuseX (default true): the mma.sync kernel may convert x itself (qlinear_matmul's fuse_x).
bool fuse_x_of(const Napi::Object& o) { return !o.Has("fuseX") || o.Get("fuseX").IsUndefined() || o.Get("fuseX").ToBoolean().Value(); }

Napi::Object opts_of(const Napi::CallbackInfo& info, size_t i) {
  return info.Length() > i && info[i].IsObject() ? info[i].As<Napi::Object>() : Napi::Object::New(info.Env());
}

Napi::Value GpuQLinearCreate(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (!info[0].IsObject()) throw std::invalid_argument("gpuQLinearCreate: expected a packed weight");
    Napi::Object w = info[0].As<Napi::Object>();
    Napi::Object opts = opts_of(info, 1);
    const int device = opts.Has("device") && opts.Get("device").IsNumber() ? opts.Get("device").As<Napi::Number>().Int32Value() : 0;
    const std::string kind = w.Get("kind").IsString() ? w.Get("kind").As<Napi::String>().Utf8Value() : "";
    auto result = std::make_shared<std::shared_ptr<cuda::GpuQLinear>>();
    std::function<void()> exec;
    if (kind == "int8") {
      const Int8View v = int8_from_js(w);
      cuda::Int8Host h;
      h.rows = v.rows;
      h.cols = v.cols;
      h.kpad = v.kpad;
      h.w = v.w;
      h.scales = v.scales;
      exec = [=] { *result = cuda::qlinear_create_int8(h, device); };
    } else if (kind == "packed") {
      const PackedView v = packed_from_js(w);
      exec = [=] { *result = cuda::qlinear_create(cuda::device_layout(v), device); };
    } else {
      throw std::invalid_argument("gpuQLinearCreate: the CUDA kernels take packed (2/3/4/8-bit) or int8 weights, got kind '" + kind + "'");
    }
    return run_async(info.Env(), exec,
                     [result](Napi::Env env) -> Napi::Value {
                       QBox* b = new QBox{*result};
                       return Napi::External<QBox>::New(env, b, [](Napi::Env, QBox* p) { delete p; });
                     },
                     {info[0]});
  });
}

Napi::Value GpuQLinearMatmul(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto q = unbox(info[0]);
    const cuda::QLinearInfo& L = cuda::qlinear_info(*q);
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
      throw std::invalid_argument("x: expected a Float32Array");
    auto x = info[1].As<Napi::Float32Array>();
    const int64_t n = static_cast<int64_t>(x.ElementLength());
    if (n == 0 || n % L.cols) throw std::invalid_argument("x has " + std::to_string(n) + " floats, not a multiple of cols = " + std::to_string(L.cols));
    const int64_t M = n / L.cols;
    const Napi::Object o = opts_of(info, 2);
    const int act = act_dtype(o), kernel = kernel_of(o);
    const bool fuse = fuse_x_of(o);
    auto y = std::make_shared<std::vector<float>>(static_cast<size_t>(M * L.rows));
    const float* xp = x.Data();
    return run_async(info.Env(), [=] { cuda::qlinear_matmul(*q, xp, M, act, y->data(), kernel, fuse); },
                     [y](Napi::Env env) -> Napi::Value {
                       auto a = Napi::Float32Array::New(env, y->size());
                       std::memcpy(a.Data(), y->data(), y->size() * 4);
                       return a;
                     },
                     {info[1]});
  });
}

Napi::Value GpuQLinearBench(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto q = unbox(info[0]);
    Napi::Object o = opts_of(info, 1);
    const int64_t M = o.Has("batch") ? o.Get("batch").As<Napi::Number>().Int64Value() : 1;
    const int iters = o.Has("iters") ? o.Get("iters").As<Napi::Number>().Int32Value() : 50;
    if (M < 1 || iters < 1) throw std::invalid_argument("gpuQLinearBench: batch and iters must be positive");
    const int act = act_dtype(o), kernel = kernel_of(o);
    const int stages = o.Has("stages") ? o.Get("stages").As<Napi::Number>().Int32Value() : 0;
    const int wps = o.Has("warpsPerSm") ? o.Get("warpsPerSm").As<Napi::Number>().Int32Value() : 0;
    const bool fuse = fuse_x_of(o);
    auto r = std::make_shared<cuda::QBench>();
    return run_async(info.Env(), [=] { *r = cuda::qlinear_bench(*q, M, act, iters, kernel, stages, wps, fuse); },
                     [r](Napi::Env env) -> Napi::Value {
                       Napi::Object b = Napi::Object::New(env);
                       b.Set("oursUs", r->ours_us);
                       b.Set("kernelUs", r->kernel_us);
                       b.Set("prepUs", r->prep_us);
                       b.Set("finishUs", r->finish_us);
                       b.Set("denseUs", r->dense_us);
                       b.Set("copyGBs", r->copy_gbs);
                       b.Set("oursBytes", r->ours_bytes);
                       b.Set("denseBytes", r->dense_bytes);
                       b.Set("relErr", r->rel_err);
                       b.Set("splits", r->splits);
                       b.Set("wgmma", r->wgmma);
                       b.Set("fusedX", r->fused_x);
                       return b;
                     },
                     {});
  });
}

Napi::Value GpuQLinearInfo(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const cuda::QLinearInfo& L = cuda::qlinear_info(*unbox(info[0]));
    Napi::Object r = Napi::Object::New(info.Env());
    r.Set("device", L.device);
    r.Set("bits", L.bits);
    r.Set("int8", L.int8);
    r.Set("rows", static_cast<double>(L.rows));
    r.Set("cols", static_cast<double>(L.cols));
    r.Set("deviceBytes", static_cast<double>(L.device_bytes));
    r.Set("lastSplits", L.last_splits);
    r.Set("lastKernel", L.int8 ? "int8" : L.last_wgmma ? "wgmma" : "mma");
    r.Set("lastFusedX", L.last_fused_x);
    r.Set("wgmma", L.wgmma);
    r.Set("gemmFrom", L.gemm_from);
    return r;
  });
}

Napi::Value GpuQLinearFree(const Napi::CallbackInfo& info) {
  if (info[0].IsExternal()) {
    QBox* b = info[0].As<Napi::External<QBox>>().Data();
    if (b) b->q.reset();  // freed now, or when an in-flight call finishes
  }
  return info.Env().Undefined();
}

}  // namespace

LOWBIT_EXPORTS {
  exports.Set("gpuQLinearCreate", Napi::Function::New(env, GpuQLinearCreate));
  exports.Set("gpuQLinearMatmul", Napi::Function::New(env, GpuQLinearMatmul));
  exports.Set("gpuQLinearBench", Napi::Function::New(env, GpuQLinearBench));
  exports.Set("gpuQLinearInfo", Napi::Function::New(env, GpuQLinearInfo));
  exports.Set("gpuQLinearFree", Napi::Function::New(env, GpuQLinearFree));
}

}  // namespace lowbit
