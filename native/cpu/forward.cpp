// The decoder-layer forward (Llama/Qwen2/Qwen3; a Qwen3-MoE sparse MLP runs in moe.cpp) as async bindings.
// TypeScript drives the model a layer at a time, which is what layer-by-layer calibration needs; each call
// runs off the event loop.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <initializer_list>
#include <string>
#include <vector>

#include "async.h"
#include "attention.h"
#include "gemm.h"
#include "layer.h"
#include "moe.h"
#include "nll.h"
#include "ops.h"
#include "packed.h"
#include "registry.h"
#include "threads.h"
#include "vexp.h"

namespace lowbit {
namespace {

struct LayerW {
  const float *in_norm = nullptr, *post_norm = nullptr, *q_norm = nullptr, *k_norm = nullptr;
  LinearW q, k, v, o, gate, up, down;
  std::shared_ptr<const MoeW> moe;  // a sparse layer: its MLP instead of gate/up/down
};

}  // namespace

const float* linear_input(const float* x, int64_t T, int64_t n, int abits, Buf& scratch, Buf* capture) {
  if (abits > 0) {
    scratch = Buf(T * n);
    std::memcpy(scratch.p, x, sizeof(float) * T * n);
    fake_quant_rows_sym(scratch.p, T, n, abits);
    x = scratch.p;
  }
  if (capture) {
    *capture = Buf(T * n);
    std::memcpy(capture->p, x, sizeof(float) * T * n);
  }
  return x;
}

int64_t num(const Napi::Object& o, const char* key) {
  Napi::Value v = o.Get(key);
  if (!v.IsNumber()) throw std::invalid_argument(std::string("missing numeric option '") + key + "'");
  return v.As<Napi::Number>().Int64Value();
}

Cfg parse_cfg(const Napi::Object& c) {
  Cfg g;
  g.hidden = num(c, "hiddenSize");
  g.inter = num(c, "intermediateSize");
  g.nh = num(c, "numHeads");
  g.nkv = num(c, "numKvHeads");
  g.hd = num(c, "headDim");
  g.eps = c.Get("rmsNormEps").As<Napi::Number>().FloatValue();
  g.theta = c.Get("ropeTheta").As<Napi::Number>().FloatValue();
  if (g.nkv <= 0 || g.nh % g.nkv) throw std::invalid_argument("numHeads must be a multiple of numKvHeads");
  Napi::Value moe = c.Get("moe");
  if (moe.IsObject()) {
    Napi::Object m = moe.As<Napi::Object>();
    g.n_experts = num(m, "numExperts");
    g.topk = num(m, "topK");
    g.moe_inter = num(m, "expertIntermediateSize");
    g.norm_topk = m.Get("normTopkProb").ToBoolean();
    if (g.topk < 1 || g.topk > g.n_experts) throw std::invalid_argument("moe.topK must be in [1, numExperts]");
  }
  return g;
}

LinearW parse_linear(const Napi::Object& lin, const char* name, int64_t out, int64_t in) {
  LinearW l;
  l.out = out;
  l.in = in;
  Napi::Value pk = lin.Get("packed");
  if (pk.IsObject()) {
    std::string kind = pk.As<Napi::Object>().Get("kind").ToString().Utf8Value();
    if (kind == "int8") {
      l.kind = LinearW::Kind::Int8;
      l.int8 = int8_from_js(pk);
      if (l.int8.rows != out || l.int8.cols != in) throw std::invalid_argument(std::string(name) + ": packed int8 weight shape mismatch");
    } else if (kind == "binary") {
      l.kind = LinearW::Kind::Binary;
      l.binary = binary_from_js(pk);
      if (l.binary.rows != out || l.binary.cols != in) throw std::invalid_argument(std::string(name) + ": binary weight shape mismatch");
    } else {
      l.kind = LinearW::Kind::Packed;
      l.packed = packed_from_js(pk);
      if (l.packed.rows != out || l.packed.cols != in) throw std::invalid_argument(std::string(name) + ": packed weight shape mismatch");
    }
  } else {
    l.w = mat_from_js(lin.Get("weight"), out, in, name);
  }
  Napi::Value b = lin.Get("bias");
  if (!b.IsUndefined() && !b.IsNull()) l.bias = cf32_from_js(b, out, name);
  return l;
}

void apply_linear(const LinearW& l, const float* x, int64_t T, float* y, QAct* qa) {
  if (l.kind == LinearW::Kind::Int8) {
    // W8A8: x quantized to int8 for real (same integers and scales as fake_quant_rows_sym with 8 bits),
    // exact int32 products, y = sx·sw·Σ.
    QAct local;
    if (!qa) qa = &local;
    if (qa->kpad != l.int8.kpad) {
      qa->kpad = l.int8.kpad;
      qa->u.resize(T * qa->kpad);
      qa->s.resize(T);
      quantize_rows_u8(x, T, l.in, qa->kpad, qa->u.data(), qa->s.data());
    }
    int8_matmul(l.int8, qa->u.data(), qa->s.data(), T, y);
  } else if (l.kind == LinearW::Kind::Packed) {
    packed_matmul(l.packed, x, T, y);
  } else if (l.kind == LinearW::Kind::Binary) {
    binary_matmul(l.binary, x, T, y);
  } else {
    linear(T, l.out, l.in, x, l.w, y);
  }
  if (l.bias)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < l.out; ++i) y[t * l.out + i] += l.bias[i];
}

// True when every linear reading an input has int8 weights and the activations are 8-bit: those
// linears then quantize the input themselves (real int8) instead of reading a fake-quantized copy.
bool native_int8(int abits, std::initializer_list<const LinearW*> ls) {
  if (abits != 8) return false;
  for (const LinearW* l : ls)
    if (l->kind != LinearW::Kind::Int8) return false;
  return true;
}

namespace {

LayerW parse_layer(const Napi::Object& L, const Cfg& c) {
  LayerW w;
  w.in_norm = cf32_from_js(L.Get("inputNorm"), c.hidden, "inputNorm");
  w.post_norm = cf32_from_js(L.Get("postAttnNorm"), c.hidden, "postAttnNorm");
  if (L.Has("qNorm") && L.Get("qNorm").IsTypedArray()) w.q_norm = cf32_from_js(L.Get("qNorm"), c.hd, "qNorm");
  if (L.Has("kNorm") && L.Get("kNorm").IsTypedArray()) w.k_norm = cf32_from_js(L.Get("kNorm"), c.hd, "kNorm");
  Napi::Object lins = L.Get("linears").As<Napi::Object>();
  w.q = parse_linear(lins.Get("q").As<Napi::Object>(), "q_proj", c.nh * c.hd, c.hidden);
  w.k = parse_linear(lins.Get("k").As<Napi::Object>(), "k_proj", c.nkv * c.hd, c.hidden);
  w.v = parse_linear(lins.Get("v").As<Napi::Object>(), "v_proj", c.nkv * c.hd, c.hidden);
  w.o = parse_linear(lins.Get("o").As<Napi::Object>(), "o_proj", c.hidden, c.nh * c.hd);
  if (L.Get("moe").IsObject()) {
    w.moe = std::make_shared<const MoeW>(parse_moe(L.Get("moe").As<Napi::Object>(), c));
    return w;
  }
  w.gate = parse_linear(lins.Get("gate").As<Napi::Object>(), "gate_proj", c.inter, c.hidden);
  w.up = parse_linear(lins.Get("up").As<Napi::Object>(), "up_proj", c.inter, c.hidden);
  w.down = parse_linear(lins.Get("down").As<Napi::Object>(), "down_proj", c.hidden, c.inter);
  return w;
}

// Where a capturing forward may stop: calibration that needs only the inputs of the first linears of a layer
// (GPTQ's true-sequential steps) need not run the rest of it.
enum class Stop { None, AttnIn, OIn, MlpIn, DownIn };

struct Captures {
  bool on = false;
  Stop stop = Stop::None;  // return right after capturing this input (h then holds no valid output)
  Buf attn_in, o_in, mlp_in, down_in;
};


// x: the attention block's (normed) input [T, hidden]; out: o_proj output [T, hidden].
void attn_block(const LayerW& w, const Cfg& c, const float* x_in, float* out, int64_t T, int64_t S, int abits,
                Captures* cap) {
  Buf xq;
  // W8A8 with int8 weights: the linears quantize their input to int8 themselves (native_int8).
  const bool nq = !(cap && cap->on) && native_int8(abits, {&w.q, &w.k, &w.v});
  const float* x = linear_input(x_in, T, c.hidden, nq ? 0 : abits, xq, cap && cap->on ? &cap->attn_in : nullptr);
  QAct qa;
  Buf q(T * c.nh * c.hd), k(T * c.nkv * c.hd), v(T * c.nkv * c.hd);
  apply_linear(w.q, x, T, q.p, &qa);
  apply_linear(w.k, x, T, k.p, &qa);
  apply_linear(w.v, x, T, v.p, &qa);
  if (w.q_norm) rmsnorm(q.p, w.q_norm, q.p, T * c.nh, c.hd, c.eps, c.hd, c.hd);
  if (w.k_norm) rmsnorm(k.p, w.k_norm, k.p, T * c.nkv, c.hd, c.eps, c.hd, c.hd);
  rope(q.p, T, S, c.nh, c.hd, c.theta);
  rope(k.p, T, S, c.nkv, c.hd, c.theta);
  Buf att(T * c.nh * c.hd);
  causal_attention(q.p, k.p, v.p, att.p, T, S, c.nh, c.nkv, c.hd);
  if (abits > 0 && !native_int8(abits, {&w.o})) fake_quant_rows_sym(att.p, T, c.nh * c.hd, abits);
  if (!(cap && cap->stop == Stop::OIn)) apply_linear(w.o, att.p, T, out);
  if (cap && cap->on) cap->o_in = std::move(att);
}

// x: the MLP's (normed) input [T, hidden]; out: down_proj output [T, hidden].
void mlp_block(const LayerW& w, const Cfg& c, const float* x_in, float* out, int64_t T, int abits, Captures* cap) {
  Buf xq;
  // W8A8 with int8 weights: the linears quantize their input to int8 themselves (native_int8).
  const bool nq = !(cap && cap->on) && native_int8(abits, {&w.gate, &w.up});
  const float* x = linear_input(x_in, T, c.hidden, nq ? 0 : abits, xq, cap && cap->on ? &cap->mlp_in : nullptr);
  QAct qa;
  Buf g(T * c.inter), u(T * c.inter);
  apply_linear(w.gate, x, T, g.p, &qa);
  apply_linear(w.up, x, T, u.p, &qa);
  silu_mul(g.p, u.p, T * c.inter);
  if (abits > 0 && !native_int8(abits, {&w.down})) fake_quant_rows_sym(g.p, T, c.inter, abits);
  if (!(cap && cap->stop == Stop::DownIn)) apply_linear(w.down, g.p, T, out);
  if (cap && cap->on) cap->down_in = std::move(g);
}

// The layer's MLP: dense, or sparse (MoE), whose captures are the input only (each expert's down input
// depends on its routing, so calibration asks for it per expert).
void ffn_block(const LayerW& w, const Cfg& c, const float* x, float* out, int64_t T, int abits, Captures* cap) {
  if (w.moe) moe_block(*w.moe, c, x, out, T, abits, cap && cap->on ? &cap->mlp_in : nullptr);
  else mlp_block(w, c, x, out, T, abits, cap);
}

struct Common {
  Cfg cfg;
  LayerW layer;
  int64_t T, S;
  int abits = 0;
  std::vector<Napi::Value> keep;
};

Common parse_common(const Napi::CallbackInfo& info, const Napi::Value& xv, int64_t* T_out) {
  Napi::Object o = info[1].As<Napi::Object>();
  Common cm;
  cm.cfg = parse_cfg(o.Get("cfg").As<Napi::Object>());
  cm.layer = parse_layer(o.Get("layer").As<Napi::Object>(), cm.cfg);
  cm.S = num(o, "seqLen");
  auto x = xv.As<Napi::Float32Array>();
  cm.T = static_cast<int64_t>(x.ElementLength()) / cm.cfg.hidden;
  if (cm.T * cm.cfg.hidden != static_cast<int64_t>(x.ElementLength()) || cm.T % cm.S)
    throw std::invalid_argument("activations must be [nseq*seqLen, hidden]");
  if (o.Has("actBits") && o.Get("actBits").IsNumber()) cm.abits = o.Get("actBits").As<Napi::Number>().Int32Value();
  if (cm.abits < 0 || cm.abits == 1 || cm.abits > 16) throw std::invalid_argument("actBits must be 2..16 (or 0 for none)");
  cm.keep = {info[0], info[1]};
  if (T_out) *T_out = cm.T;
  return cm;
}

Stop parse_stop(const Napi::Value& v) {
  const std::string s = v.As<Napi::String>();
  if (s == "attnIn") return Stop::AttnIn;
  if (s == "oIn") return Stop::OIn;
  if (s == "mlpIn") return Stop::MlpIn;
  if (s == "downIn") return Stop::DownIn;
  throw std::invalid_argument("capture must be a boolean or one of attnIn, oIn, mlpIn, downIn (got '" + s + "')");
}

// layerForward(h, {cfg, layer, seqLen, actBits?, capture?, part?}) → Promise<captures | undefined>; h updated in place.
// capture: true captures every linear's input; the name of one ('attnIn' | 'oIn' | 'mlpIn' | 'downIn') captures up
// to that input and stops there, leaving h partly updated (callers pass a copy). part: 'attn' runs the attention
// half only (h becomes the residual stream after attention), 'mlp' the MLP half on such a stream; default both.
Napi::Value LayerForward(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    float* h = f32_from_js(info[0], -1, "h");
    auto cm = std::make_shared<Common>(parse_common(info, info[0], nullptr));
    auto cap = std::make_shared<Captures>();
    Napi::Object o = info[1].As<Napi::Object>();
    if (o.Has("capture") && o.Get("capture").IsString()) {
      cap->on = true;
      cap->stop = parse_stop(o.Get("capture"));
      if (cap->stop == Stop::DownIn && cm->layer.moe) throw std::invalid_argument("capture 'downIn': a sparse layer has no dense down_proj input");
    } else {
      cap->on = o.Has("capture") && o.Get("capture").ToBoolean();
    }
    bool attn = true, mlp = true;
    if (o.Has("part") && !o.Get("part").IsUndefined()) {
      const std::string part = o.Get("part").As<Napi::String>();
      if (part == "attn") mlp = false;
      else if (part == "mlp") attn = false;
      else if (part != "all") throw std::invalid_argument("part must be attn, mlp or all (got '" + part + "')");
    }
    if ((!attn && (cap->stop == Stop::AttnIn || cap->stop == Stop::OIn)) || (!mlp && (cap->stop == Stop::MlpIn || cap->stop == Stop::DownIn)))
      throw std::invalid_argument("capture: that input is not in the part of the layer run");
    return run_async(info.Env(), [h, cm, cap, attn, mlp] {
      const Cfg& c = cm->cfg;
      int64_t T = cm->T, n = T * c.hidden;
      Buf xn(n), y(n), xq;
      if (attn) {
        rmsnorm(h, cm->layer.in_norm, xn.p, T, c.hidden, c.eps, c.hidden, c.hidden);
        if (cap->stop == Stop::AttnIn) {  // what attn_block's capture holds
          linear_input(xn.p, T, c.hidden, cm->abits, xq, &cap->attn_in);
          return;
        }
        attn_block(cm->layer, c, xn.p, y.p, T, cm->S, cm->abits, cap.get());
        if (cap->stop == Stop::OIn) return;
        for (int64_t i = 0; i < n; ++i) h[i] += y.p[i];
      }
      if (!mlp) return;
      rmsnorm(h, cm->layer.post_norm, xn.p, T, c.hidden, c.eps, c.hidden, c.hidden);
      if (cap->stop == Stop::MlpIn) {  // what ffn_block's capture holds, dense or sparse
        linear_input(xn.p, T, c.hidden, cm->abits, xq, &cap->mlp_in);
        return;
      }
      ffn_block(cm->layer, c, xn.p, y.p, T, cm->abits, cap.get());
      if (cap->stop == Stop::DownIn) return;
      for (int64_t i = 0; i < n; ++i) h[i] += y.p[i];
    }, [cap](Napi::Env env) -> Napi::Value {
      if (!cap->on) return env.Undefined();
      Napi::Object r = Napi::Object::New(env);
      if (cap->attn_in.p) r.Set("attnIn", cap->attn_in.to_js(env));
      if (cap->o_in.p) r.Set("oIn", cap->o_in.to_js(env));
      if (cap->mlp_in.p) r.Set("mlpIn", cap->mlp_in.to_js(env));
      if (cap->down_in.p) r.Set("downIn", cap->down_in.to_js(env));
      return r;
    }, cm->keep);
  });
}

// attnBlock(xNormed, opts) / mlpBlock(xNormed, opts) → Promise<Float32Array> (the block's output, no residual)
template <bool Attn>
Napi::Value Block(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const float* x = cf32_from_js(info[0], -1, "x");
    auto cm = std::make_shared<Common>(parse_common(info, info[0], nullptr));
    auto out = std::make_shared<Buf>(cm->T * cm->cfg.hidden);
    return run_async(info.Env(), [x, cm, out] {
      if (Attn) attn_block(cm->layer, cm->cfg, x, out->p, cm->T, cm->S, cm->abits, nullptr);
      else ffn_block(cm->layer, cm->cfg, x, out->p, cm->T, cm->abits, nullptr);
    }, [out](Napi::Env env) { return out->to_js(env); }, cm->keep);
  });
}

// rmsnorm(x, weight, eps) → Float32Array (synchronous; small)
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto x = info[0].As<Napi::Float32Array>();
    auto w = info[1].As<Napi::Float32Array>();
    float eps = info[2].As<Napi::Number>().FloatValue();
    int64_t n = w.ElementLength(), rows = x.ElementLength() / n;
    Buf y(rows * n);
    rmsnorm(x.Data(), w.Data(), y.p, rows, n, eps, n, n);
    return y.to_js(info.Env());
  });
}

// embed(ids: Int32Array, table: Weight, hidden) → Promise<Float32Array [n, hidden]>
Napi::Value Embed(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto ids = info[0].As<Napi::Int32Array>();
    int64_t hidden = info[2].As<Napi::Number>().Int64Value();
    int64_t vocab = info[3].As<Napi::Number>().Int64Value();
    MatView table = mat_from_js(info[1], vocab, hidden, "embed_tokens");
    int64_t n = ids.ElementLength();
    const int32_t* idv = ids.Data();
    for (int64_t i = 0; i < n; ++i)
      if (idv[i] < 0 || idv[i] >= vocab)
        throw std::invalid_argument("token id " + std::to_string(idv[i]) + " at position " + std::to_string(i) +
                                    " is outside the vocabulary (size " + std::to_string(vocab) + ")");
    auto out = std::make_shared<Buf>(n * hidden);
    const int32_t* idp = ids.Data();
    return run_async(info.Env(), [=] { embed_rows(table, idp, n, hidden, out->p); },
                     [out](Napi::Env env) { return out->to_js(env); }, {info[0], info[1]});
  });
}

// headNll(h, {norm, head, vocab, eps, targets: Int32Array, topk?}) → Promise<{nll: Float64Array, topIdx?, topVal?}>
Napi::Value HeadNll(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto hv = info[0].As<Napi::Float32Array>();
    Napi::Object o = info[1].As<Napi::Object>();
    const float* norm = cf32_from_js(o.Get("norm"), -1, "norm");
    int64_t d = o.Get("norm").As<Napi::Float32Array>().ElementLength();
    int64_t V = num(o, "vocab");
    float eps = o.Get("eps").As<Napi::Number>().FloatValue();
    MatView head = mat_from_js(o.Get("head"), V, d, "lm_head");
    auto tg = o.Get("targets").As<Napi::Int32Array>();
    int64_t T = hv.ElementLength() / d;
    if (static_cast<int64_t>(tg.ElementLength()) != T) throw std::invalid_argument("targets must have one entry per row");
    const int32_t* tgv = tg.Data();
    for (int64_t t = 0; t < T; ++t)
      if (tgv[t] >= V) throw std::invalid_argument("target id " + std::to_string(tgv[t]) + " outside the vocabulary");
    int topk = o.Has("topk") && o.Get("topk").IsNumber() ? o.Get("topk").As<Napi::Number>().Int32Value() : 0;
    auto nll = std::make_shared<std::vector<double>>(T);
    auto tidx = std::make_shared<std::vector<int32_t>>(T * topk);
    auto tval = std::make_shared<std::vector<float>>(T * topk);
    const float* h = hv.Data();
    const int32_t* tp = tg.Data();
    return run_async(info.Env(), [=] {
      Buf xn(T * d);
      rmsnorm(h, norm, xn.p, T, d, eps, d, d);
      lm_head_nll(xn.p, head, T, d, V, tp, nll->data(), topk, tidx->data(), tval->data());
    }, [=](Napi::Env env) -> Napi::Value {
      Napi::Object r = Napi::Object::New(env);
      auto a = Napi::Float64Array::New(env, T);
      std::memcpy(a.Data(), nll->data(), T * sizeof(double));
      r.Set("nll", a);
      if (topk > 0) {
        auto ti = Napi::Int32Array::New(env, T * topk);
        auto tv = Napi::Float32Array::New(env, T * topk);
        std::memcpy(ti.Data(), tidx->data(), T * topk * 4);
        std::memcpy(tv.Data(), tval->data(), T * topk * 4);
        r.Set("topIdx", ti);
        r.Set("topVal", tv);
      }
      return r;
    }, {info[0], info[1]});
  });
}

// ---- KV-cache decode: one token through one layer -------------------------------------------------

// RoPE of one token at position pos: the same fp32 angles (and double cos/sin) as rope() in ops.cpp.
void rope_at(float* x, int64_t pos, int64_t nheads, int64_t hd, float theta) {
  const int64_t half = hd / 2;
  std::vector<float> cs(half), sn(half);
  for (int64_t i = 0; i < half; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(hd);
    const float inv = 1.0f / static_cast<float>(std::pow(static_cast<double>(theta), static_cast<double>(e)));
    const float a = static_cast<float>(pos) * inv;
    cs[i] = static_cast<float>(std::cos(static_cast<double>(a)));
    sn[i] = static_cast<float>(std::sin(static_cast<double>(a)));
  }
  for (int64_t h = 0; h < nheads; ++h) {
    float* v = x + h * hd;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = v[i], x2 = v[i + half];
      v[i] = x1 * cs[i] - x2 * sn[i];
      v[i + half] = x2 * cs[i] + x1 * sn[i];
    }
  }
}

// attn_block for the token at position pos: its k/v go to row pos of the caches ([maxLen, nkv*hd]);
// attention over cache rows [0, pos].
void decode_attn(const LayerW& w, const Cfg& c, const float* x_in, float* out, int64_t pos, float* kc, float* vc, int abits) {
  Buf xq;
  const bool nq = native_int8(abits, {&w.q, &w.k, &w.v});
  const float* x = linear_input(x_in, 1, c.hidden, nq ? 0 : abits, xq, nullptr);
  QAct qa;
  const int64_t ldk = c.nkv * c.hd, n = pos + 1, group = c.nh / c.nkv;
  Buf q(c.nh * c.hd);
  float* k = kc + pos * ldk;
  float* v = vc + pos * ldk;
  apply_linear(w.q, x, 1, q.p, &qa);
  apply_linear(w.k, x, 1, k, &qa);
  apply_linear(w.v, x, 1, v, &qa);
  if (w.q_norm) rmsnorm(q.p, w.q_norm, q.p, c.nh, c.hd, c.eps, c.hd, c.hd);
  if (w.k_norm) rmsnorm(k, w.k_norm, k, c.nkv, c.hd, c.eps, c.hd, c.hd);
  rope_at(q.p, pos, c.nh, c.hd, c.theta);
  rope_at(k, pos, c.nkv, c.hd, c.theta);
  // Per KV head, its `group` query heads as one small GEMM over the cached rows (scores = scale · Q·Kᵀ, softmax,
  // then P·V), as causal_attention does for a block of queries: the cached keys are read once per KV head, and at
  // long contexts the heads split across threads.
  Buf att(c.nh * c.hd);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
  const std::size_t min_heads = n * c.nh * c.hd < (1 << 16) ? c.nkv : 1;  // a few µs of work: not worth a handoff
  parallel_for(c.nkv, [&](std::size_t h0, std::size_t h1, int) {
    std::vector<float> p(group * n);
    for (int64_t kh = h0; kh < static_cast<int64_t>(h1); ++kh) {
      GemmArgs g;
      g.M = group; g.N = n; g.K = c.hd; g.transB = true; g.A = q.p + kh * group * c.hd; g.lda = c.hd;
      g.B.data = kc + kh * c.hd; g.B.dtype = DType::F32; g.B.ld = ldk;
      g.C = p.data(); g.ldc = n; g.alpha = scale; g.parallel = false;
      gemm(g);
      for (int64_t i = 0; i < group; ++i) {
        float* row = p.data() + i * n;
        const float m = max_f32(row, n);
        const float inv = static_cast<float>(1.0 / exp_shift_sum(row, row, n, m));
        for (int64_t j = 0; j < n; ++j) row[j] *= inv;
      }
      GemmArgs o;
      o.M = group; o.N = c.hd; o.K = n; o.A = p.data(); o.lda = n;
      o.B.data = vc + kh * c.hd; o.B.dtype = DType::F32; o.B.ld = ldk;
      o.C = att.p + kh * group * c.hd; o.ldc = c.hd; o.parallel = false;
      gemm(o);
    }
  }, min_heads);
  if (abits > 0 && !native_int8(abits, {&w.o})) fake_quant_rows_sym(att.p, 1, c.nh * c.hd, abits);
  apply_linear(w.o, att.p, 1, out);
}

// One token through one layer in place on h [hidden] (same math as layerForward); its k/v go to row pos of the caches.
void decode_layer(const LayerW& w, const Cfg& c, float* h, int64_t pos, float* kc, float* vc, int abits) {
  Buf xn(c.hidden), y(c.hidden);
  rmsnorm(h, w.in_norm, xn.p, 1, c.hidden, c.eps, c.hidden, c.hidden);
  decode_attn(w, c, xn.p, y.p, pos, kc, vc, abits);
  for (int64_t i = 0; i < c.hidden; ++i) h[i] += y.p[i];
  rmsnorm(h, w.post_norm, xn.p, 1, c.hidden, c.eps, c.hidden, c.hidden);
  ffn_block(w, c, xn.p, y.p, 1, abits, nullptr);
  for (int64_t i = 0; i < c.hidden; ++i) h[i] += y.p[i];
}

struct DecodeOut {
  Buf h;
  double nll = 0;
  int32_t next = 0;
  float top = 0;
};

// decodeStep(token, {cfg, layers, kCaches, vCaches: Float32Array [maxLen, nkv*hd] per layer, pos, embed, finalNorm,
// lmHead, vocab, target?, actBits?}) → Promise<{h: Float32Array [hidden], nll, next}>: the token at position pos
// through the embedding, every layer (its k/v written into row pos of that layer's caches) and the final norm + LM
// head; nll of target (0 without one), next the argmax. One worker job per token: a server's event loop stays free,
// and the step pays one thread handoff instead of one per layer.
Napi::Value DecodeStep(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (!info[0].IsNumber()) throw std::invalid_argument("decodeStep: token must be a number");
    Napi::Object o = info[1].As<Napi::Object>();
    const Cfg c = parse_cfg(o.Get("cfg").As<Napi::Object>());
    const int64_t V = num(o, "vocab"), pos = num(o, "pos"), ldk = c.nkv * c.hd;
    const int64_t token = info[0].As<Napi::Number>().Int64Value();
    if (token < 0 || token >= V)
      throw std::invalid_argument("decodeStep: token id " + std::to_string(token) + " is outside the vocabulary (size " + std::to_string(V) + ")");
    if (!o.Get("layers").IsArray() || !o.Get("kCaches").IsArray() || !o.Get("vCaches").IsArray())
      throw std::invalid_argument("decodeStep: layers, kCaches and vCaches must be arrays");
    Napi::Array layers = o.Get("layers").As<Napi::Array>(), kcs = o.Get("kCaches").As<Napi::Array>(), vcs = o.Get("vCaches").As<Napi::Array>();
    const uint32_t L = layers.Length();
    if (kcs.Length() != L || vcs.Length() != L) throw std::invalid_argument("decodeStep: one kCache and one vCache per layer");
    auto ws = std::make_shared<std::vector<LayerW>>();
    auto kc = std::make_shared<std::vector<float*>>(L), vc = std::make_shared<std::vector<float*>>(L);
    for (uint32_t l = 0; l < L; ++l) {
      auto bad = [l](const std::string& what) { return std::invalid_argument("decodeStep: layer " + std::to_string(l) + ": " + what); };
      ws->push_back(parse_layer(layers.Get(l).As<Napi::Object>(), c));
      if (!kcs.Get(l).IsTypedArray() || !vcs.Get(l).IsTypedArray()) throw bad("kCache and vCache must be Float32Arrays");
      const int64_t cap = static_cast<int64_t>(kcs.Get(l).As<Napi::Float32Array>().ElementLength());
      if (cap % ldk || static_cast<int64_t>(vcs.Get(l).As<Napi::Float32Array>().ElementLength()) != cap)
        throw bad("caches must both be [maxLen, numKvHeads*headDim]");
      if (pos < 0 || pos >= cap / ldk) throw bad("pos " + std::to_string(pos) + " outside the cache");
      (*kc)[l] = f32_from_js(kcs.Get(l), cap, "kCache");
      (*vc)[l] = f32_from_js(vcs.Get(l), cap, "vCache");
    }
    const MatView table = mat_from_js(o.Get("embed"), V, c.hidden, "embed_tokens");
    const MatView head = mat_from_js(o.Get("lmHead"), V, c.hidden, "lm_head");
    const float* norm = cf32_from_js(o.Get("finalNorm"), c.hidden, "norm");
    const int32_t target = o.Has("target") && o.Get("target").IsNumber() ? o.Get("target").As<Napi::Number>().Int32Value() : -1;
    if (target >= V) throw std::invalid_argument("decodeStep: target id " + std::to_string(target) + " outside the vocabulary");
    int abits = 0;
    if (o.Has("actBits") && o.Get("actBits").IsNumber()) abits = o.Get("actBits").As<Napi::Number>().Int32Value();
    if (abits < 0 || abits == 1 || abits > 16) throw std::invalid_argument("actBits must be 2..16 (or 0 for none)");
    auto out = std::make_shared<DecodeOut>();
    out->h = Buf(c.hidden);
    return run_async(info.Env(), [=] {
      const int32_t id = static_cast<int32_t>(token);
      embed_rows(table, &id, 1, c.hidden, out->h.p);
      for (uint32_t l = 0; l < L; ++l) decode_layer((*ws)[l], c, out->h.p, pos, (*kc)[l], (*vc)[l], abits);
      Buf xn(c.hidden);
      rmsnorm(out->h.p, norm, xn.p, 1, c.hidden, c.eps, c.hidden, c.hidden);
      lm_head_nll(xn.p, head, 1, c.hidden, V, &target, &out->nll, 1, &out->next, &out->top);
    }, [out](Napi::Env env) -> Napi::Value {
      Napi::Object r = Napi::Object::New(env);
      r.Set("h", out->h.to_js(env));
      r.Set("nll", out->nll);
      r.Set("next", out->next);
      return r;
    }, {info[1]});
  });
}

}  // namespace

LOWBIT_EXPORTS {
  exports.Set("layerForward", Napi::Function::New(env, LayerForward));
  exports.Set("attnBlock", Napi::Function::New(env, Block<true>));
  exports.Set("mlpBlock", Napi::Function::New(env, Block<false>));
  exports.Set("rmsnorm", Napi::Function::New(env, RmsNorm));
  exports.Set("embed", Napi::Function::New(env, Embed));
  exports.Set("headNll", Napi::Function::New(env, HeadNll));
  exports.Set("decodeStep", Napi::Function::New(env, DecodeStep));
}

}  // namespace lowbit
