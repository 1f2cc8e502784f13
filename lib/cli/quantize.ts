import { Command, Option } from 'commander';
import { MOE_CALIB_MODES, MoeCalib } from '../calibrate/experts';
import { loadCalibration } from '../calibrate/resolve';
import { DeviceSpec, resolveDevice } from '../eval/cuda';
import { evaluate } from '../eval/evaluate';
import { CheckpointWriter, defaultFormat, EXPORT_FORMATS, ExportFormat, SaveResult, storesF16Scales } from '../export/checkpoint';
import { parseBytes } from '../eval/stream';
import { layerLinears } from '../load/linears';
import { LowbitError } from '../load/errors';
import { loadModel } from '../load/model';
import { loadTokenizer } from '../load/tokenizer';
import type { LayerWeights, LoadedModel } from '../load/types';
import { needsCalibration, quantize, QuantizeOptions, QuantizeReport } from '../quant/pipeline';
import { defaultSpec, Method, METHODS, parseSpec, QuantSpec, validateSpec } from '../quant/spec';
import { applyThreads, DEFAULT_DATA_DIR, fail, intOption, interruptSignal, listOption } from './common';
import { createProgress, Progress } from './progress';

export interface QuantCliOptions {
  quant?: string;
  method?: Method;
  wbits?: number;
  abits?: number;
  groupSize?: number;
  sym?: boolean;
  actOrder?: boolean;
  staticGroups?: boolean;
  trueSequential?: boolean;
  damp?: number;
  alpha?: number;
  nsamples?: number;
  calibSeqlen?: number;
  seed?: number;
  calib?: string;
  calibIds?: string;
  moeCalib?: MoeCalib;
  dataDir: string;
}

/** Options shared by `quantize` and `eval --quant`. */
export function addQuantOptions(cmd: Command): Command {
  const float = (name: string) => (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new LowbitError('BAD_ARGUMENT', `${name} must be a number, got "${v}"`);
    return n;
  };
  return cmd
    .option('--quant <spec>', 'METHOD:w<bits>[a<abits>][g<size>|perchannel][,option…], e.g. gptq:w4g128')
    .addOption(new Option('--method <m>', 'quantization method').choices(METHODS as string[]))
    .option('--wbits <n>', 'weight bits 1..8', intOption('--wbits', 1, 8))
    .option('--abits <n>', 'activation bits (smoothquant, naive)', intOption('--abits', 2, 16))
    .option('--group-size <n>', 'input columns per group; -1 = per output channel', intOption('--group-size', -1))
    .option('--sym', 'symmetric weight grid')
    .option('--no-act-order', 'GPTQ: quantize columns in order instead of by descending Hessian diagonal')
    .option('--static-groups', 'GPTQ: group parameters from the weights before any update')
    .option('--no-true-sequential', 'GPTQ/BiLLM: quantize all linears of a layer from the same inputs')
    .option('--damp <f>', 'GPTQ dampening (fraction of the mean Hessian diagonal)', float('--damp'))
    .option('--alpha <f>', 'SmoothQuant migration strength; 0 = no smoothing', float('--alpha'))
    .option('--nsamples <n>', 'calibration windows', intOption('--nsamples', 1))
    .option('--calib-seqlen <n>', 'tokens per calibration window', intOption('--calib-seqlen', 2))
    .option('--seed <n>', 'seed for drawing calibration windows', intOption('--seed', 0))
    .option('--calib <source>', 'calibration text: c4, wikitext2, or a .jsonl/.txt file', undefined)
    .option('--calib-ids <file>', 'raw int16 LE token ids [n, 2048] (e.g. calib_c4_128x2048.i16)')
    .addOption(
      new Option('--moe-calib <mode>', 'MoE models: statistics of each expert from every calibration token (all) or only those routed to it (routed)')
        .choices(MOE_CALIB_MODES as string[]),
    )
    .option('--data-dir <dir>', 'folder with the evaluation/calibration data files', DEFAULT_DATA_DIR);
}

export function specFromOptions(o: QuantCliOptions): QuantSpec | undefined {
  if (!o.quant && !o.method) return undefined;
  const s = o.quant ? parseSpec(o.quant) : defaultSpec(o.method!);
  if (o.quant && o.method && o.method !== s.method) throw new LowbitError('BAD_ARGUMENT', `--method ${o.method} contradicts --quant ${o.quant}`);
  if (o.wbits !== undefined) s.wbits = o.wbits;
  if (o.abits !== undefined) s.abits = o.abits;
  if (o.groupSize !== undefined) s.groupSize = o.groupSize === 0 ? -1 : o.groupSize;
  if (o.sym) s.sym = true;
  if (o.actOrder === false) s.actOrder = false;
  if (o.staticGroups) s.staticGroups = true;
  if (o.trueSequential === false) s.trueSequential = false;
  if (o.damp !== undefined) s.damp = o.damp;
  if (o.alpha !== undefined) s.alpha = o.alpha;
  if (o.nsamples !== undefined) s.nsamples = o.nsamples;
  if (o.calibSeqlen !== undefined) s.calibSeqLen = o.calibSeqlen;
  if (o.seed !== undefined) s.seed = o.seed;
  if (o.moeCalib !== undefined) s.moeCalib = o.moeCalib;
  return validateSpec(s);
}

/** Quantizes `model` in place per the CLI options, with progress on stderr. */
export async function runQuantization(
  model: LoadedModel,
  encode: (t: string) => ArrayLike<number>,
  spec: QuantSpec,
  o: QuantCliOptions,
  progress: Progress,
  signal: AbortSignal,
  device?: DeviceSpec,
  extra: Pick<QuantizeOptions, 'f16Scales' | 'onLayer' | 'memory'> = {},
): Promise<QuantizeReport> {
  const calibration = needsCalibration(spec) ? loadCalibration(model, encode, spec, o) : undefined;
  if (calibration) progress.log(`calibration: ${calibration.nsamples} × ${calibration.seqLen} tokens from ${calibration.source}`);
  progress.start(`quantize ${spec.method}`, model.config.numLayers);
  const report = await quantize(model, spec, {
    calibration,
    signal,
    device,
    ...extra,
    onProgress: (p) => progress.update(p.layer, 0),
  });
  progress.update(model.config.numLayers, 0);
  progress.stop();
  progress.log(`quantized with ${report.name} on ${report.device} in ${report.seconds.toFixed(1)} s${report.avgBits ? ` (${report.avgBits.toFixed(3)} bits/weight)` : ''}${report.activations === 'disk' ? '; calibration activations spilled to disk' : ''}`);
  if (report.experts) progress.log(coverageLine(report.experts));
  return report;
}

/** One line on the experts' calibration: the routed-token spread and the experts the router starved. */
function coverageLine(x: NonNullable<QuantizeReport['experts']>): string {
  const routed = x.layers.flatMap((c) => c.routed).sort((a, b) => a - b);
  const starved = x.layers.reduce((n, c) => n + c.routed.filter((r) => r === 0).length, 0);
  const stats = x.layers.flatMap((c) => c.statTokens);
  return (
    `experts: ${routed.length} in ${x.layers.length} sparse layers; routed calibration tokens per expert min ${routed[0]}, ` +
    `median ${routed[routed.length >> 1]}, max ${routed[routed.length - 1]}; ${starved} got none; ` +
    (x.mode === 'all' ? `statistics from all ${stats[0]} tokens for every expert (--moe-calib all)` : `statistics from routed tokens (--moe-calib routed)${starved ? `, the ${starved} unrouted from all tokens` : ''}`)
  );
}

export function quantSummary(r: QuantizeReport) {
  return {
    spec: r.name,
    settings: r.spec,
    seconds: r.seconds,
    device: r.device,
    calibration: r.calibration ?? null,
    avgBits: r.avgBits ?? null,
    ...(r.activations ? { activations: r.activations } : {}),
    ...(r.experts ? { experts: r.experts } : {}),
  };
}

export function quantizeCommand(): Command {
  const cmd = new Command('quantize')
    .description('quantize a model and write a checkpoint lowbit can evaluate')
    .argument('<model-dir>', 'folder with config.json, *.safetensors and tokenizer.json')
    .requiredOption('--out <dir>', 'output folder (written atomically)')
    .option('--eval <tasks>', 'also evaluate perplexity on these tasks', listOption)
    .option('--max-windows <n>', 'with --eval: at most N windows per task', intOption('--max-windows', 1))
    .option('--threads <n>', 'worker threads (default: one per core)', intOption('--threads', 1, 1024))
    .option('--device <dev>', 'where GPTQ, AWQ, BiLLM and SmoothQuant\'s statistics run: cpu, cuda or cuda:N (default: cuda when a GPU and a CUDA build are there, else cpu); RTN runs on the CPU')
    .addOption(
      new Option('--format <f>', 'checkpoint format: gptq (default when the quantization fits it: 2/3/4/8-bit weight-only), gptq_v2, awq (4-bit, no act-order), lowbit (anything, e.g. BiLLM, SmoothQuant), dequant (fp32 weights)')
        .choices(EXPORT_FORMATS as string[]),
    )
    .option('--max-memory <size>', 'memory quantization may use, e.g. 4G: calibration batches sized to it, calibration activations on disk beyond half of it; with --eval, a larger model is evaluated layer by layer', parseBytes)
    .option('--spill-dir <dir>', 'where calibration (and --eval) activations go when they do not fit in --max-memory (default: the OS temp folder)')
    .option('--json', 'print one JSON document on stdout');
  addQuantOptions(cmd);
  type Opts = QuantCliOptions & { out: string; format?: ExportFormat; threads?: number; device?: string; json?: boolean; eval?: string[]; maxWindows?: number; maxMemory?: number; spillDir?: string };
  return cmd.action(async (modelDir: string, o: Opts) => {
    try {
      const signal = interruptSignal();
      applyThreads(o.threads);
      const spec = specFromOptions(o);
      if (!spec) throw new LowbitError('BAD_ARGUMENT', 'give --quant SPEC or --method (with --wbits, --group-size, …)');
      const device = resolveDevice(o.device);
      const model = loadModel(modelDir);
      const tok = loadTokenizer(modelDir);
      const progress = createProgress();
      const format = o.format ?? defaultFormat(model, spec);
      const memory = { maxMemory: o.maxMemory, spillDir: o.spillDir };
      // Each finished layer goes to the output as soon as it is done, then is dropped (with --eval, all but
      // its packed weights), so memory holds one layer's work and the calibration activations, whatever
      // the model's size.
      const writer = CheckpointWriter.open(model, o.out, spec, { format, onWarning: (m) => progress.log(`warning: ${m}`) });
      let report: QuantizeReport, results, saved: SaveResult;
      try {
        report = await runQuantization(model, (t) => tok.encode(t), spec, o, progress, signal, device, {
          // GPTQ/AWQ store fp16 scales: the model (and --eval) gets exactly the weights the checkpoint loads as.
          f16Scales: storesF16Scales(format),
          memory,
          onLayer: (l) => {
            writer.writeLayer(l);
            releaseLayer(model.weights.layers[l], !!o.eval);
          },
        });
        results = o.eval
          ? await evaluate(model, (t) => tok.encode(t), { tasks: o.eval, dataDir: o.dataDir, maxWindows: o.maxWindows, memory, signal, onTaskStart: (t, n) => progress.start(t, n), onProgress: (p) => progress.update(p.windows, p.tokens) })
          : undefined;
        progress.stop();
        saved = writer.finish(report);
      } catch (e) {
        writer.abort();
        throw e;
      }
      if (o.json) process.stdout.write(JSON.stringify({ model: model.dir, out: o.out, format, quant: quantSummary(report), results }) + '\n');
      else process.stdout.write(`wrote ${o.out} (${report.name}, ${format} format${saved.kinds ? ` ${JSON.stringify(saved.kinds)}` : ''})\n` + (results ? JSON.stringify(results, null, 2) + '\n' : ''));
    } catch (e) {
      fail(e);
    }
  });
}

/** Drops what a written layer no longer needs: everything, or with --eval all but what the forward runs
 *  (packed weights, or the fp32 weight of widths without a kernel). */
function releaseLayer(layer: LayerWeights, forEval: boolean): void {
  for (const { lin } of layerLinears(layer)) Object.assign(lin, forEval ? { quantized: undefined } : { weight: undefined, quantized: undefined, packed: undefined });
}
