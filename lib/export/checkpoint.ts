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
import { DType, TensorToWrite } from '../load/safetensors';
import { SafetensorsWriter } from './safetensors-writer';
import { packInt8, packLinear, PackedLinear } from '../quant/packed';
import type { QuantizedTensor } from '../quant/weights';
import { layerLinears } from '../load/linears';
import { LayerWeights, Linear, LoadedModel } from '../load/types';
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
  const tmp = beginDir(dir);
  try {
    fill(tmp);
    commitDir(tmp, dir);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
}

/** A fresh dir.tmp-<pid>/ to fill before commitDir. */
function beginDir(dir: string): string {
  const tmp = `${path.resolve(dir)}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  fs.mkdirSync(tmp, { recursive: true });
  return tmp;
}

function commitDir(tmp: string, dir: string): void {
  const abs = path.resolve(dir);
  if (fs.existsSync(abs)) {
    const old = `${abs}.old-${process.pid}`;
    fs.renameSync(abs, old);
    fs.renameSync(tmp, abs);
    fs.rmSync(old, { recursive: true, force: true });
  } else {
    fs.renameSync(tmp, abs);
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

/** Why a quantization by `spec` cannot be written as `format` (from the spec and the shapes alone, before
 *  quantizing), or undefined. */
export function specFormatUnfit(model: LoadedModel, spec: QuantSpec, format: ExportFormat): string | undefined {
  if (format === 'dequant' || format === 'lowbit') return undefined;
  const name = format === 'awq' ? 'AWQ' : 'GPTQ';
  if (spec.abits) return `${name} checkpoints hold weight-only quantization; ${spec.method} w${spec.wbits}a${spec.abits} quantizes activations too (use --format lowbit)`;
  if (spec.method === 'billm') return `${name} checkpoints hold uniform integer grids; BiLLM binarized weights need --format lowbit`;
  const actOrder = spec.method === 'gptq' && spec.actOrder && !spec.staticGroups && spec.groupSize > 0;
  let why: string | undefined;
  eachLinear(model, (lin, p) => {
    // A stand-in with the spec's grid: zero points are checked per linear when it is written.
    const probe = { bits: spec.wbits, groupSize: spec.groupSize, sym: spec.sym, qweight: new Uint8Array(0), scales: new Float32Array(0), zeros: new Float32Array(0) };
    const w = format === 'awq' ? awqUnfit(probe, lin.outFeatures, lin.inFeatures) : gptqUnfit(probe, lin.outFeatures, lin.inFeatures);
    if (!why && w) why = `${p}: ${w}`;
    if (!why && actOrder && format === 'awq') why = `${p}: ${awqUnfit({ ...probe, gIdx: new Int32Array(lin.inFeatures).fill(1) }, lin.outFeatures, lin.inFeatures)}`;
  });
  return why;
}

/** Why the model's quantized linears cannot be written as `format`, or undefined. */
export function formatUnfit(model: LoadedModel, spec: QuantSpec, format: ExportFormat): string | undefined {
  const bySpec = specFormatUnfit(model, spec, format);
  if (bySpec || format === 'dequant' || format === 'lowbit') return bySpec;
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

/** gptq when a quantization by `spec` fits it, else lowbit (decidable before quantizing). */
export function defaultFormat(model: LoadedModel, spec: QuantSpec): ExportFormat {
  return specFormatUnfit(model, spec, 'gptq') ? 'lowbit' : 'gptq';
}

/**
 * GPTQ/AWQ files store scales in fp16: re-dequantize (or re-pack) every linear from fp16-rounded scales, so
 * that the in-memory model is exactly what the checkpoint will load as (the integers and zeros do not change).
 */
export function roundScalesForFormat(model: LoadedModel, format: ExportFormat): void {
  if (!storesF16Scales(format)) return;
  for (const layer of model.weights.layers) roundLayerScales(layer);
}

export function storesF16Scales(format: ExportFormat): boolean {
  return format === 'gptq' || format === 'gptq_v2' || format === 'awq';
}

/** roundScalesForFormat for one layer. */
export function roundLayerScales(layer: LayerWeights): void {
  for (const { lin } of layerLinears(layer) as { lin: PackedLinear }[]) {
    if (!lin.quantized) continue;
    const q = (lin.quantized = withF16Scales(lin.quantized));
    if (lin.packed) lin.packed = lin.packed.kind === 'int8' ? packInt8(q, lin.outFeatures, lin.inFeatures) : packLinear(q, lin.outFeatures, lin.inFeatures);
    else lin.weight = dequantize(q, lin.inFeatures);
  }
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

/** Writes a quantized model as a checkpoint (in memory as a whole: see CheckpointWriter for layer by layer). */
export function saveQuantized(model: LoadedModel, outDir: string, report: QuantizeReport, opts: SaveOptions = {}): SaveResult {
  const format = opts.format ?? 'dequant';
  const unfit = formatUnfit(model, report.spec, format);
  if (unfit) throw new LowbitError('BAD_ARGUMENT', `cannot write --format ${format}: ${unfit}`);
  const w = CheckpointWriter.open(model, outDir, report.spec, { ...opts, format });
  try {
    for (let l = 0; l < model.config.numLayers; l++) w.writeLayer(l);
    return w.finish(report);
  } catch (e) {
    w.abort();
    throw e;
  }
}

/** Reserved header bytes per tensor beyond its name: dtype, a shape of up to 3 dims and two offsets, as JSON. */
const HEADER_ENTRY_BYTES = 160;

/**
 * A checkpoint written layer by layer as quantization finishes each one (`quantize`'s onLayer), into
 * outDir.tmp-<pid>/ renamed to outDir by finish(): peak memory stays one layer's tensors whatever the
 * model's size. One model.safetensors, as saveQuantized writes.
 */
export class CheckpointWriter {
  private readonly st: SafetensorsWriter;
  private readonly dt: DType;
  private readonly gfmt: GptqCheckpointFormat;
  private zeroZero = 0;
  private readonly kinds: Partial<Record<LowbitKind, number>> = {};
  private descAct = false;
  private done = false;

  private constructor(
    private readonly model: LoadedModel,
    private readonly outDir: string,
    private readonly tmp: string,
    private readonly spec: QuantSpec,
    private readonly format: ExportFormat,
    private readonly opts: SaveOptions,
  ) {
    this.dt = modelDType(model);
    this.gfmt = format === 'gptq_v2' ? 'gptq_v2' : 'gptq';
    this.st = new SafetensorsWriter(path.join(tmp, 'model.safetensors'), headerBound(model));
  }

  /** Checks the format against the spec (before quantizing) and opens the temporary folder. */
  static open(model: LoadedModel, outDir: string, spec: QuantSpec, opts: SaveOptions & { format: ExportFormat }): CheckpointWriter {
    if (path.resolve(outDir) === path.resolve(model.dir)) {
      throw new LowbitError('BAD_ARGUMENT', `--out ${outDir} is the model's own folder; choose another`);
    }
    const unfit = specFormatUnfit(model, spec, opts.format);
    if (unfit) throw new LowbitError('BAD_ARGUMENT', `cannot write --format ${opts.format}: ${unfit}`);
    const tmp = beginDir(outDir);
    try {
      return new CheckpointWriter(model, outDir, tmp, spec, opts.format, opts);
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  /** Writes layer l's tensors (its linears quantized). */
  writeLayer(l: number): void {
    const c = this.model.config;
    const dt = this.dt;
    const layer = this.model.weights.layers[l];
    const put = (name: string, t: TensorToWrite) => this.st.add(name, t);
    const p = `model.layers.${l}.`;
    put(p + 'input_layernorm.weight', smallTensor(layer.inputNorm, [c.hiddenSize], dt));
    put(p + 'post_attention_layernorm.weight', smallTensor(layer.postAttnNorm, [c.hiddenSize], dt));
    if (layer.qNorm) put(p + 'self_attn.q_norm.weight', smallTensor(layer.qNorm, [c.headDim], dt));
    if (layer.kNorm) put(p + 'self_attn.k_norm.weight', smallTensor(layer.kNorm, [c.headDim], dt));
    // The router stays in full precision: its dtype, or fp32 once AWQ/SmoothQuant folded scales into it.
    if (layer.moe) put(p + 'mlp.gate.weight', tensor(layer.moe.router, [c.moe!.numExperts, c.hiddenSize]));
    for (const { path: name, lin } of layerLinears(layer)) {
      const base = p + name;
      if (lin.bias) put(base + '.bias', smallTensor(lin.bias, [lin.outFeatures], dt));
      const ts = this.linearTensors(base, lin);
      for (const [n, t] of Object.entries(ts)) put(n, t);
    }
  }

  private linearTensors(base: string, lin: Linear): Record<string, TensorToWrite> {
    switch (this.format) {
      case 'dequant':
        return { [base + '.weight']: tensor(lin.weight ?? dequantize(lin.quantized!, lin.inFeatures), [lin.outFeatures, lin.inFeatures]) };
      case 'gptq':
      case 'gptq_v2': {
        const r = gptqLinearTensors(base, this.quantizedOf(base, lin), lin.outFeatures, lin.inFeatures, this.gfmt);
        this.zeroZero += r.zeroZeroGroups;
        if (!isTrivialGIdx(lin.quantized!, lin.inFeatures)) this.descAct = true;
        return r.tensors;
      }
      case 'awq':
        return awqLinearTensors(base, this.quantizedOf(base, lin), lin.outFeatures, lin.inFeatures);
      case 'lowbit': {
        const r = lowbitLinearTensors(base, lin, this.spec);
        this.kinds[r.kind] = (this.kinds[r.kind] ?? 0) + 1;
        if (lin.quantized && !isTrivialGIdx(lin.quantized, lin.inFeatures)) this.descAct = true;
        return r.tensors;
      }
    }
  }

  private quantizedOf(base: string, lin: Linear): QuantizedTensor {
    if (!lin.quantized) throw new LowbitError('BAD_ARGUMENT', `cannot write --format ${this.format}: ${base} carries no quantized integers (quantize it first)`);
    return lin.quantized;
  }

  /** Writes the embeddings, head and config, and renames the folder into place. */
  finish(report: QuantizeReport): SaveResult {
    const { model, spec, format } = this;
    const c = model.config;
    const w = model.weights;
    this.st.add('model.embed_tokens.weight', tensor(w.embed, [c.vocabSize, c.hiddenSize]));
    if (!c.tieWordEmbeddings) this.st.add('lm_head.weight', tensor(w.lmHead, [c.vocabSize, c.hiddenSize]));
    this.st.add('model.norm.weight', smallTensor(w.finalNorm, [c.hiddenSize], this.dt));
    this.st.close({ format: 'pt', lowbit: report.name, lowbit_format: format });
    this.done = true;
    const result: SaveResult = { format };
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
      const zeroZero = this.zeroZero;
      result.zeroZeroGroups = this.gfmt === 'gptq' ? zeroZero : 0;
      if (this.gfmt === 'gptq' && zeroZero > 0) {
        this.opts.onWarning?.(
          `${zeroZero} quantization group(s) have zero point 0, which the v1 "gptq" checkpoint_format stores as ${(1 << spec.wbits) - 1}: ` +
            'lowbit reads them back exactly, but AutoGPTQ/GPTQModel/vLLM readers add 1 without wrapping and misread them; --format gptq_v2 stores zeros as they are',
        );
      }
      config.quantization_config = {
        quant_method: 'gptq',
        bits: spec.wbits,
        group_size: spec.groupSize > 0 ? spec.groupSize : -1,
        desc_act: this.descAct || (spec.method === 'gptq' && spec.actOrder),
        sym: spec.sym,
        checkpoint_format: this.gfmt,
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
      result.kinds = this.kinds;
      config.quantization_config = {
        quant_method: 'lowbit',
        version: LOWBIT_FORMAT_VERSION,
        method: spec.method,
        bits: spec.wbits,
        abits: spec.abits,
        group_size: spec.groupSize,
        sym: spec.sym,
        desc_act: this.descAct,
        layouts: this.kinds,
      };
    }
    fs.writeFileSync(path.join(this.tmp, 'config.json'), JSON.stringify(config, null, 2) + '\n');
    for (const f of TOKENIZER_FILES) {
      const src = path.join(model.dir, f);
      if (fs.existsSync(src)) fs.copyFileSync(src, path.join(this.tmp, f));
    }
    commitDir(this.tmp, this.outDir);
    return result;
  }

  /** Removes the temporary folder (nothing is left under outDir). */
  abort(): void {
    if (!this.done) this.st.discard();
    this.done = true;
    fs.rmSync(this.tmp, { recursive: true, force: true });
  }
}

/** An upper bound on the safetensors header of any format's checkpoint of `model` (see SafetensorsWriter). */
function headerBound(model: LoadedModel): number {
  let bytes = 1024 + 3 * (64 + HEADER_ENTRY_BYTES); // metadata; embed, lm_head, final norm
  model.weights.layers.forEach((layer, l) => {
    const p = `model.layers.${l}.`;
    bytes += 5 * (p.length + 40 + HEADER_ENTRY_BYTES); // norms, router
    for (const { path: name } of layerLinears(layer)) bytes += 5 * (p.length + name.length + 12 + HEADER_ENTRY_BYTES); // ≤ 4 tensors + bias
  });
  return bytes;
}
