// Qwen3-MoE's sparse MLP (transformers' Qwen3MoeSparseMoeBlock): router logits x·Rᵀ, softmax in fp32,
// top-k, optional renormalization of the k weights; then expert by expert (ascending, as transformers
// adds them) the tokens routed there are gathered, run through the expert as one GEMM batch, weighted and
// added back — so each token's sum has the same order of float additions as the reference.
#include "moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>

#include "async.h"
#include "gemm.h"
#include "ops.h"
#include "registry.h"
#include "threads.h"

namespace lowbit {

MoeW parse_moe(const Napi::Object& o, const Cfg& c) {
  if (c.n_experts <= 0) throw std::invalid_argument("a layer with moe weights needs cfg.moe (numExperts, topK, expertIntermediateSize)");
  MoeW m;
  m.router = mat_from_js(o.Get("router"), c.n_experts, c.hidden, "mlp.gate (router)");
  if (!o.Get("experts").IsArray()) throw std::invalid_argument("moe.experts must be an array");
  Napi::Array ex = o.Get("experts").As<Napi::Array>();
  if (static_cast<int64_t>(ex.Length()) != c.n_experts)
    throw std::invalid_argument("moe.experts has " + std::to_string(ex.Length()) + " experts, cfg.moe.numExperts is " + std::to_string(c.n_experts));
  m.experts.resize(c.n_experts);
  for (int64_t e = 0; e < c.n_experts; ++e) {
    Napi::Object x = ex.Get(static_cast<uint32_t>(e)).As<Napi::Object>();
    m.experts[e].gate = parse_linear(x.Get("gate").As<Napi::Object>(), "experts.gate_proj", c.moe_inter, c.hidden);
    m.experts[e].up = parse_linear(x.Get("up").As<Napi::Object>(), "experts.up_proj", c.moe_inter, c.hidden);
    m.experts[e].down = parse_linear(x.Get("down").As<Napi::Object>(), "experts.down_proj", c.hidden, c.moe_inter);
  }
  return m;
}

namespace {

// idx/wt [T, k]: each token's experts by descending probability and their weights.
void route(const MoeW& m, const Cfg& c, const float* x, int64_t T, int32_t* idx, float* wt) {
  const int64_t E = c.n_experts, k = c.topk;
  std::vector<float> logits(T * E);
  linear(T, E, c.hidden, x, m.router, logits.data());
  parallel_for(static_cast<size_t>(T), [&](size_t b, size_t e, int) {
    std::vector<float> p(E);
    std::vector<int32_t> order(E);
    for (size_t t = b; t < e; ++t) {
      const float* l = logits.data() + t * E;
      const float mx = *std::max_element(l, l + E);
      float sum = 0.f;
      for (int64_t j = 0; j < E; ++j) sum += (p[j] = std::exp(l[j] - mx));
      for (int64_t j = 0; j < E; ++j) p[j] /= sum;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int32_t a, int32_t b2) { return p[a] > p[b2] || (p[a] == p[b2] && a < b2); });
      float s = 0.f;
      for (int64_t i = 0; i < k; ++i) s += p[order[i]];
      for (int64_t i = 0; i < k; ++i) {
        idx[t * k + i] = order[i];
        wt[t * k + i] = c.norm_topk ? p[order[i]] / s : p[order[i]];
      }
    }
  }, 16);
}

// Tokens grouped by expert: rows [start[e], start[e+1]) of tok/w are expert e's, tokens ascending.
struct Groups {
  std::vector<int64_t> start, tok;
  std::vector<float> w;
};

Groups group_by_expert(const int32_t* idx, const float* wt, int64_t T, int64_t k, int64_t E) {
  Groups g;
  g.start.assign(E + 1, 0);
  for (int64_t i = 0; i < T * k; ++i) g.start[idx[i] + 1]++;
  for (int64_t e = 0; e < E; ++e) g.start[e + 1] += g.start[e];
  std::vector<int64_t> cur(g.start.begin(), g.start.end() - 1);
  g.tok.resize(T * k);
  g.w.resize(T * k);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = 0; s < k; ++s) {
      const int64_t pos = cur[idx[t * k + s]]++;
      g.tok[pos] = t;
      g.w[pos] = wt[t * k + s];
    }
  return g;
}

bool all_int8_inputs(const MoeW& m, int abits) {
  if (abits != 8) return false;
  for (const ExpertW& e : m.experts)
    if (!native_int8(abits, {&e.gate, &e.up})) return false;
  return true;
}

void gather_rows(const float* x, const int64_t* rows, int64_t n, int64_t cols, float* out) {
  parallel_for(static_cast<size_t>(n), [&](size_t b, size_t e, int) {
    for (size_t i = b; i < e; ++i) std::memcpy(out + i * cols, x + rows[i] * cols, sizeof(float) * cols);
  }, 64);
}

// silu(x·gateᵀ) ⊙ (x·upᵀ) for n rows: the expert's down_proj input.
void expert_hidden(const ExpertW& ex, const float* x, int64_t n, int64_t inter, float* g, float* u) {
  QAct qa;
  apply_linear(ex.gate, x, n, g, &qa);
  apply_linear(ex.up, x, n, u, &qa);
  silu_mul(g, u, n * inter);
}

}  // namespace

void moe_block(const MoeW& m, const Cfg& c, const float* x_in, float* out, int64_t T, int abits, Buf* capture_in) {
  const int64_t E = c.n_experts, k = c.topk, H = c.hidden, I = c.moe_inter;
  std::vector<int32_t> idx(T * k);
  std::vector<float> wt(T * k);
  // The router reads the unquantized input: it stays in full precision.
  route(m, c, x_in, T, idx.data(), wt.data());
  const bool nq = !capture_in && all_int8_inputs(m, abits);
  Buf xq;
  const float* x = linear_input(x_in, T, H, nq ? 0 : abits, xq, capture_in);
  const Groups gr = group_by_expert(idx.data(), wt.data(), T, k, E);
  int64_t most = 0;
  for (int64_t e = 0; e < E; ++e) most = std::max(most, gr.start[e + 1] - gr.start[e]);
  std::fill(out, out + T * H, 0.f);
  if (!most) return;
  Buf xe(most * H), g(most * I), u(most * I), d(most * H);
  for (int64_t e = 0; e < E; ++e) {
    const int64_t first = gr.start[e], n = gr.start[e + 1] - first;
    if (!n) continue;
    const ExpertW& ex = m.experts[e];
    gather_rows(x, gr.tok.data() + first, n, H, xe.p);
    expert_hidden(ex, xe.p, n, I, g.p, u.p);
    if (abits > 0 && !native_int8(abits, {&ex.down})) fake_quant_rows_sym(g.p, n, I, abits);
    apply_linear(ex.down, g.p, n, d.p);
    // Tokens within one expert are distinct: the rows can be added in parallel.
    parallel_for(static_cast<size_t>(n), [&](size_t b, size_t end, int) {
      for (size_t i = b; i < end; ++i) {
        const float wi = gr.w[first + i];
        float* o = out + gr.tok[first + i] * H;
        const float* di = d.p + i * H;
        for (int64_t h = 0; h < H; ++h) o[h] += di[h] * wi;
      }
    }, 64);
  }
}

namespace {

struct MoeCall {
  Cfg cfg;
  MoeW moe;
  const float* x = nullptr;
  int64_t T = 0;
};

std::shared_ptr<MoeCall> parse_call(const Napi::CallbackInfo& info) {
  auto call = std::make_shared<MoeCall>();
  Napi::Object o = info[1].As<Napi::Object>();
  call->cfg = parse_cfg(o.Get("cfg").As<Napi::Object>());
  Napi::Value layer = o.Get("layer");
  if (!layer.IsObject() || !layer.As<Napi::Object>().Get("moe").IsObject()) throw std::invalid_argument("layer is not a sparse (MoE) layer");
  call->moe = parse_moe(layer.As<Napi::Object>().Get("moe").As<Napi::Object>(), call->cfg);
  call->x = cf32_from_js(info[0], -1, "x");
  const int64_t n = info[0].As<Napi::Float32Array>().ElementLength();
  call->T = n / call->cfg.hidden;
  if (call->T * call->cfg.hidden != n) throw std::invalid_argument("x must be [tokens, hidden]");
  return call;
}

// moeRoute(x [T, hidden], {cfg, layer}) → Promise<{experts: Int32Array [T, k], weights: Float32Array [T, k]}>
Napi::Value MoeRoute(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto call = parse_call(info);
    const int64_t n = call->T * call->cfg.topk;
    auto idx = std::make_shared<std::vector<int32_t>>(n);
    auto wt = std::make_shared<std::vector<float>>(n);
    return run_async(info.Env(), [call, idx, wt] { route(call->moe, call->cfg, call->x, call->T, idx->data(), wt->data()); },
                     [idx, wt, n](Napi::Env env) -> Napi::Value {
                       Napi::Object r = Napi::Object::New(env);
                       auto a = Napi::Int32Array::New(env, n);
                       auto b = Napi::Float32Array::New(env, n);
                       std::memcpy(a.Data(), idx->data(), n * 4);
                       std::memcpy(b.Data(), wt->data(), n * 4);
                       r.Set("experts", a);
                       r.Set("weights", b);
                       return r;
                     },
                     {info[0], info[1]});
  });
}

// moeExpertHidden(x [n, hidden], {cfg, layer, expert}) → Promise<Float32Array [n, expertIntermediate]>:
// the input of expert e's down_proj for these rows (calibration statistics; no activation quantization).
Napi::Value MoeExpertHidden(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto call = parse_call(info);
    const int64_t e = num(info[1].As<Napi::Object>(), "expert");
    if (e < 0 || e >= call->cfg.n_experts) throw std::invalid_argument("expert " + std::to_string(e) + " out of range");
    const int64_t n = call->T * call->cfg.moe_inter;
    auto g = std::make_shared<Buf>(n);
    return run_async(info.Env(), [call, g, e] {
      Buf u(g->n);
      expert_hidden(call->moe.experts[e], call->x, call->T, call->cfg.moe_inter, g->p, u.p);
    }, [g](Napi::Env env) { return g->to_js(env); }, {info[0], info[1]});
  });
}

}  // namespace

LOWBIT_EXPORTS {
  exports.Set("moeRoute", Napi::Function::New(env, MoeRoute));
  exports.Set("moeExpertHidden", Napi::Function::New(env, MoeExpertHidden));
}

}  // namespace lowbit
