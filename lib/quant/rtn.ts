// Round-to-nearest: each weight group quantized on its own min/max grid, no calibration.
import type { Linear } from '../load/types';
import { addon } from '../native/addon';
import type { QuantSpec } from './spec';
import { install, QuantizedTensor } from './weights';

export type Grid = 'gptq' | 'awq' | 'absmax';

export async function rtnQuantize(
  w: Linear['weight'],
  rows: number,
  cols: number,
  bits: number,
  groupSize: number,
  opts: { sym?: boolean; grid?: Grid } = {},
): Promise<{ weight: Float32Array; q: QuantizedTensor }> {
  const r = await addon.quantizeRtn(w, { rows, cols, bits, groupSize, sym: !!opts.sym, grid: opts.grid ?? 'gptq' });
  return {
    weight: r.weight,
    q: { bits, groupSize, sym: opts.grid === 'absmax' || !!opts.sym, qweight: r.qweight, scales: r.scales, zeros: r.zeros },
  };
}

export async function rtnLinear(lin: Linear, spec: QuantSpec, grid: Grid = 'gptq'): Promise<void> {
  const { weight, q } = await rtnQuantize(lin.weight, lin.outFeatures, lin.inFeatures, spec.wbits, spec.groupSize, { sym: spec.sym, grid });
  install(lin, weight, q);
}
