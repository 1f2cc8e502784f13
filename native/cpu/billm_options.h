// BiLLM's options and result, shared by the CPU quantizer (billm.cpp) and the GPU one (native/cuda/billm.cu): one
// struct, one parser of the JS options object and one builder of the JS result, so both paths take, reject and
// return the same things. Napi-free declarations (the CUDA host header includes this); defined in billm.cpp.
#pragma once
#include <cstdint>
#include <vector>

namespace Napi {
class Env;
class Object;
class Value;
}  // namespace Napi

namespace lowbit {

struct BillmOptions {
  int64_t block = 128;
  double damp = 0.01;
  bool saliency_search = true;  // search the salient-column count per block; off: `fixed_salient` columns
  int64_t fixed_salient = 0;
  int64_t max_salient = 50;     // the reference's up_lim (counts searched: 1 .. up_lim-1)
  bool hessian_metric = true;   // false: the reference's "magnitude" metric (s_j = Σ|W_rj|)
  bool search_on_saliency = false;
  bool feedback = true;         // false: the reference's disable_gptq path (plain blockwise binarization)
  bool exact_feedback = false;
  bool centered = true;
};

// Scales per row and block, in this order (docs/formats.md, lowbit "binary" layout).
enum : int { kBillmA1 = 0, kBillmM1, kBillmA2, kBillmM2, kBillmAc, kBillmMc, kBillmAs, kBillmMs, kBillmScales };

struct BillmResult {
  std::vector<float> w;                // [rows, cols] dequantized
  std::vector<uint8_t> salient_bits;   // [ceil(cols/8)] bit c%8 of byte c/8: column c is salient
  std::vector<uint32_t> codes;         // [rows, ceil(cols/16)] bits 2(c%16), 2(c%16)+1 of word c/16: the code of column c
  std::vector<uint16_t> scales;        // [rows, nblocks, kBillmScales] fp16
  std::vector<int32_t> block_salient;  // salient columns per block
  std::vector<uint8_t> salient_mask;   // [cols] 1 where the column is salient
  int64_t salient = 0, dead = 0;
  double avg_bits = 0, storing_bits = 0, loss = 0;
};

// {blockSize, damp, saliencySearch, fixedSalient, maxSalient, salientMetric, searchOnSaliency, errorFeedback,
// exactFeedback, centered}; throws std::invalid_argument naming the bad option.
BillmOptions billm_options_from_js(const Napi::Object& o);
// Once every block is done: the salient bitmap and the paper's bit counts from salient_mask and salient.
void billm_finish(BillmResult& r, int64_t cols, int64_t block);
// {weight?, avgBits, storingBits, salientColumns, blockSalient, salientMask, loss, deadColumns, binary: {block,
// salient, codes, scales}} (weight only where r.w holds it).
Napi::Value billm_result_js(Napi::Env env, const BillmResult& r, int64_t block);

}  // namespace lowbit
