// The shapes the pipeline passes around: a normalized architecture config and the model's weights as
// views into memory-mapped checkpoint files (never copied as a whole).
import type { Weight } from '../native/addon';
import type { QuantizedTensor } from '../quant/weights';

export type { QuantizedTensor };

export type Architecture = 'Qwen3ForCausalLM' | 'Qwen2ForCausalLM' | 'LlamaForCausalLM' | 'Qwen3MoeForCausalLM';

export interface ModelConfig {
  architecture: Architecture;
  modelType: string; // config.json model_type
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number; // config head_dim, else hidden_size / num_attention_heads
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number; // from rope_theta or rope_parameters.rope_theta
  tieWordEmbeddings: boolean;
  qkNorm: boolean; // Qwen3: per-head RMSNorm on q and k before RoPE
  attentionBias: boolean; // q/k/v have biases: always for Qwen2, per attention_bias for Llama/Qwen3
  oBias: boolean; // o_proj has a bias: attention_bias for Llama/Qwen3, never for Qwen2
  mlpBias: boolean; // gate/up/down have biases: Llama mlp_bias
  maxPositionEmbeddings: number;
  /** Qwen3-MoE: the sparse MLP of the layers listed in `sparseLayers` (the others keep a dense MLP). */
  moe?: MoeConfig;
}

export interface MoeConfig {
  numExperts: number; // num_experts (transformers 5 writes num_local_experts)
  topK: number; // num_experts_per_tok
  expertIntermediateSize: number; // moe_intermediate_size
  /** Renormalize the top-k routing probabilities to sum to 1. */
  normTopkProb: boolean;
  /** Layer indices with a sparse MLP: (l+1) % decoder_sparse_step == 0 and l not in mlp_only_layers. */
  sparseLayers: number[];
}

export type LinearName = 'q' | 'k' | 'v' | 'o' | 'gate' | 'up' | 'down';
export const LINEAR_NAMES: readonly LinearName[] = ['q', 'k', 'v', 'o', 'gate', 'up', 'down'];
export type MlpLinearName = 'gate' | 'up' | 'down';
export const MLP_LINEAR_NAMES: readonly MlpLinearName[] = ['gate', 'up', 'down'];
/** HF tensor names of each linear inside a decoder layer. */
export const LINEAR_TENSORS: Record<LinearName, string> = {
  q: 'self_attn.q_proj',
  k: 'self_attn.k_proj',
  v: 'self_attn.v_proj',
  o: 'self_attn.o_proj',
  gate: 'mlp.gate_proj',
  up: 'mlp.up_proj',
  down: 'mlp.down_proj',
};

/**
 * One linear layer: weight [outFeatures, inFeatures] row-major, optional bias [outFeatures] (fp32).
 * A quantized linear (quantized in memory, or loaded from a GPTQ/AWQ/lowbit checkpoint) also carries its
 * integers, scales, zeros and g_idx; `weight` is then their fp32 dequantization.
 */
export interface Linear {
  weight: Weight;
  quantized?: QuantizedTensor;
  bias?: Float32Array;
  outFeatures: number;
  inFeatures: number;
}

export interface LayerWeights {
  inputNorm: Float32Array; // [hidden]
  postAttnNorm: Float32Array; // [hidden]
  qNorm?: Float32Array; // [headDim], Qwen3
  kNorm?: Float32Array; // [headDim], Qwen3
  /** A sparse (MoE) layer has no dense gate/up/down: its MLP is `moe`. */
  linears: Record<Exclude<LinearName, MlpLinearName>, Linear> & Partial<Record<MlpLinearName, Linear>>;
  moe?: MoeWeights;
}

/** A sparse MLP: the router (kept in full precision, never quantized) and each expert's SwiGLU linears. */
export interface MoeWeights {
  router: Weight; // mlp.gate.weight [numExperts, hidden]
  experts: Record<MlpLinearName, Linear>[];
}

export interface ModelWeights {
  embed: Weight; // [vocab, hidden]
  layers: LayerWeights[];
  finalNorm: Float32Array; // [hidden]
  lmHead: Weight; // [vocab, hidden]; the embedding itself when tied
}

export interface LoadedModel {
  dir: string;
  config: ModelConfig;
  weights: ModelWeights;
  /** Every file the weights came from, for fingerprints and error messages. */
  files: string[];
  quantization?: QuantizationState;
}

/** Set once a model has been quantized (in memory or loaded from a lowbit checkpoint). */
export interface QuantizationState {
  spec: import('../quant/spec').QuantSpec;
  /** Activation fake-quantization bits the forward applies at every linear input (0: none). */
  actBits: number;
}
