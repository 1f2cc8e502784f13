// Calibration of a sparse (MoE) layer's experts. The router sends each calibration token to k of E
// experts, so an expert may see few tokens or none; statistics from those alone leave it quantized from
// noise (or, in other tools, not at all). By default ('all') every calibration token goes through every
// expert for statistics — the expert's weights are then fitted to the whole input distribution of the
// layer; 'routed' uses only the tokens the router picks (the routing of the model as it runs), falling
// back to all tokens for an expert no token was routed to. Either way the routed counts are reported.
import type { LoadedModel } from '../load/types';
import { addon } from '../native/addon';

export type MoeCalib = 'all' | 'routed';
export const MOE_CALIB_MODES: readonly MoeCalib[] = ['all', 'routed'];

/** One sparse layer's calibration coverage. */
export interface ExpertCoverage {
  layer: number;
  /** Calibration tokens that reached the layer. */
  tokens: number;
  /** Tokens the router sent to each expert. */
  routed: number[];
  /** Tokens each expert's statistics were computed from. */
  statTokens: number[];
}

export interface Routing {
  experts: Int32Array; // [T, k]
  weights: Float32Array; // [T, k]
}

/** The router's choice for rows x [T, hidden] of layer l's MLP input. */
export async function routeTokens(model: LoadedModel, l: number, x: Float32Array): Promise<Routing> {
  return addon.moeRoute(x, { cfg: model.config, layer: model.weights.layers[l] });
}

/** silu(x·gateᵀ)⊙(x·upᵀ): what expert e's down_proj reads for rows x [n, hidden]. */
export async function expertHidden(model: LoadedModel, l: number, e: number, x: Float32Array): Promise<Float32Array> {
  return addon.moeExpertHidden(x, { cfg: model.config, layer: model.weights.layers[l], expert: e });
}

/** Rows `rows` of x [*, cols], gathered. */
export function gatherRows(x: Float32Array, rows: Int32Array, cols: number): Float32Array {
  const out = new Float32Array(rows.length * cols);
  rows.forEach((r, i) => out.set(x.subarray(r * cols, (r + 1) * cols), i * cols));
  return out;
}

/** One calibration batch of a sparse layer's MLP input and where the router sends each of its tokens. */
export class ExpertBatch {
  private constructor(
    readonly x: Float32Array,
    readonly hidden: number,
    /** Token indices per expert, ascending. */
    readonly routedRows: Int32Array[],
  ) {}

  static async of(model: LoadedModel, l: number, x: Float32Array): Promise<ExpertBatch> {
    const { numExperts: E, topK: k } = model.config.moe!;
    const r = await routeTokens(model, l, x);
    const counts = new Int32Array(E);
    for (const e of r.experts) counts[e]++;
    const rows = Array.from(counts, (c) => new Int32Array(c));
    const fill = new Int32Array(E);
    for (let i = 0; i < r.experts.length; i++) {
      const e = r.experts[i];
      rows[e][fill[e]++] = Math.floor(i / k);
    }
    return new ExpertBatch(x, model.config.hiddenSize, rows);
  }

  get tokens(): number {
    return this.x.length / this.hidden;
  }

  /** Expert e's statistics input: every token, or those routed to it. */
  input(e: number, all: boolean): Float32Array {
    return all ? this.x : gatherRows(this.x, this.routedRows[e], this.hidden);
  }
}

/**
 * Accumulates a layer's coverage over calibration batches and decides, per expert, whether its statistics
 * use every token: always in 'all' mode; in 'routed' mode only for experts the router never chose.
 */
export class CoverageCounter {
  readonly routed: number[];
  tokens = 0;

  constructor(
    readonly layer: number,
    numExperts: number,
    readonly mode: MoeCalib,
  ) {
    this.routed = new Array(numExperts).fill(0);
  }

  add(b: ExpertBatch): void {
    this.tokens += b.tokens;
    b.routedRows.forEach((r, e) => (this.routed[e] += r.length));
  }

  /** After the pass: does expert e fall back to (or by mode use) all tokens? */
  usesAll(e: number): boolean {
    return this.mode === 'all' || this.routed[e] === 0;
  }

  report(): ExpertCoverage {
    return {
      layer: this.layer,
      tokens: this.tokens,
      routed: this.routed.slice(),
      statTokens: this.routed.map((n, e) => (this.usesAll(e) ? this.tokens : n)),
    };
  }
}
