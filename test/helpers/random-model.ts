// A Qwen3 checkpoint of chosen sizes with small pseudo-random bf16 weights (xorshift), written straight to a
// folder with the bundled model's tokenizer: for memory tests and benchmarks that need a model of a given size.
import * as fs from 'fs';
import * as path from 'path';
import { TensorToWrite, writeSafetensors } from '../../lib/load/safetensors';

export interface RandomModelSize {
  layers: number;
  hidden: number;
  inter: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
}

/** Writes the model into dir (created), with the tokenizer files of tokenizerFrom (a model folder whose
 *  vocabulary covers s.vocab), and returns the safetensors file's size in bytes. */
export function writeRandomQwen3(dir: string, s: RandomModelSize, tokenizerFrom: string, seed = 0x9e3779b9): number {
  let state = seed >>> 0 || 1;
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  const tensor = (shape: number[], scale: number, fill?: number): TensorToWrite => {
    const data = new Uint16Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      f[0] = fill ?? ((state >>> 0) / 2 ** 32 - 0.5) * scale;
      data[i] = u[0] >>> 16;
    }
    return { dtype: 'BF16', shape, data };
  };
  fs.mkdirSync(dir, { recursive: true });
  const { hidden, inter, heads, kvHeads: kv, headDim: hd, vocab } = s;
  const t: Record<string, TensorToWrite> = { 'model.embed_tokens.weight': tensor([vocab, hidden], 0.1), 'model.norm.weight': tensor([hidden], 0, 1) };
  const w = 1 / Math.sqrt(hidden);
  for (let l = 0; l < s.layers; l++) {
    const p = `model.layers.${l}.`;
    Object.assign(t, {
      [p + 'input_layernorm.weight']: tensor([hidden], 0, 1),
      [p + 'post_attention_layernorm.weight']: tensor([hidden], 0, 1),
      [p + 'self_attn.q_norm.weight']: tensor([hd], 0, 1),
      [p + 'self_attn.k_norm.weight']: tensor([hd], 0, 1),
      [p + 'self_attn.q_proj.weight']: tensor([heads * hd, hidden], w),
      [p + 'self_attn.k_proj.weight']: tensor([kv * hd, hidden], w),
      [p + 'self_attn.v_proj.weight']: tensor([kv * hd, hidden], w),
      [p + 'self_attn.o_proj.weight']: tensor([hidden, heads * hd], w),
      [p + 'mlp.gate_proj.weight']: tensor([inter, hidden], w),
      [p + 'mlp.up_proj.weight']: tensor([inter, hidden], w),
      [p + 'mlp.down_proj.weight']: tensor([hidden, inter], 1 / Math.sqrt(inter)),
    });
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), t);
  const config = {
    architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', hidden_size: hidden, intermediate_size: inter, num_hidden_layers: s.layers,
    num_attention_heads: heads, num_key_value_heads: kv, head_dim: hd, vocab_size: vocab, rms_norm_eps: 1e-6, rope_theta: 1e6,
    tie_word_embeddings: true, max_position_embeddings: 4096,
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  for (const file of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(tokenizerFrom, file), path.join(dir, file));
  return fs.statSync(path.join(dir, 'model.safetensors')).size;
}
