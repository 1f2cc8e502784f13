// quantize() leaves quantized linears packed (no fp32 weight). Tests that compare the packed kernels with
// the fake-quantized model, or read dense weights, expand them back: dequantize() is bit-exact with the
// fp32 weights the quantizers compute (test/formats.test.ts), and BiLLM's binary tensors are decoded by the
// independent decoder of test/helpers/binary.ts.
import { dequantize } from '../../lib/export/pack';
import { layerLinears } from '../../lib/load/linears';
import type { LoadedModel } from '../../lib/load/types';
import type { PackedLinear } from '../../lib/quant/packed';
import { decodeBinary } from './binary';

/** A linear's fp32 weights, dequantized (or decoded) where it runs packed. */
export function denseWeight(lin: PackedLinear): Float32Array {
  if (lin.weight) return lin.weight as Float32Array;
  return lin.binary ? decodeBinary(lin.binary, lin.outFeatures, lin.inFeatures) : dequantize(lin.quantized!, lin.inFeatures);
}

/** Expands every packed linear of the model to its fp32 weights; returns how many were packed. */
export function expandPacked(model: LoadedModel): number {
  let n = 0;
  for (const layer of model.weights.layers) {
    for (const { lin } of layerLinears(layer) as { lin: PackedLinear }[]) {
      if (!lin.packed) continue;
      lin.weight = denseWeight(lin);
      lin.packed = undefined;
      n++;
    }
  }
  return n;
}
