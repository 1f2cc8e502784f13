// Quantization settings: the typed options of the API and the compact SPEC strings of the CLI
// (METHOD:w<bits>[a<abits>][g<size>|perchannel][,option…], e.g. gptq:w4g128, smoothquant:w4a8, billm:w1g128).
import { MOE_CALIB_MODES, MoeCalib } from '../calibrate/experts';
import { LowbitError } from '../load/errors';

export type Method = 'rtn' | 'gptq' | 'awq' | 'smoothquant' | 'naive' | 'billm';
export const METHODS: readonly Method[] = ['rtn', 'gptq', 'awq', 'smoothquant', 'naive', 'billm'];

export interface QuantSpec {
  method: Method;
  wbits: number;
  /** Activation bits (smoothquant/naive: per-token dynamic symmetric at every linear input); 0 = none. */
  abits: number;
  /** Input columns per quantization group; -1 = one group per output channel. */
  groupSize: number;
  sym: boolean;
  // GPTQ
  actOrder: boolean;
  staticGroups: boolean;
  trueSequential: boolean;
  damp: number;
  blockSize: number;
  // SmoothQuant: migration strength; 0 disables smoothing (the "naive" W/A fake quantization)
  alpha: number;
  // calibration
  nsamples: number;
  calibSeqLen: number;
  seed: number;
  /** MoE layers: which tokens each expert's statistics come from; absent means 'all' (experts.ts). */
  moeCalib?: MoeCalib;
}

export function defaultSpec(method: Method): QuantSpec {
  const base: QuantSpec = {
    method,
    wbits: 4,
    abits: 0,
    groupSize: 128,
    sym: false,
    actOrder: true,
    staticGroups: false,
    trueSequential: true,
    damp: 0.01,
    blockSize: 128,
    alpha: 0.5,
    nsamples: 128,
    calibSeqLen: 2048,
    seed: 0,
  };
  if (method === 'awq') base.calibSeqLen = 512; // llm-awq: 128 × 512-token samples
  if (method === 'smoothquant' || method === 'naive') Object.assign(base, { wbits: 8, abits: 8, groupSize: -1, sym: true });
  if (method === 'naive') base.alpha = 0;
  if (method === 'billm') Object.assign(base, { wbits: 1, groupSize: 128 });
  return base;
}

function bad(msg: string): never {
  throw new LowbitError('BAD_ARGUMENT', msg);
}

export function validateSpec(s: QuantSpec): QuantSpec {
  if (!METHODS.includes(s.method)) bad(`unknown method "${s.method}": choose one of ${METHODS.join(', ')}`);
  if (!Number.isInteger(s.wbits) || s.wbits < 1 || s.wbits > 8) bad(`--wbits must be an integer 1..8, got ${s.wbits}`);
  if (s.method === 'billm' && s.wbits !== 1) bad('billm binarizes weights: --wbits must be 1');
  if (s.method !== 'billm' && s.method !== 'rtn' && s.wbits < 2) bad(`${s.method} needs --wbits 2..8 (1-bit weights: use billm)`);
  if ((s.method === 'smoothquant' || s.method === 'naive') && s.wbits < 2) bad('symmetric weights need --wbits ≥ 2');
  if (!Number.isInteger(s.abits) || (s.abits !== 0 && (s.abits < 2 || s.abits > 16))) bad(`--abits must be 2..16, got ${s.abits}`);
  if (s.abits && s.method !== 'smoothquant' && s.method !== 'naive') bad(`${s.method} quantizes weights only; --abits needs smoothquant or naive`);
  if ((s.method === 'smoothquant' || s.method === 'naive') && !s.abits) bad(`${s.method} needs --abits`);
  if (!Number.isInteger(s.groupSize) || (s.groupSize !== -1 && s.groupSize < 1)) bad(`--group-size must be -1 (per channel) or a positive integer, got ${s.groupSize}`);
  if ((s.method === 'smoothquant' || s.method === 'naive') && s.groupSize !== -1) {
    bad(`${s.method} quantizes weights per output channel; --group-size ${s.groupSize} does not apply`);
  }
  if (s.method === 'billm' && s.groupSize === -1) bad('billm works on column blocks: give a group size (block), e.g. g128');
  if (!(s.damp > 0 && s.damp < 1)) bad(`--damp must be in (0, 1), got ${s.damp}`);
  if (!(s.alpha >= 0 && s.alpha <= 1)) bad(`--alpha must be in [0, 1], got ${s.alpha}`);
  if (!Number.isInteger(s.nsamples) || s.nsamples < 1) bad(`--nsamples must be a positive integer, got ${s.nsamples}`);
  if (!Number.isInteger(s.calibSeqLen) || s.calibSeqLen < 2) bad(`--calib-seqlen must be ≥ 2, got ${s.calibSeqLen}`);
  if (s.moeCalib !== undefined && !MOE_CALIB_MODES.includes(s.moeCalib)) bad(`--moe-calib must be one of ${MOE_CALIB_MODES.join(', ')}, got "${s.moeCalib}"`);
  // 'all' is the default: stored only when asked otherwise, so specs (and their fingerprints) stay as they were.
  if (s.moeCalib === 'all') delete s.moeCalib;
  return s;
}

/** Parses METHOD:w<bits>[a<abits>][g<size>|perchannel][,sym|asym|act-order|no-act-order|static-groups|no-true-sequential|alpha=…|damp=…|nsamples=…|seed=…|moe-calib=all|routed] */
export function parseSpec(text: string): QuantSpec {
  const m = /^([a-z]+)(?::(.*))?$/.exec(text.trim());
  if (!m) bad(`cannot parse quantization spec "${text}"`);
  const method = m[1] as Method;
  if (!METHODS.includes(method)) bad(`unknown method "${m[1]}" in "${text}": choose one of ${METHODS.join(', ')}`);
  const s = defaultSpec(method);
  const [head, ...opts] = (m[2] ?? '').split(',').map((x) => x.trim());
  if (head) {
    const h = /^w(\d+)(?:a(\d+))?(?:g(\d+)|(perchannel))?$/.exec(head);
    if (!h) bad(`cannot parse "${head}" in "${text}": expected w<bits>[a<abits>][g<size>|perchannel]`);
    s.wbits = Number(h[1]);
    if (h[2]) s.abits = Number(h[2]);
    if (h[3]) s.groupSize = Number(h[3]);
    if (h[4]) s.groupSize = -1;
  }
  for (const o of opts.filter(Boolean)) {
    const [k, v] = o.split('=');
    const num = () => {
      const n = Number(v);
      if (v === undefined || !Number.isFinite(n)) bad(`option "${o}" in "${text}" needs a number`);
      return n;
    };
    switch (k) {
      case 'sym': s.sym = true; break;
      case 'asym': s.sym = false; break;
      case 'act-order': s.actOrder = true; break;
      case 'no-act-order': s.actOrder = false; break;
      case 'static-groups': s.staticGroups = true; break;
      case 'true-sequential': s.trueSequential = true; break;
      case 'no-true-sequential': s.trueSequential = false; break;
      case 'alpha': s.alpha = num(); break;
      case 'damp': s.damp = num(); break;
      case 'block': s.blockSize = num(); break;
      case 'nsamples': s.nsamples = num(); break;
      case 'seqlen': s.calibSeqLen = num(); break;
      case 'seed': s.seed = num(); break;
      case 'moe-calib': s.moeCalib = v as MoeCalib; break;
      default: bad(`unknown option "${o}" in "${text}"`);
    }
  }
  return validateSpec(s);
}

export function specName(s: QuantSpec): string {
  const g = s.groupSize === -1 ? 'perchannel' : `g${s.groupSize}`;
  const moe = s.moeCalib && s.moeCalib !== 'all' ? `,moe-calib=${s.moeCalib}` : '';
  if (s.method === 'smoothquant' || s.method === 'naive') return `${s.method}:w${s.wbits}a${s.abits}${moe}`;
  return `${s.method}:w${s.wbits}${g}${moe}`;
}
