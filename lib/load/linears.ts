// Every linear of a decoder layer under its checkpoint name: the attention projections, then either the
// dense MLP's or, in a sparse (MoE) layer, each expert's gate/up/down. The router is not among them: it
// is never quantized.
import { LINEAR_NAMES, LINEAR_TENSORS, LayerWeights, Linear, LinearName, MLP_LINEAR_NAMES, MlpLinearName } from './types';

export interface LinearRef {
  /** Tensor name inside the layer, without `.weight`: 'self_attn.q_proj', 'mlp.experts.3.up_proj'. */
  path: string;
  kind: LinearName;
  expert?: number;
  lin: Linear;
}

export function expertTensor(expert: number, kind: MlpLinearName): string {
  return `mlp.experts.${expert}.${kind}_proj`;
}

export function layerLinears(layer: LayerWeights): LinearRef[] {
  const refs: LinearRef[] = [];
  for (const kind of LINEAR_NAMES) {
    const lin = layer.linears[kind];
    if (lin) refs.push({ path: LINEAR_TENSORS[kind], kind, lin });
  }
  layer.moe?.experts.forEach((ex, expert) => {
    for (const kind of MLP_LINEAR_NAMES) refs.push({ path: expertTensor(expert, kind), kind, expert, lin: ex[kind] });
  });
  return refs;
}

/** A dense layer's MLP linear; a clear error (not a crash) where a sparse layer has none. */
export function denseMlp(layer: LayerWeights, kind: MlpLinearName, where: string): Linear {
  const lin = layer.linears[kind];
  if (!lin) throw new Error(`${where}: a sparse (MoE) layer has no dense ${kind}_proj`);
  return lin;
}
