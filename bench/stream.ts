/**
 * Peak resident memory (max RSS, GNU time) of `lowbit eval` on a synthetic bf16 Qwen3 checkpoint larger than
 * the cap: the resident forward (baseline) against --stream and against --max-memory CAP (streamed on its own,
 * activations spilled to disk when they do not fit either), same model, same windows, same run. Also checks
 * that the three perplexities are identical.
 *
 *   sh bench/stream/run.sh [--layers 16] [--hidden 1024] [--windows 8] [--seqlen 512] [--cap 256M] [--threads 2] [--keep DIR]
 *
 * The weights are random (perplexity means nothing); shapes are Qwen3-0.6B-like with a smaller vocabulary.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { TensorToWrite, writeSafetensors } from '../lib/load/safetensors';

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const ROOT = path.resolve(__dirname, '..', '..', '..');
const layers = Number(arg('layers', '16'));
const hidden = Number(arg('hidden', '1024'));
const windows = arg('windows', '8');
const seqlen = arg('seqlen', '512');
const cap = arg('cap', '256M');
const threads = arg('threads', '2');
const inter = 4 * hidden, heads = hidden / 128, kv = Math.max(1, heads / 2), hd = 128, vocab = 8192;

/** A bf16 tensor of small pseudo-random values (xorshift), so the forward stays finite. */
let state = 0x9e3779b9;
function tensor(shape: number[], scale: number, fill?: number): TensorToWrite {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Uint16Array(n);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < n; i++) {
    state ^= state << 13; state ^= state >>> 17; state ^= state << 5;
    f[0] = fill ?? ((state >>> 0) / 2 ** 32 - 0.5) * scale;
    data[i] = u[0] >>> 16;
  }
  return { dtype: 'BF16', shape, data };
}

function makeModel(dir: string): number {
  fs.mkdirSync(dir, { recursive: true });
  const t: Record<string, TensorToWrite> = { 'model.embed_tokens.weight': tensor([vocab, hidden], 0.1), 'model.norm.weight': tensor([hidden], 0, 1) };
  const s = 1 / Math.sqrt(hidden);
  for (let l = 0; l < layers; l++) {
    const p = `model.layers.${l}.`;
    Object.assign(t, {
      [p + 'input_layernorm.weight']: tensor([hidden], 0, 1),
      [p + 'post_attention_layernorm.weight']: tensor([hidden], 0, 1),
      [p + 'self_attn.q_norm.weight']: tensor([hd], 0, 1),
      [p + 'self_attn.k_norm.weight']: tensor([hd], 0, 1),
      [p + 'self_attn.q_proj.weight']: tensor([heads * hd, hidden], s),
      [p + 'self_attn.k_proj.weight']: tensor([kv * hd, hidden], s),
      [p + 'self_attn.v_proj.weight']: tensor([kv * hd, hidden], s),
      [p + 'self_attn.o_proj.weight']: tensor([hidden, heads * hd], s),
      [p + 'mlp.gate_proj.weight']: tensor([inter, hidden], s),
      [p + 'mlp.up_proj.weight']: tensor([inter, hidden], s),
      [p + 'mlp.down_proj.weight']: tensor([hidden, inter], 1 / Math.sqrt(inter)),
    });
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), t);
  const config = {
    architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3', hidden_size: hidden, intermediate_size: inter, num_hidden_layers: layers,
    num_attention_heads: heads, num_key_value_heads: kv, head_dim: hd, vocab_size: vocab, rms_norm_eps: 1e-6, rope_theta: 1e6,
    tie_word_embeddings: true, max_position_embeddings: 4096,
  };
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(ROOT, 'models', 'qwen3-tiny', f), path.join(dir, f));
  return fs.statSync(path.join(dir, 'model.safetensors')).size;
}

function evalRun(dir: string, extra: string[]): { maxRssMiB: number; ppl: number; mode: string; seconds: number } {
  const args = ['-f', '%M', process.execPath, path.join(ROOT, 'dist', 'cli', 'main.js'), 'eval', dir, '--tasks', 'wikitext2',
    '--max-windows', windows, '--seqlen', seqlen, '--threads', threads, '--device', 'cpu', '--json', ...extra];
  const r = spawnSync('/usr/bin/time', args, { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`eval ${extra.join(' ')} failed: ${r.stderr}`);
  const kb = Number(r.stderr.trim().split('\n').pop());
  const doc = JSON.parse(r.stdout);
  return { maxRssMiB: kb / 1024, ppl: doc.results.wikitext2.ppl, mode: doc.results.wikitext2.mode, seconds: doc.results.wikitext2.seconds };
}

// --keep DIR: write the model there and leave it (for profiling runs by hand).
const keep = arg('keep', '');
const dir = keep || fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-stream-bench-'));
try {
  const bytes = makeModel(dir);
  console.log(`synthetic model: ${layers} layers, hidden ${hidden}, ${(bytes / 2 ** 20).toFixed(0)} MiB bf16; ${windows} windows × ${seqlen}; ${threads} threads; cap ${cap}`);
  const rows = [
    ['resident (baseline)', evalRun(dir, [])],
    ['--stream', evalRun(dir, ['--stream'])],
    [`--max-memory ${cap}`, evalRun(dir, ['--max-memory', cap])],
  ] as const;
  const base = rows[0][1];
  console.log('| run | mode | max RSS MiB | vs resident | eval s | ppl |\n|---|---|---|---|---|---|');
  for (const [name, r] of rows) {
    console.log(`| ${name} | ${r.mode} | ${r.maxRssMiB.toFixed(0)} | ${(r.maxRssMiB / base.maxRssMiB).toFixed(2)} | ${r.seconds.toFixed(1)} | ${r.ppl} |`);
  }
  if (!rows.every(([, r]) => r.ppl === base.ppl)) throw new Error('streamed perplexity differs from the resident one');
} finally {
  if (!keep) fs.rmSync(dir, { recursive: true, force: true });
}
