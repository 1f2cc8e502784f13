// The repack of a CPU PackedView into the device layout (qlayout.h), and qlayoutPack(packedWeight) → {records,
// ntiles, nkb, nsub, oscale, perm?} and qgemmColumnOrder() → Int32Array [st·16 + kap] = column (q_wgmma_col) for
// tests of the layout on machines without a GPU. In every build: the CUDA binding (qmatmul_binding.cpp) uses
// device_layout to upload.
#include "cuda/qlayout_pack.h"

#include <cmath>
#include <cstring>

#include "cpu/async.h"
#include "cpu/half.h"
#include "cpu/registry.h"
#include "cpu/threads.h"
#include "cuda/qlayout.h"

namespace lowbit {
namespace cuda {

// The device layout of a packed weight (see qlayout.h), built from the CPU layout's definition (packed_q).
QLayout device_layout(const PackedView& p) {
  const bool per_row = p.group >= p.cols;
  if (!per_row && (p.group % 32 != 0 || (p.group < 128 && 128 % p.group != 0) || (p.group > 128 && p.group % 128 != 0)))
    throw std::invalid_argument("the CUDA packed kernels take group sizes 32, 64 or multiples of 128 (or one group per row), got " +
                                std::to_string(p.group));
  QLayout l;
  l.bits = p.bits;
  l.rows = p.rows;
  l.cols = p.cols;
  const int sub = per_row || p.group >= 128 ? 128 : static_cast<int>(p.group);
  l.nsub = 128 / sub;
  l.nkb = (p.cols + 127) / 128;
  l.ntiles = ((p.rows + 15) / 16 + 1) / 2 * 2;  // even: a warp may take two tiles
  float maxs = 0;
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t gi = 0; gi < p.ngroups; ++gi) maxs = std::fmax(maxs, std::fabs(p.scales[packed_sz(p, r, gi)]));
  int e = 0;
  if (maxs > 0) std::frexp(32768.f / maxs, &e);  // 32768/maxs = f·2^e, f in [0.5, 1): P = 2^(e−1) ≤ 32768/maxs
  const int pe = std::max(-100, std::min(100, maxs > 0 ? e - 1 : 0));
  const float P = std::ldexp(1.f, pe);
  l.oscale = std::ldexp(1.f, -pe);
  const int R = q_record_bytes(p.bits, static_cast<int>(l.nsub)), words = q_words(p.bits);
  l.records.assign(static_cast<size_t>(l.ntiles) * l.nkb * R, 0);
  const int width = p.bits == 3 ? 2 : p.bits;
  parallel_for(static_cast<size_t>(l.ntiles), [&](size_t t0, size_t t1, int) {
    for (int64_t tile = t0; tile < static_cast<int64_t>(t1); ++tile)
      for (int64_t kb = 0; kb < l.nkb; ++kb) {
        uint8_t* rec = l.records.data() + q_record_offset(tile, kb, l.ntiles, p.bits, static_cast<int>(l.nsub));
        uint32_t* w = reinterpret_cast<uint32_t*>(rec);
        uint16_t* sz = reinterpret_cast<uint16_t*>(rec + 128 * words);
        for (int i = 0; i < 16; ++i) {
          const int64_t r = tile * 16 + i;
          if (r >= p.rows) break;
          for (int c = 0; c < 128; ++c) {
            const int64_t j = kb * 128 + c;
            if (j >= p.cols) break;
            const uint32_t q = static_cast<uint32_t>(packed_q(p, r, j));
            const QSlot s = q_slot(i, c);
            const QBits b = q_bitpos(p.bits, s.st, s.j, s.e);
            w[q_word_index(p.bits, b.word, s.lane)] |= (q & ((1u << width) - 1)) << b.bit;
            if (p.bits == 3) w[q_word_index(p.bits, b.hi_word, s.lane)] |= ((q >> 2) & 1u) << b.hi_bit;
          }
          for (int js = 0; js < l.nsub; ++js) {
            const int64_t gi = per_row ? 0 : (kb * 128 + js * sub) / p.group;
            if (gi >= p.ngroups) continue;  // padding columns past the last group
            const int64_t at = packed_sz(p, r, gi);
            uint16_t* o = sz + ((js * 8 + i % 8) * 2 + i / 8) * 2;
            o[0] = f32_to_f16(p.scales[at] * P);
            o[1] = f32_to_f16(p.zeros[at]);
          }
        }
      }
  });
  if (p.perm) l.perm.assign(p.perm, p.perm + p.cols);
  return l;
}

}  // namespace cuda

namespace {

Napi::Value QlayoutPack(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const cuda::QLayout l = cuda::device_layout(packed_from_js(info[0]));
    Napi::Env env = info.Env();
    Napi::Object r = Napi::Object::New(env);
    auto rec = Napi::Uint8Array::New(env, l.records.size());
    std::memcpy(rec.Data(), l.records.data(), l.records.size());
    r.Set("records", rec);
    r.Set("ntiles", static_cast<double>(l.ntiles));
    r.Set("nkb", static_cast<double>(l.nkb));
    r.Set("nsub", static_cast<double>(l.nsub));
    r.Set("oscale", l.oscale);
    if (!l.perm.empty()) {
      auto pm = Napi::Int32Array::New(env, l.perm.size());
      std::memcpy(pm.Data(), l.perm.data(), l.perm.size() * 4);
      r.Set("perm", pm);
    }
    return r;
  });
}

Napi::Value QgemmColumnOrder(const Napi::CallbackInfo& info) {
  auto r = Napi::Int32Array::New(info.Env(), 128);
  for (int st = 0; st < 8; ++st)
    for (int kap = 0; kap < 16; ++kap) r[st * 16 + kap] = cuda::q_wgmma_col(st, kap);
  return r;
}

}  // namespace

LOWBIT_EXPORTS {
  exports.Set("qlayoutPack", Napi::Function::New(env, QlayoutPack));
  exports.Set("qgemmColumnOrder", Napi::Function::New(env, QgemmColumnOrder));
}

}  // namespace lowbit
