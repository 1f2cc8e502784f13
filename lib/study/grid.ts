// The study's grid: which (model, method, bits, group) cells to run. Every model gets a full-precision
// cell first; combinations a method cannot do are listed as skipped with the reason, never dropped.
import * as path from 'path';
import { LowbitError } from '../load/errors';
import { defaultSpec, Method, METHODS, QuantSpec, specName, validateSpec } from '../quant/spec';

export type Family = 'fp' | 'weight' | 'wa' | 'billm';

/** What identifies a cell for the report; `spec` is absent for the full-precision cell. */
export interface CellInfo {
  model: string; // the model directory as given
  modelName: string; // its basename, for tables and plots
  method: Method | 'fp';
  wbits: number; // 16 for full precision
  abits: number; // 0 = activations not quantized
  groupSize: number; // -1 = per output channel
  family: Family;
  label: string; // "fp" or specName(spec)
}

export interface Cell extends CellInfo {
  spec?: QuantSpec;
}

export interface SkippedCell {
  modelName: string;
  method: string;
  wbits: number;
  abits: number;
  groupSize: number;
  label: string;
  reason: string;
}

/** One rectangular block of the grid: methods × wbits × groups (× abits for the W/A methods). */
export interface GridBlock {
  methods: string[];
  wbits: number[];
  groups: number[];
  abits?: number[];
}

export interface GridOptions {
  models: string[];
  blocks: GridBlock[];
  /** Calibration windows for the calibrated methods (the methods' own default when absent). */
  nsamples?: number;
  calibSeqLen?: number;
  seed?: number;
}

export interface Grid {
  cells: Cell[];
  skipped: SkippedCell[];
}

const WEIGHT_ONLY = new Set(['rtn', 'gptq', 'awq']);
const WA = new Set(['smoothquant', 'naive']);

export function familyOf(method: string): Family {
  if (method === 'fp') return 'fp';
  if (WA.has(method)) return 'wa';
  if (method === 'billm') return 'billm';
  return 'weight';
}

export function groupLabel(g: number): string {
  return g === -1 ? 'perchannel' : `g${g}`;
}

function cellLabel(method: string, wbits: number, abits: number, g: number): string {
  return WA.has(method) ? `${method}:w${wbits}a${abits}` + (g === -1 ? '' : groupLabel(g)) : `${method}:w${wbits}${groupLabel(g)}`;
}

/** Why a method cannot run at these settings, or undefined when it can. */
export function skipReason(method: string, wbits: number, abits: number, g: number): string | undefined {
  if (WEIGHT_ONLY.has(method)) {
    if (wbits < 2) return '1-bit weights: use billm';
    return undefined;
  }
  if (WA.has(method)) {
    if (wbits < 2) return '1-bit weights: use billm (symmetric W/A quantization needs ≥ 2 bits)';
    if (g !== -1) return `${method} quantizes weights per output channel; group size ${g} does not apply`;
    return undefined;
  }
  if (method === 'billm') {
    if (wbits !== 1) return 'billm binarizes weights: it runs at 1 bit only';
    if (g === -1) return 'billm works on column blocks: per-channel does not apply (use g128 as its block)';
    return undefined;
  }
  return `unknown method "${method}"`;
}

export function modelName(dir: string): string {
  return path.basename(path.resolve(dir));
}

export function fpCell(model: string): Cell {
  return { model, modelName: modelName(model), method: 'fp', wbits: 16, abits: 0, groupSize: -1, family: 'fp', label: 'fp' };
}

export function expandGrid(opts: GridOptions): Grid {
  for (const b of opts.blocks) {
    for (const m of b.methods) {
      if (!(METHODS as readonly string[]).includes(m)) {
        throw new LowbitError('BAD_ARGUMENT', `unknown method "${m}" (--methods): choose from ${METHODS.join(', ')}`);
      }
    }
    for (const w of b.wbits) if (!Number.isInteger(w) || w < 1 || w > 8) throw new LowbitError('BAD_ARGUMENT', `--wbits must be integers 1..8, got ${w}`);
    for (const g of b.groups) if (!Number.isInteger(g) || (g !== -1 && g < 1)) throw new LowbitError('BAD_ARGUMENT', `--groups must be -1 (per channel) or positive integers, got ${g}`);
    for (const a of b.abits ?? []) if (!Number.isInteger(a) || a < 2 || a > 16) throw new LowbitError('BAD_ARGUMENT', `--abits must be integers 2..16, got ${a}`);
  }
  const cells: Cell[] = [];
  const skipped: SkippedCell[] = [];
  for (const model of opts.models) {
    const name = modelName(model);
    const seen = new Set<string>();
    cells.push(fpCell(model));
    for (const b of opts.blocks) {
      for (const method of b.methods) {
        const abitsList = WA.has(method) ? (b.abits?.length ? b.abits : [8]) : [0];
        for (const wbits of b.wbits) {
          for (const abits of abitsList) {
            for (const g of b.groups) {
              const label = cellLabel(method, wbits, abits, g);
              if (seen.has(label)) continue;
              seen.add(label);
              const reason = skipReason(method, wbits, abits, g);
              if (reason) {
                skipped.push({ modelName: name, method, wbits, abits, groupSize: g, label, reason });
                continue;
              }
              const spec = defaultSpec(method as Method);
              Object.assign(spec, { wbits, abits, groupSize: g });
              if (opts.nsamples !== undefined) spec.nsamples = opts.nsamples;
              if (opts.calibSeqLen !== undefined) spec.calibSeqLen = opts.calibSeqLen;
              if (opts.seed !== undefined) spec.seed = opts.seed;
              validateSpec(spec);
              cells.push({ model, modelName: name, method: spec.method, wbits, abits, groupSize: g, family: familyOf(method), label: specName(spec), spec });
            }
          }
        }
      }
    }
  }
  return { cells, skipped };
}

export const PAPER_TASKS = ['wikitext2', 'c4', 'piqa', 'arc_easy', 'arc_challenge', 'hellaswag', 'winogrande', 'boolq', 'mmlu'];

/** The study's grid: weight-only methods at 8/4/3/2 bits × g128/per-channel, SmoothQuant (and the unsmoothed baseline) at W8A8/W4A8/W4A4, BiLLM at 1 bit. */
export const PAPER_BLOCKS: GridBlock[] = [
  { methods: ['rtn', 'gptq', 'awq'], wbits: [8, 4, 3, 2], groups: [128, -1] },
  { methods: ['smoothquant', 'naive'], wbits: [8], groups: [-1], abits: [8] },
  { methods: ['smoothquant', 'naive'], wbits: [4], groups: [-1], abits: [8, 4] },
  { methods: ['billm'], wbits: [1], groups: [128] },
];

/** The small default job: every method at 8/4/3/2 bits (1 for BiLLM), g128 and per-channel, W·A8 for SmoothQuant. */
export const DEFAULT_BLOCKS: GridBlock[] = [
  { methods: ['rtn', 'gptq', 'awq', 'smoothquant', 'billm'], wbits: [8, 4, 3, 2, 1], groups: [128, -1], abits: [8] },
];
