// Writes a quantized model as a checkpoint lowbit (and any safetensors reader) loads: quantized linears as
// fp32 dequantized weights, everything else as it was, plus config.json with a `lowbit_quantization`
// section (method and activation bits, which the forward needs). The folder appears atomically.
import * as fs from 'fs';
import * as path from 'path';
import { LowbitError } from '../load/errors';
import { DType, TensorToWrite, writeSafetensors } from '../load/safetensors';
import { LINEAR_NAMES, LINEAR_TENSORS, LoadedModel } from '../load/types';
import { isF32Array, Weight } from '../native/addon';
import type { QuantizeReport } from '../quant/pipeline';

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

export function saveQuantized(model: LoadedModel, outDir: string, report: QuantizeReport): void {
  if (path.resolve(outDir) === path.resolve(model.dir)) {
    throw new LowbitError('BAD_ARGUMENT', `--out ${outDir} is the model's own folder; choose another`);
  }
  const c = model.config;
  const w = model.weights;
  const t: Record<string, TensorToWrite> = {};
  t['model.embed_tokens.weight'] = tensor(w.embed, [c.vocabSize, c.hiddenSize]);
  if (!c.tieWordEmbeddings) t['lm_head.weight'] = tensor(w.lmHead, [c.vocabSize, c.hiddenSize]);
  t['model.norm.weight'] = tensor(w.finalNorm, [c.hiddenSize]);
  w.layers.forEach((layer, l) => {
    const p = `model.layers.${l}.`;
    t[p + 'input_layernorm.weight'] = tensor(layer.inputNorm, [c.hiddenSize]);
    t[p + 'post_attention_layernorm.weight'] = tensor(layer.postAttnNorm, [c.hiddenSize]);
    if (layer.qNorm) t[p + 'self_attn.q_norm.weight'] = tensor(layer.qNorm, [c.headDim]);
    if (layer.kNorm) t[p + 'self_attn.k_norm.weight'] = tensor(layer.kNorm, [c.headDim]);
    for (const n of LINEAR_NAMES) {
      const lin = layer.linears[n];
      t[p + LINEAR_TENSORS[n] + '.weight'] = tensor(lin.weight, [lin.outFeatures, lin.inFeatures]);
      if (lin.bias) t[p + LINEAR_TENSORS[n] + '.bias'] = tensor(lin.bias, [lin.outFeatures]);
    }
  });
  const config = JSON.parse(fs.readFileSync(path.join(model.dir, 'config.json'), 'utf8'));
  config[QUANT_CONFIG_KEY] = {
    format: 'dequantized',
    method: report.spec.method,
    spec: report.name,
    wbits: report.spec.wbits,
    abits: report.spec.abits,
    group_size: report.spec.groupSize,
    settings: report.spec,
    calibration: report.calibration ?? null,
    avg_bits: report.avgBits ?? null,
  };
  writeDirAtomically(outDir, (tmp) => {
    writeSafetensors(path.join(tmp, 'model.safetensors'), t, { format: 'pt', lowbit: report.name });
    fs.writeFileSync(path.join(tmp, 'config.json'), JSON.stringify(config, null, 2) + '\n');
    for (const f of TOKENIZER_FILES) {
      const src = path.join(model.dir, f);
      if (fs.existsSync(src)) fs.copyFileSync(src, path.join(tmp, f));
    }
  });
}
