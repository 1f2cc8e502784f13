// config.json → ModelConfig. Defaults follow transformers' config classes for the supported
// architectures, so a config that omits a field means what it means to transformers.
import * as fs from 'fs';
import * as path from 'path';
import { LowbitError, fsReason } from './errors';
import type { Architecture, ModelConfig, MoeConfig } from './types';

export const SUPPORTED_ARCHITECTURES: readonly Architecture[] = ['Qwen3ForCausalLM', 'Qwen2ForCausalLM', 'LlamaForCausalLM', 'Qwen3MoeForCausalLM'];

/** Older or hand-written configs may give only model_type. */
const ARCH_OF_MODEL_TYPE: Record<string, Architecture> = {
  qwen3: 'Qwen3ForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  llama: 'LlamaForCausalLM',
  qwen3_moe: 'Qwen3MoeForCausalLM',
};

/** transformers' defaults where config.json leaves a field out. */
const DEFAULTS: Record<Architecture, { maxPositionEmbeddings: number; rmsNormEps: number }> = {
  Qwen3ForCausalLM: { maxPositionEmbeddings: 32768, rmsNormEps: 1e-6 },
  Qwen2ForCausalLM: { maxPositionEmbeddings: 32768, rmsNormEps: 1e-6 },
  LlamaForCausalLM: { maxPositionEmbeddings: 2048, rmsNormEps: 1e-6 },
  Qwen3MoeForCausalLM: { maxPositionEmbeddings: 32768, rmsNormEps: 1e-6 },
};
const DEFAULT_ROPE_THETA = 10000;

type Json = Record<string, unknown>;

export function parseConfig(dir: string): ModelConfig {
  const file = path.join(dir, 'config.json');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const missing = (e as NodeJS.ErrnoException).code === 'ENOENT';
    throw new LowbitError(
      missing ? 'FILE_NOT_FOUND' : 'BAD_CONFIG',
      missing ? `${file}: not found (a model directory needs config.json)` : `${file}: cannot read (${fsReason(e)})`,
      { cause: e },
    );
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new LowbitError('BAD_CONFIG', `${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new LowbitError('BAD_CONFIG', `${file}: not a JSON object`);
  return configFromJson(raw as Json, file);
}

/** `file` only labels error messages. */
export function configFromJson(c: Json, file: string): ModelConfig {
  const bad = (msg: string): LowbitError => new LowbitError('BAD_CONFIG', `${file}: ${msg}`);
  const unsupported = (msg: string): LowbitError => new LowbitError('UNSUPPORTED', `${file}: ${msg}`);

  const architecture = pickArchitecture(c, file);
  const modelType = typeof c.model_type === 'string' ? c.model_type : '';

  const int = (key: string, fallback?: number): number => {
    const v = c[key] ?? fallback;
    if (v === undefined) throw bad(`"${key}" is missing`);
    if (!Number.isSafeInteger(v) || (v as number) <= 0) throw bad(`"${key}" must be a positive integer, got ${JSON.stringify(v)}`);
    return v as number;
  };
  const num = (key: string, fallback: number): number => {
    const v = c[key] ?? fallback;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw bad(`"${key}" must be a positive number, got ${JSON.stringify(v)}`);
    return v;
  };
  const bool = (key: string, fallback: boolean): boolean => {
    const v = c[key] ?? fallback;
    if (typeof v !== 'boolean') throw bad(`"${key}" must be true or false, got ${JSON.stringify(v)}`);
    return v;
  };

  const hiddenSize = int('hidden_size');
  const numHeads = int('num_attention_heads');
  const numKvHeads = int('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw bad(`"num_attention_heads" (${numHeads}) is not a multiple of "num_key_value_heads" (${numKvHeads})`);
  }
  if (c.head_dim == null && hiddenSize % numHeads !== 0) {
    throw bad(`no "head_dim", and "hidden_size" (${hiddenSize}) is not a multiple of "num_attention_heads" (${numHeads})`);
  }
  const headDim = int('head_dim', hiddenSize / numHeads);

  const act = c.hidden_act ?? 'silu';
  if (act !== 'silu') throw unsupported(`"hidden_act" ${JSON.stringify(act)} is not supported (only "silu")`);
  // Sliding-window attention would change which keys each query sees; we only implement full attention.
  if (c.use_sliding_window === true) throw unsupported(`"use_sliding_window": true is not supported (full attention only)`);
  if (Array.isArray(c.layer_types) && c.layer_types.some((t) => t !== 'full_attention')) {
    throw unsupported(`"layer_types" other than "full_attention" are not supported`);
  }

  const attentionBias = architecture === 'Qwen2ForCausalLM' ? true : bool('attention_bias', false);
  const mlpBias = architecture === 'LlamaForCausalLM' ? bool('mlp_bias', false) : false;
  const isMoe = architecture === 'Qwen3MoeForCausalLM';
  const numLayers = int('num_hidden_layers');

  return {
    architecture,
    modelType,
    hiddenSize,
    // Qwen3-MoE's dense layers (mlp_only_layers) use intermediate_size, 6144 by default.
    intermediateSize: int('intermediate_size', isMoe ? 6144 : undefined),
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: int('vocab_size'),
    rmsNormEps: num('rms_norm_eps', DEFAULTS[architecture].rmsNormEps),
    ropeTheta: ropeTheta(c, file),
    tieWordEmbeddings: bool('tie_word_embeddings', false),
    qkNorm: architecture === 'Qwen3ForCausalLM' || isMoe,
    attentionBias,
    // Qwen2's o_proj never has a bias; Llama's and Qwen3's follow attention_bias.
    oBias: architecture === 'Qwen2ForCausalLM' ? false : attentionBias,
    mlpBias,
    maxPositionEmbeddings: int('max_position_embeddings', DEFAULTS[architecture].maxPositionEmbeddings),
    ...(isMoe ? { moe: moeConfig(c, numLayers, int, bool, bad) } : {}),
  };
}

/** Qwen3MoeConfig's fields and defaults; which layers are sparse follows Qwen3MoeDecoderLayer. */
function moeConfig(
  c: Json,
  numLayers: number,
  int: (key: string, fallback?: number) => number,
  bool: (key: string, fallback: boolean) => boolean,
  bad: (msg: string) => LowbitError,
): MoeConfig {
  // Hub configs say num_experts; transformers 5 saves the same value as num_local_experts.
  if (c.num_experts != null && c.num_local_experts != null && c.num_experts !== c.num_local_experts) {
    throw bad(`"num_experts" (${JSON.stringify(c.num_experts)}) and "num_local_experts" (${JSON.stringify(c.num_local_experts)}) disagree`);
  }
  const numExperts = int(c.num_experts != null ? 'num_experts' : 'num_local_experts', 128);
  const topK = int('num_experts_per_tok', 8);
  if (topK > numExperts) throw bad(`"num_experts_per_tok" (${topK}) exceeds the number of experts (${numExperts})`);
  const step = int('decoder_sparse_step', 1);
  const only = c.mlp_only_layers ?? [];
  if (!Array.isArray(only) || !only.every((l) => Number.isInteger(l) && l >= 0 && l < numLayers)) {
    throw bad(`"mlp_only_layers" must be a list of layer indices in [0, ${numLayers}), got ${JSON.stringify(c.mlp_only_layers)}`);
  }
  const sparseLayers: number[] = [];
  for (let l = 0; l < numLayers; l++) if (!only.includes(l) && (l + 1) % step === 0) sparseLayers.push(l);
  return {
    numExperts,
    topK,
    expertIntermediateSize: int('moe_intermediate_size', 768),
    normTopkProb: bool('norm_topk_prob', false),
    sparseLayers,
  };
}

function pickArchitecture(c: Json, file: string): Architecture {
  const listed = Array.isArray(c.architectures) ? c.architectures : [];
  const supported = SUPPORTED_ARCHITECTURES.join(', ');
  if (listed.length > 0) {
    const arch = listed[0];
    if (!SUPPORTED_ARCHITECTURES.includes(arch)) {
      throw new LowbitError('UNSUPPORTED', `${file}: architecture ${JSON.stringify(arch)} is not supported (supported: ${supported})`);
    }
    return arch as Architecture;
  }
  const fromType = typeof c.model_type === 'string' ? ARCH_OF_MODEL_TYPE[c.model_type] : undefined;
  if (!fromType) {
    throw new LowbitError(
      'UNSUPPORTED',
      `${file}: no "architectures" and model_type ${JSON.stringify(c.model_type)} is not supported (supported: ${supported})`,
    );
  }
  return fromType;
}

/**
 * transformers 5 nests RoPE settings in `rope_parameters`; 4.x has top-level `rope_theta` and `rope_scaling`.
 * Only unscaled RoPE is implemented: a scaled one (llama3, yarn, linear, dynamic) would silently give wrong
 * positions for long contexts, so it is refused by name.
 */
function ropeTheta(c: Json, file: string): number {
  const params = (c.rope_parameters ?? null) as Json | null;
  const scaling = (c.rope_scaling ?? null) as Json | null;
  for (const [key, p] of [['rope_parameters', params], ['rope_scaling', scaling]] as const) {
    if (p === null) continue;
    if (typeof p !== 'object') throw new LowbitError('BAD_CONFIG', `${file}: "${key}" must be an object`);
    const type = p.rope_type ?? p.type ?? 'default';
    if (type !== 'default') {
      throw new LowbitError('UNSUPPORTED', `${file}: "${key}.rope_type" ${JSON.stringify(type)} is not supported (only "default", unscaled RoPE)`);
    }
  }
  const theta = params?.rope_theta ?? c.rope_theta ?? DEFAULT_ROPE_THETA;
  if (typeof theta !== 'number' || !Number.isFinite(theta) || theta <= 0) {
    throw new LowbitError('BAD_CONFIG', `${file}: "rope_theta" must be a positive number, got ${JSON.stringify(theta)}`);
  }
  return theta;
}
