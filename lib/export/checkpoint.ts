// Writes a quantized model as a checkpoint, in one of four formats (docs/formats.md):
//   dequant  quantized linears as fp32 dequantized weights (any safetensors reader loads it)
//   gptq     AutoGPTQ/GPTQModel packed int32 layout, quantization_config.quant_method "gptq" (v1 zeros; gptq_v2: plain zeros)
//   awq      AutoAWQ GEMM layout (4-bit), quant_method "awq"
//   lowbit   lowbit's own layout for what those cannot hold (BiLLM, SmoothQuant W8A8, odd bit widths)
// Embeddings and lm_head keep their dtype; norms and biases are written in the model's dtype when every value
// is exactly representable in it (untouched ones always are), else F32 (AWQ/SmoothQuant fold scales into
// norms). config.json also gets a `lowbit_quantization` section (spec, activation bits — which the forward
// needs). The folder appears atomically.
import * as fs from 'fs';
import * as path from 'path';
import { LowbitError } from '../load/errors';
import { DType, TensorToWrite, writeSafetensors } from '../load/safetensors';
import { layerLinears } from '../load/linears';
import { Linear, LoadedModel } from '../load/types';
import { isF32Array, Weight } from '../native/addon';
import type { QuantizeReport } from '../quant/pipeline';
import type { QuantSpec } from '../quant/spec';
import { awqLinearTensors, awqUnfit } from './awq-format';
import { GptqCheckpointFormat, gptqLinearTensors, gptqUnfit } from './gptq-format';
import { LOWBIT_FORMAT_VERSION, LowbitKind, lowbitLinearTensors } from './lowbit-format';
import { dequantize, f32ToF16Bits, fromF16Bits, isTrivialGIdx, withF16Scales } from './pack';

export const QUANT_CONFIG_KEY = 'lowbit_quantization';
const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'special_tokens_map.json', 'vocab.json', 'merges.txt'];

function tensor(w: Weight, shape: number[]): TensorToWrite {
  if (isF32Array(w)) return { dtype: 'F32', shape, data: w };
  return { dtype: w.dtype as DType, shape, data: w.data };
}

/** Writes dir/ via dir.tmp-<pid>/ then a rename, replacing an earlier lowbit output only once the new one is complete. */
export function writeDirAtomically(dir: string, fill: (tmp: string) => void): void {
  const abs = path.resolve(dir);
  const tmp = `${abs}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  try {
    fill(tmp);
    if (fs.existsSync(abs)) {
      const old = `${abs}.old-${process.pid}`;
      fs.renameSync(abs, old);
      fs.renameSync(tmp, abs);
      fs.rmSync(old, { recursive: true, force: true });
    } else {
      fs.renameSync(tmp, abs);
    }
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

export type ExportFormat = 'dequant' | 'gptq' | 'gptq_v2' | 'awq' | 'lowbit';
export const EXPORT_FORMATS: readonly ExportFormat[] = ['dequant', 'gptq', 'gptq_v2', 'awq', 'lowbit'];

export interface SaveOptions {
  /** Default 'dequant' (the API's historical behaviour); the CLI defaults to defaultFormat(). */
  format?: ExportFormat;
  /** Non-fatal notes (e.g. v1 zero points external readers misread). */
  onWarning?: (message: string) => void;
}

export interface SaveResult {
  format: ExportFormat;
  /** lowbit format: how many linears took each layout. */
  kinds?: Partial<Record<LowbitKind, number>>;
  /** gptq (v1): groups whose zero point is 0, stored as maxq (see gptq-format.ts). */
  zeroZeroGroups?: number;
}

function eachLinear(model: LoadedModel, f: (lin: Linear, name: string) => void): void {
  model.weights.layers.forEach((layer, l) => {
    for (const r of layerLinears(layer)) f(r.lin, `model.layers.${l}.${r.path}`);
  });
}

/** Why the model's quantized linears cannot be written as `format`, or undefined. */
export function formatUnfit(model: LoadedModel, spec: QuantSpec, format: ExportFormat): string | undefined {
  if (format === 'dequant' || format === 'lowbit') return undefined;
  const name = format === 'awq' ? 'AWQ' : 'GPTQ';
  if (spec.abits) return `${name} checkpoints hold weight-only quantization; ${spec.method} w${spec.wbits}a${spec.abits} quantizes activations too (use --format lowbit)`;
  if (spec.method === 'billm') return `${name} checkpoints hold uniform integer grids; BiLLM binarized weights need --format lowbit`;
  let why: string | undefined;
  eachLinear(model, (lin, p) => {
    if (why) return;
    if (!lin.quantized) why = `${p} carries no quantized integers (quantize it first)`;
    else {
      const w = format === 'awq' ? awqUnfit(lin.quantized, lin.outFeatures, lin.inFeatures) : gptqUnfit(lin.quantized, lin.outFeatures, lin.inFeatures);
      if (w) why = `${p}: ${w}`;
    }
  });
  return why;
}

/** gptq when the quantization fits it, else lowbit. */
export function defaultFormat(model: LoadedModel, spec: QuantSpec): ExportFormat {
  return formatUnfit(model, spec, 'gptq') ? 'lowbit' : 'gptq';
}

/**
 * GPTQ/AWQ files store scales in fp16: re-dequantize every linear from fp16-rounded scales, so that the
 * in-memory model is exactly what the checkpoint will load as (the integers and zeros do not change).
 */
export function roundScalesForFormat(model: LoadedModel, format: ExportFormat): void {
  if (format !== 'gptq' && format !== 'gptq_v2' && format !== 'awq') return;
  eachLinear(model, (lin) => {
    if (!lin.quantized) return;
    lin.quantized = withF16Scales(lin.quantized);
    lin.weight = dequantize(lin.quantized, lin.inFeatures);
  });
}


/** An fp32 vector in `dtype` when every value survives the conversion exactly, else F32. */
export function smallTensor(v: Float32Array, shape: number[], dtype: DType): TensorToWrite {
  if (dtype === 'BF16') {
    const u = new Uint32Array(v.buffer, v.byteOffset, v.length);
    if (u.every((x) => (x & 0xffff) === 0)) return { dtype, shape, data: Uint16Array.from(u, (x) => x >>> 16) };
  } else if (dtype === 'F16') {
    const h = Uint16Array.from(v, f32ToF16Bits);
    if (fromF16Bits(h).every((x, i) => Object.is(x, v[i]))) return { dtype, shape, data: h };
  }
  return { dtype: 'F32', shape, data: v };
}

function modelDType(model: LoadedModel): DType {
  const e = model.weights.embed;
  return isF32Array(e) ? 'F32' : (e.dtype as DType);
}

export function saveQuantized(model: LoadedModel, outDir: string, report: QuantizeReport, opts: SaveOptions = {}): SaveResult {
  if (path.resolve(outDir) === path.resolve(model.dir)) {
    throw new LowbitError('BAD_ARGUMENT', `--out ${outDir} is the model's own folder; choose another`);
  }
  const format = opts.format ?? 'dequant';
  const spec = report.spec;
  const unfit = formatUnfit(model, spec, format);
  if (unfit) throw new LowbitError('BAD_ARGUMENT', `cannot write --format ${format}: ${unfit}`);
  const c = model.config;
  const w = model.weights;
  const dt = modelDType(model);
  const result: SaveResult = { format };
  const t: Record<string, TensorToWrite> = {};
  t['model.embed_tokens.weight'] = tensor(w.embed, [c.vocabSize, c.hiddenSize]);
  if (!c.tieWordEmbeddings) t['lm_head.weight'] = tensor(w.lmHead, [c.vocabSize, c.hiddenSize]);
  t['model.norm.weight'] = smallTensor(w.finalNorm, [c.hiddenSize], dt);
  const gfmt: GptqCheckpointFormat = format === 'gptq_v2' ? 'gptq_v2' : 'gptq';
  let zeroZero = 0;
  const kinds: Partial<Record<LowbitKind, number>> = {};
  let descAct = false;
  w.layers.forEach((layer, l) => {
    const p = `model.layers.${l}.`;
    t[p + 'input_layernorm.weight'] = smallTensor(layer.inputNorm, [c.hiddenSize], dt);
    t[p + 'post_attention_layernorm.weight'] = smallTensor(layer.postAttnNorm, [c.hiddenSize], dt);
    if (layer.qNorm) t[p + 'self_attn.q_norm.weight'] = smallTensor(layer.qNorm, [c.headDim], dt);
    if (layer.kNorm) t[p + 'self_attn.k_norm.weight'] = smallTensor(layer.kNorm, [c.headDim], dt);
    // The router stays in full precision: its dtype, or fp32 once AWQ/SmoothQuant folded scales into it.
    if (layer.moe) t[p + 'mlp.gate.weight'] = tensor(layer.moe.router, [c.moe!.numExperts, c.hiddenSize]);
    for (const { path: name, lin } of layerLinears(layer)) {
      const base = p + name;
      if (lin.bias) t[base + '.bias'] = smallTensor(lin.bias, [lin.outFeatures], dt);
      switch (format) {
        case 'dequant':
          t[base + '.weight'] = tensor(lin.weight, [lin.outFeatures, lin.inFeatures]);
          break;
        case 'gptq':
        case 'gptq_v2': {
          const r = gptqLinearTensors(base, lin.quantized!, lin.outFeatures, lin.inFeatures, gfmt);
          Object.assign(t, r.tensors);
          zeroZero += r.zeroZeroGroups;
          if (!isTrivialGIdx(lin.quantized!, lin.inFeatures)) descAct = true;
          break;
        }
        case 'awq':
          Object.assign(t, awqLinearTensors(base, lin.quantized!, lin.outFeatures, lin.inFeatures));
          break;
        case 'lowbit': {
          const r = lowbitLinearTensors(base, lin, spec);
          Object.assign(t, r.tensors);
          kinds[r.kind] = (kinds[r.kind] ?? 0) + 1;
          if (lin.quantized && !isTrivialGIdx(lin.quantized, lin.inFeatures)) descAct = true;
          break;
        }
      }
    }
  });
  const config = JSON.parse(fs.readFileSync(path.join(model.dir, 'config.json'), 'utf8'));
  delete config.quantization_config;
  config[QUANT_CONFIG_KEY] = {
    format: format === 'dequant' ? 'dequantized' : format,
    method: spec.method,
    spec: report.name,
    wbits: spec.wbits,
    abits: spec.abits,
    group_size: spec.groupSize,
    settings: spec,
    calibration: report.calibration ?? null,
    avg_bits: report.avgBits ?? null,
  };
  if (format === 'gptq' || format === 'gptq_v2') {
    result.zeroZeroGroups = gfmt === 'gptq' ? zeroZero : 0;
    if (gfmt === 'gptq' && zeroZero > 0) {
      opts.onWarning?.(
        `${zeroZero} quantization group(s) have zero point 0, which the v1 "gptq" checkpoint_format stores as ${(1 << spec.wbits) - 1}: ` +
          'lowbit reads them back exactly, but AutoGPTQ/GPTQModel/vLLM readers add 1 without wrapping and misread them; --format gptq_v2 stores zeros as they are',
      );
    }
    config.quantization_config = {
      quant_method: 'gptq',
      bits: spec.wbits,
      group_size: spec.groupSize > 0 ? spec.groupSize : -1,
      desc_act: descAct || (spec.method === 'gptq' && spec.actOrder),
      sym: spec.sym,
      checkpoint_format: gfmt,
      true_sequential: spec.trueSequential,
      damp_percent: spec.damp,
      static_groups: spec.staticGroups,
      lm_head: false,
      pack_dtype: 'int32',
      meta: { quantizer: [`lowbit:${report.name}`] },
    };
  } else if (format === 'awq') {
    config.quantization_config = { quant_method: 'awq', bits: 4, group_size: spec.groupSize, zero_point: true, version: 'gemm', modules_to_not_convert: null };
  } else if (format === 'lowbit') {
    result.kinds = kinds;
    config.quantization_config = {
      quant_method: 'lowbit',
      version: LOWBIT_FORMAT_VERSION,
      method: spec.method,
      bits: spec.wbits,
      abits: spec.abits,
      group_size: spec.groupSize,
      sym: spec.sym,
      desc_act: descAct,
      layouts: kinds,
    };
  }
  writeDirAtomically(outDir, (tmp) => {
    writeSafetensors(path.join(tmp, 'model.safetensors'), t, { format: 'pt', lowbit: report.name, lowbit_format: format });
    fs.writeFileSync(path.join(tmp, 'config.json'), JSON.stringify(config, null, 2) + '\n');
    for (const f of TOKENIZER_FILES) {
      const src = path.join(model.dir, f);
      if (fs.existsSync(src)) fs.copyFileSync(src, path.join(tmp, f));
    }
  });
  return result;
}
