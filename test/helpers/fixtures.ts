// Test fixtures: where ../shared is, temporary directories, and small synthetic checkpoints built on the
// fly (nothing large is committed).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { TensorToWrite, writeSafetensors } from '../../lib/load/safetensors';

/** ../shared beside the checkout: /work/main → /work/shared, a worktree /work/wt-x → /work/shared, CI alike. */
export const SHARED_DIR = process.env.LOWBIT_SHARED ?? path.resolve(__dirname, '../../../shared');

export function tmpDir(prefix = 'lowbit-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A safetensors file from a header given verbatim, so tests can write headers that lie. */
export function writeRawSafetensors(file: string, header: unknown, data: Uint8Array, headerText?: string): void {
  const json = Buffer.from(headerText ?? JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, data]));
}

export interface SyntheticModelOptions {
  architecture?: string;
  dtype?: 'F32' | 'BF16' | 'F16';
  tie?: boolean;
  attentionBias?: boolean;
  /** Extra or overriding config.json fields. */
  config?: Record<string, unknown>;
}

export const SYNTH = { hidden: 16, inter: 24, layers: 2, heads: 4, kvHeads: 2, headDim: 8, vocab: 32 };

/**
 * The tensors a model of SYNTH's sizes needs, with deterministic values (i-th element = small
 * multiple of i), and the matching config.json; returned for tests to tamper with before writing.
 */
export function syntheticModel(opts: SyntheticModelOptions = {}): { config: Record<string, unknown>; tensors: Record<string, TensorToWrite> } {
  const arch = opts.architecture ?? 'Qwen3ForCausalLM';
  const dtype = opts.dtype ?? 'BF16';
  const { hidden, inter, layers, heads, kvHeads, headDim, vocab } = SYNTH;
  const tensors: Record<string, TensorToWrite> = {};
  let seed = 1;
  const add = (name: string, shape: number[]): void => {
    const n = shape.reduce((a, b) => a * b, 1);
    const f = new Float32Array(n).map((_, i) => ((i + seed) % 17) / 64 - 0.125);
    seed++;
    if (dtype === 'F32') tensors[name] = { dtype, shape, data: f };
    else tensors[name] = { dtype, shape, data: dtype === 'BF16' ? toBf16(f) : toF16(f) };
  };
  add('model.embed_tokens.weight', [vocab, hidden]);
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}.`;
    add(`${p}input_layernorm.weight`, [hidden]);
    add(`${p}post_attention_layernorm.weight`, [hidden]);
    add(`${p}self_attn.q_proj.weight`, [heads * headDim, hidden]);
    add(`${p}self_attn.k_proj.weight`, [kvHeads * headDim, hidden]);
    add(`${p}self_attn.v_proj.weight`, [kvHeads * headDim, hidden]);
    add(`${p}self_attn.o_proj.weight`, [hidden, heads * headDim]);
    add(`${p}mlp.gate_proj.weight`, [inter, hidden]);
    add(`${p}mlp.up_proj.weight`, [inter, hidden]);
    add(`${p}mlp.down_proj.weight`, [hidden, inter]);
    if (arch === 'Qwen3ForCausalLM') {
      add(`${p}self_attn.q_norm.weight`, [headDim]);
      add(`${p}self_attn.k_norm.weight`, [headDim]);
    }
    if (arch === 'Qwen2ForCausalLM' || opts.attentionBias) {
      add(`${p}self_attn.q_proj.bias`, [heads * headDim]);
      add(`${p}self_attn.k_proj.bias`, [kvHeads * headDim]);
      add(`${p}self_attn.v_proj.bias`, [kvHeads * headDim]);
      if (arch !== 'Qwen2ForCausalLM') add(`${p}self_attn.o_proj.bias`, [hidden]);
    }
  }
  add('model.norm.weight', [hidden]);
  if (!opts.tie) add('lm_head.weight', [vocab, hidden]);
  const config: Record<string, unknown> = {
    architectures: [arch],
    model_type: { Qwen3ForCausalLM: 'qwen3', Qwen2ForCausalLM: 'qwen2', LlamaForCausalLM: 'llama' }[arch] ?? 'unknown',
    hidden_size: hidden,
    intermediate_size: inter,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    head_dim: headDim,
    vocab_size: vocab,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    tie_word_embeddings: opts.tie ?? false,
    attention_bias: opts.attentionBias ?? false,
    max_position_embeddings: 128,
    ...opts.config,
  };
  return { config, tensors };
}

export function writeModelDir(dir: string, model: ReturnType<typeof syntheticModel>): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(model.config, null, 2));
  writeSafetensors(path.join(dir, 'model.safetensors'), model.tensors);
  return dir;
}

/** Round to nearest even, as torch does. */
export function toBf16(f: Float32Array): Uint16Array {
  const u = new Uint32Array(f.buffer, f.byteOffset, f.length);
  return new Uint16Array(f.length).map((_, i) => (u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16);
}

/** Exact only for values representable in f16, which the fixtures' values are (multiples of 1/64 below 1). */
export function toF16(f: Float32Array): Uint16Array {
  return new Uint16Array(f.length).map((_, i) => {
    const x = f[i];
    if (x === 0) return Object.is(x, -0) ? 0x8000 : 0;
    const sign = x < 0 ? 0x8000 : 0;
    const a = Math.abs(x);
    const e = Math.floor(Math.log2(a));
    if (e < -14) return sign | Math.round(a / 2 ** -24);
    return sign | ((e + 15) << 10) | Math.round((a / 2 ** e - 1) * 1024);
  });
}
