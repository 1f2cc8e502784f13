// Qwen3-MoE: config parsing, the sparse MLP kernel against a float64 reference written here, and the full
// forward of a tiny trained Qwen3-MoE against transformers 5.17 (fp32, CPU): per-position NLL, top-5 and
// the router's choices, from both expert layouts (per-expert tensors and transformers' fused in-memory one).
// The fixture and its golden file come from test/fixtures/make_qwen3_moe_tiny.py (run on the GPU host).
import * as fs from 'fs';
import * as path from 'path';
import { routeTokens } from '../lib/calibrate/experts';
import { embedTokens, runLayer, scoreSequences } from '../lib/eval/forward';
import { configFromJson } from '../lib/load/config';
import { loadModel } from '../lib/load/model';
import { openSafetensors, TensorToWrite, writeSafetensors } from '../lib/load/safetensors';
import type { LayerWeights, LoadedModel, ModelConfig } from '../lib/load/types';
import { addon } from '../lib/native/addon';
import { toF32 } from '../lib/quant/weights';
import { tmpDir, toBf16 } from './helpers/fixtures';
import { gauss } from './helpers/random';

const FIXTURES = path.join(__dirname, 'fixtures');
const MOE_DIR = path.join(FIXTURES, 'qwen3-moe-tiny');
const golden = JSON.parse(fs.readFileSync(path.join(FIXTURES, 'qwen3-moe-tiny.golden.json'), 'utf8'));
const SEQ: number = golden.seq_len;
const NSEQ: number = golden.input_ids.length;

describe('Qwen3-MoE config', () => {
  const base = {
    architectures: ['Qwen3MoeForCausalLM'],
    hidden_size: 64,
    num_hidden_layers: 6,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    vocab_size: 100,
  };
  const parse = (extra: Record<string, unknown>): ModelConfig => configFromJson({ ...base, ...extra }, 'config.json');

  test("transformers' defaults: 128 experts, top-8, 768 wide, no renormalization, every layer sparse", () => {
    const c = parse({});
    expect(c.moe).toEqual({ numExperts: 128, topK: 8, expertIntermediateSize: 768, normTopkProb: false, sparseLayers: [0, 1, 2, 3, 4, 5] });
    expect(c.intermediateSize).toBe(6144);
    expect(c.qkNorm).toBe(true);
  });

  test('num_experts (Hub) and num_local_experts (transformers 5) both name the expert count', () => {
    expect(parse({ num_experts: 16 }).moe!.numExperts).toBe(16);
    expect(parse({ num_local_experts: 16 }).moe!.numExperts).toBe(16);
    expect(() => parse({ num_experts: 16, num_local_experts: 8 })).toThrow(/"num_experts" \(16\) and "num_local_experts" \(8\) disagree/);
  });

  test('decoder_sparse_step and mlp_only_layers pick the sparse layers as Qwen3MoeDecoderLayer does', () => {
    expect(parse({ decoder_sparse_step: 2 }).moe!.sparseLayers).toEqual([1, 3, 5]);
    expect(parse({ decoder_sparse_step: 2, mlp_only_layers: [3] }).moe!.sparseLayers).toEqual([1, 5]);
    expect(parse({ mlp_only_layers: [0, 5] }).moe!.sparseLayers).toEqual([1, 2, 3, 4]);
  });

  test('bad MoE fields are named', () => {
    expect(() => parse({ num_experts: 4, num_experts_per_tok: 5 })).toThrow(/"num_experts_per_tok" \(5\) exceeds the number of experts \(4\)/);
    expect(() => parse({ mlp_only_layers: [6] })).toThrow(/"mlp_only_layers" must be a list of layer indices in \[0, 6\)/);
    expect(() => parse({ moe_intermediate_size: 0 })).toThrow(/"moe_intermediate_size" must be a positive integer/);
    expect(configFromJson({ ...base, architectures: undefined, model_type: 'qwen3_moe' }, 'c').architecture).toBe('Qwen3MoeForCausalLM');
  });
});

// ---- the sparse MLP against float64 ------------------------------------------------------------------

interface RefExpert {
  gate: Float64Array;
  up: Float64Array;
  down: Float64Array;
}

/** Qwen3MoeSparseMoeBlock in float64: softmax router, top-k (ties to the lower index), optional renormalization. */
function moeReference(x: Float64Array, T: number, H: number, I: number, router: Float64Array, experts: RefExpert[], k: number, norm: boolean): Float64Array {
  const E = experts.length;
  const out = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    const xt = x.subarray(t * H, (t + 1) * H);
    const logits = Array.from({ length: E }, (_, e) => xt.reduce((s, v, h) => s + v * router[e * H + h], 0));
    const mx = Math.max(...logits);
    const ex = logits.map((l) => Math.exp(l - mx));
    const sum = ex.reduce((a, b) => a + b, 0);
    const p = ex.map((v) => v / sum);
    const top = p.map((v, e) => [v, e]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, k);
    const wsum = top.reduce((s, [v]) => s + v, 0);
    for (const [pv, e] of top) {
      const w = norm ? pv / wsum : pv;
      const { gate, up, down } = experts[e];
      const a = new Float64Array(I);
      for (let i = 0; i < I; i++) {
        let g = 0, u = 0;
        for (let h = 0; h < H; h++) {
          g += gate[i * H + h] * xt[h];
          u += up[i * H + h] * xt[h];
        }
        a[i] = (g / (1 + Math.exp(-g))) * u;
      }
      for (let h = 0; h < H; h++) {
        let d = 0;
        for (let i = 0; i < I; i++) d += down[h * I + i] * a[i];
        out[t * H + h] += w * d;
      }
    }
  }
  return out;
}

describe('sparse MLP kernel vs a float64 reference', () => {
  const H = 24, I = 16, E = 6, T = 40;
  function setup(k: number, norm: boolean, bf16: boolean) {
    const g = gauss(7 + k + (norm ? 10 : 0) + (bf16 ? 20 : 0));
    const mat = (n: number, scale: number) => Float32Array.from({ length: n }, () => Math.fround(g() * scale));
    // bf16 weights are compared through their fp32 values (what the kernel upcasts them to).
    const weight = (n: number, scale: number) => {
      const f = mat(n, scale);
      return bf16 ? { data: toBf16(f), dtype: 'BF16' as const } : f;
    };
    const router = weight(E * H, 1);
    const experts = Array.from({ length: E }, () => ({
      gate: { weight: weight(I * H, 0.3), outFeatures: I, inFeatures: H },
      up: { weight: weight(I * H, 0.3), outFeatures: I, inFeatures: H },
      down: { weight: weight(H * I, 0.3), outFeatures: H, inFeatures: I },
    }));
    const cfg = { hiddenSize: H, intermediateSize: 8, numHeads: 2, numKvHeads: 2, headDim: 4, rmsNormEps: 1e-6, ropeTheta: 1e4, moe: { numExperts: E, topK: k, expertIntermediateSize: I, normTopkProb: norm, sparseLayers: [0] } };
    const layer = { moe: { router, experts } } as unknown as LayerWeights;
    const x = mat(T * H, 1);
    const f64 = (w: Parameters<typeof toF32>[0]) => Float64Array.from(toF32(w));
    const ref = moeReference(Float64Array.from(x), T, H, I, f64(router), experts.map((e) => ({ gate: f64(e.gate.weight), up: f64(e.up.weight), down: f64(e.down.weight) })), k, norm);
    return { cfg, layer, x, ref };
  }

  test.each([
    [2, true, false],
    [2, false, false],
    [3, true, true],
    [1, false, true],
  ])('top-%i, renormalize %s, bf16 weights %s: within 1e-5 of float64', async (k, norm, bf16) => {
    const { cfg, layer, x, ref } = setup(k, norm, bf16);
    const full = { ...layer, inputNorm: new Float32Array(H), postAttnNorm: new Float32Array(H), linears: stubAttention(H) };
    const y: Float32Array = await addon.mlpBlock(x, { cfg, layer: full, seqLen: T });
    let worst = 0, scale = 0;
    for (let i = 0; i < y.length; i++) {
      worst = Math.max(worst, Math.abs(y[i] - ref[i]));
      scale = Math.max(scale, Math.abs(ref[i]));
    }
    expect(scale).toBeGreaterThan(0.1);
    expect(worst / scale).toBeLessThan(1e-5);
  });

  test('moeRoute gives the reference top-k experts and weights', async () => {
    const { cfg, layer, x } = setup(2, true, false);
    const r = await addon.moeRoute(x, { cfg, layer });
    expect(r.experts).toHaveLength(T * 2);
    const router = toF32(layer.moe!.router);
    for (let t = 0; t < T; t++) {
      const logits = Array.from({ length: E }, (_, e) => x.subarray(t * H, (t + 1) * H).reduce((s, v, h) => s + v * router[e * H + h], 0));
      const order = logits.map((l, e) => [l, e]).sort((a, b) => b[0] - a[0]).map(([, e]) => e);
      expect([r.experts[2 * t], r.experts[2 * t + 1]]).toEqual(order.slice(0, 2));
      expect(r.weights[2 * t] + r.weights[2 * t + 1]).toBeCloseTo(1, 6);
      expect(r.weights[2 * t]).toBeGreaterThanOrEqual(r.weights[2 * t + 1]);
    }
  });

  test('a sparse layer without cfg.moe, or with the wrong expert count, is refused', () => {
    const { cfg, layer, x } = setup(2, true, false);
    const full = { ...layer, inputNorm: new Float32Array(H), postAttnNorm: new Float32Array(H), linears: stubAttention(H) };
    expect(() => addon.mlpBlock(x, { cfg: { ...cfg, moe: undefined }, layer: full, seqLen: T })).toThrow(/needs cfg\.moe/);
    expect(() => addon.mlpBlock(x, { cfg: { ...cfg, moe: { ...cfg.moe, numExperts: 5, topK: 2 } }, layer: full, seqLen: T })).toThrow(/moe\.experts has 6 experts, cfg\.moe\.numExperts is 5/);
  });
});

/** Attention linears the binding parses (shape-checked) but mlpBlock never runs. */
function stubAttention(H: number) {
  const lin = (o: number, i: number) => ({ weight: new Float32Array(o * i), outFeatures: o, inFeatures: i });
  return { q: lin(8, H), k: lin(8, H), v: lin(8, H), o: lin(H, 8) };
}

// ---- the whole model against transformers ---------------------------------------------------------------

function checkGolden(s: { nll: Float64Array; topIdx?: Int32Array }): void {
  let worst = 0;
  for (let r = 0; r < NSEQ; r++) {
    for (let t = 0; t < SEQ - 1; t++) worst = Math.max(worst, Math.abs(s.nll[r * SEQ + t] - golden.nll[r][t]));
    expect(s.nll[r * SEQ + SEQ - 1]).toBe(0);
    const top: number[][] = [];
    for (let t = 0; t < SEQ; t++) top.push(Array.from(s.topIdx!.subarray((r * SEQ + t) * 5, (r * SEQ + t + 1) * 5)));
    expect(top).toEqual(golden.top5_idx[r]);
  }
  expect(worst).toBeLessThan(1e-4);
}

describe('tiny Qwen3-MoE against transformers', () => {
  let model: LoadedModel;
  const ids = Int32Array.from(golden.input_ids.flat());
  beforeAll(() => {
    model = loadModel(MOE_DIR);
  });

  test('the fixture is what the test claims: 3 layers, layer 1 dense, 8 experts top-2, renormalized', () => {
    expect(model.config.moe).toEqual({ numExperts: 8, topK: 2, expertIntermediateSize: 32, normTopkProb: true, sparseLayers: [0, 2] });
    expect(model.weights.layers.map((l) => !!l.moe)).toEqual([true, false, true]);
    expect(model.weights.layers[0].linears.gate).toBeUndefined();
    expect(model.weights.layers[1].linears.gate).toBeDefined();
    expect(fs.statSync(path.join(MOE_DIR, 'model.safetensors')).size).toBeLessThan(2 << 20);
  });

  test('per-position NLL within 1e-4 of transformers (fp32) and identical top-5', async () => {
    checkGolden(await scoreSequences(model, ids, SEQ, { topk: 5 }));
  });

  test("every sparse layer routes every token to transformers' experts", async () => {
    // transformers' choices were recorded with the runner-up's probability at least this far below the k-th
    expect(golden.min_route_margin).toBeGreaterThan(1e-6);
    const h = await embedTokens(model, ids);
    for (let l = 0; l < model.config.numLayers; l++) {
      const caps = await runLayer(model, l, h, SEQ, { capture: true });
      if (!model.weights.layers[l].moe) continue;
      const r = await routeTokens(model, l, caps!.mlpIn);
      const k = model.config.moe!.topK;
      for (let s = 0; s < NSEQ; s++) {
        const got = Array.from({ length: SEQ }, (_, t) => Array.from(r.experts.subarray((s * SEQ + t) * k, (s * SEQ + t + 1) * k)).sort());
        const want = (golden.routing[String(l)][s] as number[][]).map((e) => e.slice().sort());
        expect(got).toEqual(want);
      }
    }
  });

  test("transformers' fused in-memory layout (experts.gate_up_proj, experts.down_proj) loads to the same model", async () => {
    const fused = openSafetensors(path.join(FIXTURES, 'qwen3-moe-tiny-fused-experts.safetensors'));
    const perExpert = openSafetensors(path.join(MOE_DIR, 'model.safetensors'));
    const tensors: Record<string, TensorToWrite> = {};
    for (const name of perExpert.names()) {
      if (/\.mlp\.experts\.\d+\./.test(name)) continue;
      const t = perExpert.get(name);
      tensors[name] = { dtype: t.dtype, shape: t.shape, data: t.data };
    }
    for (const name of fused.names()) {
      const t = fused.get(name);
      tensors[name] = { dtype: t.dtype, shape: t.shape, data: t.data };
    }
    const dir = tmpDir('lowbit-moe-fused-');
    try {
      fs.copyFileSync(path.join(MOE_DIR, 'config.json'), path.join(dir, 'config.json'));
      writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
      const m = loadModel(dir);
      // The fused tensors are transformers' concatenation of the per-expert ones: the views must be equal.
      const bits = (w: unknown) => Array.from((w as { data: Uint16Array }).data);
      for (const l of [0, 2]) {
        m.weights.layers[l].moe!.experts.forEach((ex, e) => {
          for (const kind of ['gate', 'up', 'down'] as const) expect(bits(ex[kind].weight)).toEqual(bits(model.weights.layers[l].moe!.experts[e][kind].weight));
        });
      }
      checkGolden(await scoreSequences(m, ids, SEQ, { topk: 5 }));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a missing expert tensor is named', () => {
    const src = openSafetensors(path.join(MOE_DIR, 'model.safetensors'));
    const tensors: Record<string, TensorToWrite> = {};
    for (const name of src.names()) {
      if (name === 'model.layers.2.mlp.experts.5.down_proj.weight') continue;
      const t = src.get(name);
      tensors[name] = { dtype: t.dtype, shape: t.shape, data: t.data };
    }
    const dir = tmpDir('lowbit-moe-missing-');
    try {
      fs.copyFileSync(path.join(MOE_DIR, 'config.json'), path.join(dir, 'config.json'));
      writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
      expect(() => loadModel(dir)).toThrow(/model\.layers\.2\.mlp\.experts\.5\.down_proj\.weight/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
