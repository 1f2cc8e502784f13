// N-API bindings of quantization on the GPU (built only with LOWBIT_CUDA):
//   gpuQuantCreate({cfg, embed}, ids: Int32Array [nseq*seqLen], seqLen, device) → Promise<session>
//   gpuQuantLoadLayer(session, layer) → Promise<void>            (the layer's weights, fp32 on the device)
//   gpuQuantHessians(session, inputs: ('attnIn'|'oIn'|'mlpIn'|'downIn')[], cancel?) → Promise<inputs whose Hessian
//     is not finite>
//   gpuQuantGptq(session, linear: 'q'|…|'down', opts) → Promise<result>   (opts and result as gptqQuantize's)
//   gpuQuantBillm(session, linear, opts) → Promise<result>   (opts and result as billmQuantize's)
//   gpuQuantPropagate(session, cancel?) → Promise<void>
//   gpuQuantAbsmaxPropagate(session, cancel?) → Promise<{attnMax, mlpMax}>   (SmoothQuant statistics on the way)
//   gpuQuantAwq(session, {bits, groupSize, grid?, clipTokens?, weights?, cancel?}) → Promise<{linears: {q: {qweight,
//     scales, zeros, weight?, bias?}, …}, inputNorm, postAttnNorm, groups} | {nonFinite: {index, value}}>   (AWQ
//     over the loaded layer; the states move on through it; nonFinite: its output is not finite from that element
//     on, nothing was searched)
//   gpuQuantInfo(session) → {device, batchSeqs, peakBytes};  gpuQuantFree(session)
//   gpuGptqQuantize(W, H, opts & {device?}) → Promise<result>   (standalone, as gptqQuantize)
//   gpuBillmQuantize(W, H, opts & {device?}) → Promise<result>   (standalone, as billmQuantize)
//   gpuHessianAccumulate(H, X, alpha, device?) → Promise<void>   (as hessianAccumulate)
#include <cmath>
#include <cstring>
#include <memory>

#include "cpu/async.h"
#include "napi_host.h"

namespace lowbit {
namespace {

struct SessionBox {
  std::shared_ptr<cuda::QuantSession> s;
};

std::shared_ptr<cuda::QuantSession> unbox(const Napi::Value& v) {
  if (!v.IsExternal()) throw std::invalid_argument("expected a GPU quantization session");
  SessionBox* b = v.As<Napi::External<SessionBox>>().Data();
  if (!b || !b->s) throw std::invalid_argument("the GPU quantization session was freed");
  return b->s;
}

cuda::CancelCheck cancel_check(const Napi::Value& v) {
  CancelFlag flag(v);
  return [flag] { flag.check(); };
}

cuda::GptqOpts gptq_opts(const Napi::Object& o, int64_t cols) {
  cuda::GptqOpts opt;
  static_cast<GptqOptions&>(opt) = gptq_options_from_js(o, cols);
  if (o.Get("weight").IsBoolean()) opt.weight = o.Get("weight").As<Napi::Boolean>().Value();
  return opt;
}

template <class T, class A>
A copy_out(Napi::Env env, const std::vector<T>& v) {
  auto a = A::New(env, v.size());
  if (!v.empty()) std::memcpy(a.Data(), v.data(), v.size() * sizeof(T));
  return a;
}

Napi::Value gptq_result(Napi::Env env, const cuda::GptqOut& r) {
  Napi::Object out = Napi::Object::New(env);
  if (!r.w.empty()) out.Set("weight", copy_out<float, Napi::Float32Array>(env, r.w));
  out.Set("qweight", copy_out<uint8_t, Napi::Uint8Array>(env, r.q));
  out.Set("scales", copy_out<float, Napi::Float32Array>(env, r.scales));
  out.Set("zeros", copy_out<float, Napi::Float32Array>(env, r.zeros));
  out.Set("gIdx", copy_out<int32_t, Napi::Int32Array>(env, r.g_idx));
  out.Set("perm", copy_out<int32_t, Napi::Int32Array>(env, r.perm));
  out.Set("loss", Napi::Number::New(env, r.loss));
  out.Set("deadColumns", Napi::Number::New(env, static_cast<double>(r.dead)));
  return out;
}

int device_of(const Napi::Value& v) { return v.IsNumber() ? v.As<Napi::Number>().Int32Value() : 0; }

Napi::Value GpuQuantCreate(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object o = info[0].As<Napi::Object>();
    const cuda::ModelCfg cfg = cuda_js::model_cfg(o.Get("cfg").As<Napi::Object>());
    const cuda::HostMat embed = cuda_js::host_mat(o.Get("embed"), cfg.vocab, cfg.hidden, "embed_tokens");
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw std::invalid_argument("ids: expected an Int32Array");
    auto ids = info[1].As<Napi::Int32Array>();
    const int64_t L = info[2].As<Napi::Number>().Int64Value(), n = static_cast<int64_t>(ids.ElementLength());
    if (L <= 0 || n % L) throw std::invalid_argument("calibration ids length " + std::to_string(n) + " is not a multiple of seqLen " + std::to_string(L));
    const int device = device_of(info[3]);
    const int32_t* idp = ids.Data();
    auto result = std::make_shared<std::shared_ptr<cuda::QuantSession>>();
    return run_async(info.Env(), [=] { *result = cuda::quant_session_create(cfg, embed, idp, n / L, L, device); },
                     [result](Napi::Env env) -> Napi::Value {
                       auto* b = new SessionBox{*result};
                       return Napi::External<SessionBox>::New(env, b, [](Napi::Env, SessionBox* p) { delete p; });
                     },
                     {info[0], info[1]});
  });
}

Napi::Value GpuQuantLoadLayer(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto s = unbox(info[0]);
    const cuda::HostLayer layer = cuda_js::host_layer(info[1].As<Napi::Object>(), cuda::quant_session_cfg(*s));
    return run_async(info.Env(), [=] { cuda::quant_session_load_layer(*s, layer); }, nullptr, {info[1]});
  });
}

Napi::Value GpuQuantHessians(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto s = unbox(info[0]);
    Napi::Array a = info[1].As<Napi::Array>();
    unsigned caps = 0;
    for (uint32_t i = 0; i < a.Length(); ++i) {
      const std::string k = a.Get(i).As<Napi::String>().Utf8Value();
      if (k == "attnIn") caps |= 1;
      else if (k == "oIn") caps |= 2;
      else if (k == "mlpIn") caps |= 4;
      else if (k == "downIn") caps |= 8;
      else throw std::invalid_argument("unknown linear input '" + k + "' (attnIn, oIn, mlpIn, downIn)");
    }
    auto cancel = cancel_check(info[2]);
    auto bad = std::make_shared<unsigned>(0);
    return run_async(info.Env(), [=] { *bad = cuda::quant_session_hessians(*s, caps, cancel); },
                     [bad](Napi::Env env) -> Napi::Value {
                       static const char* names[4] = {"attnIn", "oIn", "mlpIn", "downIn"};
                       Napi::Array a = Napi::Array::New(env);
                       for (int k = 0, n = 0; k < 4; ++k)
                         if (*bad & (1u << k)) a.Set(static_cast<uint32_t>(n++), names[k]);
                       return a;
                     },
                     {info[2]});
  });
}

int linear_index(const Napi::Value& v) {
  static const char* names[7] = {"q", "k", "v", "o", "gate", "up", "down"};
  const std::string name = v.As<Napi::String>().Utf8Value();
  for (int i = 0; i < 7; ++i)
    if (name == names[i]) return i;
  throw std::invalid_argument("unknown linear '" + name + "' (q, k, v, o, gate, up, down)");
}

Napi::Value GpuQuantGptq(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto s = unbox(info[0]);
    const int lin = linear_index(info[1]);
    Napi::Object o = info[2].As<Napi::Object>();
    const cuda::GptqOpts opt = gptq_opts(o, cuda::quant_session_linear_cols(*s, lin));
    auto cancel = cancel_check(o.Get("cancel"));
    auto r = std::make_shared<cuda::GptqOut>();
    return run_async(info.Env(), [=] { cuda::quant_session_gptq(*s, lin, opt, *r, cancel); },
                     [r](Napi::Env env) { return gptq_result(env, *r); }, {info[2]});
  });
}

Napi::Value GpuQuantBillm(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto s = unbox(info[0]);
    const int lin = linear_index(info[1]);
    Napi::Object o = info[2].As<Napi::Object>();
    const BillmOptions opt = billm_options_from_js(o);
    auto cancel = cancel_check(o.Get("cancel"));
    auto r = std::make_shared<BillmResult>();
    return run_async(info.Env(), [=] { cuda::quant_session_billm(*s, lin, opt, *r, cancel); },
                     [r, opt](Napi::Env env) { return billm_result_js(env, *r, opt.block); }, {info[2]});
  });
}

Napi::Value GpuQuantPropagate(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto s = unbox(info[0]);
    auto cancel = cancel_check(info[1]);
    return run_async(info.Env(), [=] { cuda::quant_session_propagate(*s, cancel); }, nullptr, {info[1]});
  });
}

Napi::Value GpuQuantAbsmaxPropagate(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto s = unbox(info[0]);
    auto cancel = cancel_check(info[1]);
    const int64_t n = cuda::quant_session_cfg(*s).hidden;
    auto a = std::make_shared<std::vector<float>>(n), m = std::make_shared<std::vector<float>>(n);
    return run_async(info.Env(), [=] { cuda::quant_session_absmax_propagate(*s, a->data(), m->data(), cancel); },
                     [a, m](Napi::Env env) -> Napi::Value {
                       Napi::Object r = Napi::Object::New(env);
                       r.Set("attnMax", copy_out<float, Napi::Float32Array>(env, *a));
                       r.Set("mlpMax", copy_out<float, Napi::Float32Array>(env, *m));
                       return r;
                     },
                     {info[1]});
  });
}

Napi::Value GpuQuantAwq(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto s = unbox(info[0]);
    Napi::Object o = info[1].As<Napi::Object>();
    cuda::AwqOpts opt;
    opt.bits = o.Get("bits").As<Napi::Number>().Int32Value();
    opt.group_size = o.Get("groupSize").As<Napi::Number>().Int64Value();
    if (o.Get("grid").IsNumber()) opt.grid = o.Get("grid").As<Napi::Number>().Int32Value();
    if (o.Get("clipTokens").IsNumber()) opt.clip_tokens = o.Get("clipTokens").As<Napi::Number>().Int64Value();
    if (o.Get("weights").IsBoolean()) opt.weights = o.Get("weights").As<Napi::Boolean>().Value();
    auto cancel = cancel_check(o.Get("cancel"));
    auto r = std::make_shared<cuda::AwqOut>();
    return run_async(info.Env(), [=] { cuda::quant_session_awq(*s, opt, *r, cancel); },
                     [r](Napi::Env env) -> Napi::Value {
                       static const char* names[7] = {"q", "k", "v", "o", "gate", "up", "down"};
                       static const char* groups[4] = {"q,k,v", "o", "gate,up", "down"};
                       Napi::Object lins = Napi::Object::New(env);
                       for (int i = 0; i < 7; ++i) {
                         Napi::Object e = Napi::Object::New(env);
                         e.Set("qweight", copy_out<uint8_t, Napi::Uint8Array>(env, r->q[i]));
                         e.Set("scales", copy_out<float, Napi::Float32Array>(env, r->scales[i]));
                         e.Set("zeros", copy_out<float, Napi::Float32Array>(env, r->zeros[i]));
                         if (!r->w[i].empty()) e.Set("weight", copy_out<float, Napi::Float32Array>(env, r->w[i]));
                         if (!r->bias[i].empty()) e.Set("bias", copy_out<float, Napi::Float32Array>(env, r->bias[i]));
                         lins.Set(names[i], e);
                       }
                       Napi::Array g = Napi::Array::New(env);
                       int n = 0;
                       for (int k : {0, 2, 1, 3}) {  // the order they were searched in (awq.ts's)
                         if (r->best_ratio[k] < 0) continue;
                         Napi::Object e = Napi::Object::New(env);
                         e.Set("label", groups[k]);
                         e.Set("ratio", r->best_ratio[k]);
                         e.Set("loss", r->loss[k]);
                         g.Set(static_cast<uint32_t>(n++), e);
                       }
                       Napi::Object out = Napi::Object::New(env);
                       if (r->nonfinite_at >= 0) {
                         Napi::Object nf = Napi::Object::New(env);
                         nf.Set("index", static_cast<double>(r->nonfinite_at));
                         nf.Set("value", r->nonfinite_value);
                         out.Set("nonFinite", nf);
                         return out;
                       }
                       out.Set("linears", lins);
                       out.Set("inputNorm", copy_out<float, Napi::Float32Array>(env, r->in_norm));
                       out.Set("postAttnNorm", copy_out<float, Napi::Float32Array>(env, r->post_norm));
                       out.Set("groups", g);
                       return out;
                     },
                     {info[1]});
  });
}

Napi::Value GpuQuantInfo(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const cuda::QuantSessionInfo i = cuda::quant_session_info(*unbox(info[0]));
    Napi::Object r = Napi::Object::New(info.Env());
    r.Set("device", i.device);
    r.Set("batchSeqs", static_cast<double>(i.batch_seqs));
    r.Set("peakBytes", static_cast<double>(i.peak_bytes));
    return r;
  });
}

Napi::Value GpuQuantFree(const Napi::CallbackInfo& info) {
  if (info[0].IsExternal()) {
    SessionBox* b = info[0].As<Napi::External<SessionBox>>().Data();
    if (b) b->s.reset();  // freed now, or when the last in-flight step finishes
  }
  return info.Env().Undefined();
}

Napi::Value GpuGptqQuantize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object o = info[2].As<Napi::Object>();
    const int64_t rows = cuda_js::num(o, "rows"), cols = cuda_js::num(o, "cols");
    const cuda::GptqOpts opt = gptq_opts(o, cols);
    const cuda::HostMat W = cuda_js::host_mat(info[0], rows, cols, "weight");
    const float* H = cf32_from_js(info[1], cols * cols, "hessian");
    const int device = device_of(o.Get("device"));
    auto cancel = cancel_check(o.Get("cancel"));
    auto r = std::make_shared<cuda::GptqOut>();
    return run_async(info.Env(), [=] { cuda::gptq_host(device, W, H, opt, *r, cancel); },
                     [r](Napi::Env env) { return gptq_result(env, *r); }, {info[0], info[1], info[2]});
  });
}

Napi::Value GpuBillmQuantize(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object o = info[2].As<Napi::Object>();
    const int64_t rows = cuda_js::num(o, "rows"), cols = cuda_js::num(o, "cols");
    const BillmOptions opt = billm_options_from_js(o);
    const cuda::HostMat W = cuda_js::host_mat(info[0], rows, cols, "weight");
    const float* H = cf32_from_js(info[1], cols * cols, "hessian");
    const int device = device_of(o.Get("device"));
    auto cancel = cancel_check(o.Get("cancel"));
    auto r = std::make_shared<BillmResult>();
    return run_async(info.Env(), [=] { cuda::billm_host(device, W, H, opt, *r, cancel); },
                     [r, opt](Napi::Env env) { return billm_result_js(env, *r, opt.block); }, {info[0], info[1], info[2]});
  });
}

Napi::Value GpuHessianAccumulate(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto Hv = info[0].As<Napi::Float32Array>();
    auto Xv = info[1].As<Napi::Float32Array>();
    const float alpha = info[2].As<Napi::Number>().FloatValue();
    const int device = device_of(info[3]);
    const int64_t n = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(Hv.ElementLength()))));
    if (n * n != static_cast<int64_t>(Hv.ElementLength()) || Xv.ElementLength() % n)
      throw std::invalid_argument("gpuHessianAccumulate: H must be [n,n] and X [T,n]");
    const int64_t T = Xv.ElementLength() / n;
    float* H = Hv.Data();
    const float* X = Xv.Data();
    return run_async(info.Env(), [=] { cuda::hessian_host(device, H, X, T, n, alpha); }, nullptr, {info[0], info[1]});
  });
}

}  // namespace

LOWBIT_EXPORTS {
  exports.Set("gpuQuantCreate", Napi::Function::New(env, GpuQuantCreate));
  exports.Set("gpuQuantLoadLayer", Napi::Function::New(env, GpuQuantLoadLayer));
  exports.Set("gpuQuantHessians", Napi::Function::New(env, GpuQuantHessians));
  exports.Set("gpuQuantGptq", Napi::Function::New(env, GpuQuantGptq));
  exports.Set("gpuQuantBillm", Napi::Function::New(env, GpuQuantBillm));
  exports.Set("gpuQuantPropagate", Napi::Function::New(env, GpuQuantPropagate));
  exports.Set("gpuQuantAbsmaxPropagate", Napi::Function::New(env, GpuQuantAbsmaxPropagate));
  exports.Set("gpuQuantAwq", Napi::Function::New(env, GpuQuantAwq));
  exports.Set("gpuQuantInfo", Napi::Function::New(env, GpuQuantInfo));
  exports.Set("gpuQuantFree", Napi::Function::New(env, GpuQuantFree));
  exports.Set("gpuGptqQuantize", Napi::Function::New(env, GpuGptqQuantize));
  exports.Set("gpuBillmQuantize", Napi::Function::New(env, GpuBillmQuantize));
  exports.Set("gpuHessianAccumulate", Napi::Function::New(env, GpuHessianAccumulate));
}

}  // namespace lowbit
