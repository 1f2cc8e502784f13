// A model directory → LoadedModel: config.json, the checkpoint's tensors checked against it, big weights
// left as views over the mapped files, the small norm and bias vectors upcast to fp32 copies.
import * as fs from 'fs';
import * as path from 'path';
import { addon, isF32Array, Weight } from '../native/addon';
import { parseConfig } from './config';
import { LowbitError } from './errors';
import { binaryWeight, isInt8Packable, packInt8, packLinear, PackedLinear, unpackOnAccess } from '../quant/packed';
import { loadQuantizedLinear, QuantConfig, quantizationStateOf, readQuantConfig } from './quantized';
import { CheckpointReader, Tensor, openCheckpoint } from './safetensors';
import { expertTensor, layerLinears } from './linears';
import {
  LINEAR_NAMES,
  LINEAR_TENSORS,
  LayerWeights,
  Linear,
  LinearName,
  LoadedModel,
  MLP_LINEAR_NAMES,
  MlpLinearName,
  ModelConfig,
  ModelWeights,
  MoeConfig,
  MoeWeights,
  QuantizationState,
} from './types';

/**
 * Loads a model folder. A quantized checkpoint (config.json quantization_config with quant_method gptq, awq
 * or lowbit — lowbit's exports and other tools' GPTQ v1/v2 and AWQ GEMM files) gives linears that run
 * from packed kernels (`lin.packed`, no dense weight); widths without a kernel are dequantized.
 */
export function loadModel(dir: string): LoadedModel {
  const config = parseConfig(dir);
  const rawConfig = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  const qc = readQuantConfig(rawConfig, dir);
  const ckpt = openCheckpoint(dir);
  return {
    dir,
    config,
    weights: buildWeights(config, ckpt, qc, qc ? quantizationStateOf(qc, rawConfig['lowbit_quantization']).actBits : 0),
    files: ckpt.files,
    quantization: qc ? quantizationStateOf(qc, rawConfig['lowbit_quantization']) : readQuantization(dir, rawConfig),
  };
}

/** A lowbit checkpoint records how it was quantized; activation quantization must be re-applied when it runs. */
function readQuantization(dir: string, rawConfig: Record<string, unknown>): QuantizationState | undefined {
  const raw = rawConfig['lowbit_quantization'] as { abits?: unknown; settings: QuantizationState['spec'] } | undefined;
  if (!raw) return undefined;
  const abits = Number(raw.abits ?? 0);
  if (!Number.isInteger(abits) || abits < 0 || abits > 16) {
    throw new LowbitError('BAD_CONFIG', `${path.join(dir, 'config.json')}: lowbit_quantization.abits must be 0..16, got ${raw.abits}`);
  }
  return { spec: raw.settings, actBits: abits };
}

function buildWeights(config: ModelConfig, ckpt: CheckpointReader, qc: QuantConfig | undefined, actBits: number): ModelWeights {
  const { hiddenSize: h, intermediateSize: inter, numHeads, numKvHeads, headDim, vocabSize } = config;
  const get = (name: string, shape: number[]): Tensor => {
    const t = ckpt.get(name);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new LowbitError(
        'SHAPE_MISMATCH',
        `${t.file}: tensor "${name}" has shape [${t.shape.join(', ')}], config.json implies [${shape.join(', ')}]`,
      );
    }
    return t;
  };

  const linearShape: Record<LinearName, [number, number]> = {
    q: [numHeads * headDim, h],
    k: [numKvHeads * headDim, h],
    v: [numKvHeads * headDim, h],
    o: [h, numHeads * headDim],
    gate: [inter, h],
    up: [inter, h],
    down: [h, inter],
  };
  const hasBias: Record<LinearName, boolean> = {
    q: config.attentionBias,
    k: config.attentionBias,
    v: config.attentionBias,
    o: config.oBias,
    gate: config.mlpBias,
    up: config.mlpBias,
    down: config.mlpBias,
  };

  const loadLinear = (base: string, out: number, inF: number, bias: boolean): PackedLinear => {
    const packed = qc ? loadQuantizedLinear(ckpt, base, out, inF, qc) : undefined;
    if (qc && !packed && !ckpt.has(`${base}.weight`)) {
      throw new LowbitError('MISSING_TENSOR', `"${base}": neither ${base}.qweight (${qc.quantMethod} checkpoint) nor ${base}.weight in ${ckpt.files.join(', ')}`);
    }
    const lin: PackedLinear = {
      weight: packed ? (packed.weight as Float32Array) : toWeight(get(`${base}.weight`, [out, inF])),
      bias: bias ? toFloat32(get(`${base}.bias`, [out])) : undefined,
      outFeatures: out,
      inFeatures: inF,
    };
    if (packed?.quantized) {
      // The forward runs from the kernel layout. The integers stay reachable (re-export, inspection): kept
      // as they are for the int8 and dense paths, unpacked on access from the packed weights otherwise.
      const q = packed.quantized;
      if (packed.weight || (actBits === 8 && isInt8Packable(q))) {
        lin.quantized = q;
        if (!packed.weight) lin.packed = packInt8(q, out, inF);
      } else {
        const pw = packLinear(q, out, inF);
        lin.packed = pw;
        unpackOnAccess(lin, pw, q);
      }
    } else if (packed?.binary) {
      // The stored tensors stay mapped (re-export); the kernels run their packed copy, so the pages they were
      // read from can leave the RSS.
      lin.binary = packed.binary;
      lin.packed = binaryWeight(packed.binary, out, inF);
      if (lin.packed.packed) for (const a of [packed.binary.codes, packed.binary.scales]) addon.adviseMapped(a, 'dontneed');
    }
    return lin;
  };

  const sparse = new Set(config.moe?.sparseLayers ?? []);
  const layers: LayerWeights[] = [];
  for (let i = 0; i < config.numLayers; i++) {
    const p = `model.layers.${i}.`;
    const linears = {} as LayerWeights['linears'];
    for (const n of LINEAR_NAMES) {
      if (sparse.has(i) && MLP_LINEAR_NAMES.includes(n as MlpLinearName)) continue;
      const [out, inF] = linearShape[n];
      linears[n] = loadLinear(p + LINEAR_TENSORS[n], out, inF, hasBias[n]);
    }
    layers.push({
      inputNorm: toFloat32(get(`${p}input_layernorm.weight`, [h])),
      postAttnNorm: toFloat32(get(`${p}post_attention_layernorm.weight`, [h])),
      qNorm: config.qkNorm ? toFloat32(get(`${p}self_attn.q_norm.weight`, [headDim])) : undefined,
      kNorm: config.qkNorm ? toFloat32(get(`${p}self_attn.k_norm.weight`, [headDim])) : undefined,
      linears,
      moe: sparse.has(i) ? loadMoe(config.moe!, p, h, ckpt, get, loadLinear, !!qc) : undefined,
    });
  }

  const embed = toWeight(get('model.embed_tokens.weight', [vocabSize, h]));
  // Tied models share one matrix; transformers ties even when the file also stores lm_head, so do we.
  const lmHead = config.tieWordEmbeddings ? embed : toWeight(get('lm_head.weight', [vocabSize, h]));
  return { embed, layers, finalNorm: toFloat32(get('model.norm.weight', [h])), lmHead };
}

/**
 * A sparse MLP's router and experts. Checkpoints on the Hub (and transformers' save_pretrained) hold one
 * tensor per expert linear, mlp.experts.{e}.{gate,up,down}_proj.weight; transformers 5's in-memory layout
 * (a state_dict saved as is) fuses them: mlp.experts.gate_up_proj [E, 2·I, H] (each expert's gate rows,
 * then its up rows) and mlp.experts.down_proj [E, H, I]. Both are read as zero-copy views.
 */
function loadMoe(
  moe: MoeConfig,
  p: string,
  h: number,
  ckpt: CheckpointReader,
  get: (name: string, shape: number[]) => Tensor,
  loadLinear: (base: string, out: number, inF: number, bias: boolean) => PackedLinear,
  quantized: boolean,
): MoeWeights {
  const { numExperts: E, expertIntermediateSize: I } = moe;
  const router = toWeight(get(`${p}mlp.gate.weight`, [E, h]));
  const fused = `${p}mlp.experts.gate_up_proj`;
  if (!ckpt.has(`${p}${expertTensor(0, 'gate')}.weight`) && ckpt.has(fused)) {
    if (quantized) throw new LowbitError('UNSUPPORTED', `${fused}: fused expert tensors in a quantized checkpoint are not supported`);
    const gateUp = get(fused, [E, 2 * I, h]);
    const down = get(`${p}mlp.experts.down_proj`, [E, h, I]);
    const dense = (w: Weight, out: number, inF: number): Linear => ({ weight: w, outFeatures: out, inFeatures: inF });
    return {
      router,
      experts: Array.from({ length: E }, (_, e) => ({
        gate: dense(rowsOf(gateUp, 2 * e * I, I, h), I, h),
        up: dense(rowsOf(gateUp, (2 * e + 1) * I, I, h), I, h),
        down: dense(rowsOf(down, e * h, h, I), h, I),
      })),
    };
  }
  return {
    router,
    experts: Array.from({ length: E }, (_, e) => ({
      gate: loadLinear(p + expertTensor(e, 'gate'), I, h, false),
      up: loadLinear(p + expertTensor(e, 'up'), I, h, false),
      down: loadLinear(p + expertTensor(e, 'down'), h, I, false),
    })),
  };
}

/** Rows [first, first+count) of a row-major tensor with `cols` columns, as a view. */
function rowsOf(t: Tensor, first: number, count: number, cols: number): Weight {
  const w = toWeight(t);
  if (isF32Array(w)) return w.subarray(first * cols, (first + count) * cols);
  return { data: w.data.subarray(first * cols, (first + count) * cols), dtype: w.dtype };
}

/** Zero-copy: the kernels take fp32 as is and bf16/f16 as their bits. */
function toWeight(t: Tensor): Weight {
  switch (t.dtype) {
    case 'F32':
      return t.data as Float32Array;
    case 'BF16':
    case 'F16':
      return { data: t.data as Uint16Array, dtype: t.dtype };
    default:
      throw new LowbitError('BAD_DTYPE', `${t.file}: tensor "${t.name}" is ${t.dtype}; weights must be F32, BF16 or F16`);
  }
}

/**
 * Always a fresh array, even for F32: the mapped file is read-only memory, and scale-folding methods
 * (SmoothQuant, AWQ) rewrite norm weights in place.
 */
function toFloat32(t: Tensor): Float32Array {
  const n = t.data.length;
  const out = new Float32Array(n);
  switch (t.dtype) {
    case 'F32':
      out.set(t.data as Float32Array);
      return out;
    case 'BF16': {
      const src = t.data as Uint16Array;
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
      return out;
    }
    case 'F16': {
      const src = t.data as Uint16Array;
      for (let i = 0; i < n; i++) out[i] = f16ToF32(src[i]);
      return out;
    }
    default:
      throw new LowbitError('BAD_DTYPE', `${t.file}: tensor "${t.name}" is ${t.dtype}; norms and biases must be F32, BF16 or F16`);
  }
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** Every weight, norm and bias of the model under its checkpoint name (lm_head only when untied). */
export function namedTensors(model: LoadedModel): [string, Weight][] {
  const w = model.weights;
  const out: [string, Weight][] = [['model.embed_tokens.weight', w.embed]];
  w.layers.forEach((layer, i) => {
    const p = `model.layers.${i}.`;
    out.push([`${p}input_layernorm.weight`, layer.inputNorm], [`${p}post_attention_layernorm.weight`, layer.postAttnNorm]);
    if (layer.qNorm) out.push([`${p}self_attn.q_norm.weight`, layer.qNorm]);
    if (layer.kNorm) out.push([`${p}self_attn.k_norm.weight`, layer.kNorm]);
    for (const { path: name, lin } of layerLinears(layer)) {
      // Packed linears hold integers and finite scales checked at load; only dense weights are scanned.
      if (lin.weight) out.push([`${p}${name}.weight`, lin.weight]);
      if (lin.bias) out.push([`${p}${name}.bias`, lin.bias]);
    }
    if (layer.moe) out.push([`${p}mlp.gate.weight`, layer.moe.router]);
  });
  out.push(['model.norm.weight', w.finalNorm]);
  if (w.lmHead !== w.embed) out.push(['lm_head.weight', w.lmHead]);
  return out;
}

export interface NonFiniteTensor {
  name: string;
  /** How many elements are NaN or ±Inf. */
  count: number;
}

/**
 * Tensors holding NaN or Inf (a broken checkpoint or a diverged export). Tests the exponent bits instead
 * of converting values: all-ones exponent ⇔ not finite, in each of fp32, bf16 and f16. `namePrefix` limits the
 * scan (e.g. to one layer, so a layer-by-layer pass reads each tensor once).
 */
export function scanNonFinite(model: LoadedModel, namePrefix = ''): NonFiniteTensor[] {
  const found: NonFiniteTensor[] = [];
  for (const [name, w] of namedTensors(model)) {
    if (!name.startsWith(namePrefix)) continue;
    const count = countNonFinite(w);
    if (count > 0) found.push({ name, count });
  }
  return found;
}

function countNonFinite(w: Weight): number {
  if (isF32Array(w)) return addon.countNonFinite(w, 'F32');
  return addon.countNonFinite(w.data, isF32Array(w.data) ? 'F32' : w.dtype);
}
