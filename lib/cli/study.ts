import { Command, Option } from 'commander';
import * as path from 'path';
import * as evalModule from '../eval/evaluate';
import { LowbitError } from '../load/errors';
import { DEFAULT_BLOCKS, expandGrid, GridBlock, PAPER_BLOCKS, PAPER_TASKS } from '../study/grid';
import { writeReport } from '../study/report';
import { GPU_DTYPES, GpuDType, parseDevice, resolveDevice } from '../eval/cuda';
import type { GpuBackend } from '../study/fingerprint';
import { runStudy, StudyOptions } from '../study/runner';
import { applyThreads, DEFAULT_DATA_DIR, DEFAULT_MODEL_DIR, fail, gpuDtypeOption, intOption, interruptSignal, listOption } from './common';
import { createProgress } from './progress';

interface StudyCliOptions {
  models?: string[];
  methods?: string[];
  wbits?: number[];
  groups?: number[];
  abits?: number[];
  tasks?: string[];
  maxWindows?: number;
  seqlen?: number;
  limit?: number;
  nsamples?: number;
  calibSeqlen?: number;
  seed?: number;
  calibIds?: string;
  calib?: string;
  dataDir: string;
  out: string;
  preset?: 'paper' | 'default';
  retryFailed?: boolean;
  threads?: number;
  png?: boolean;
  json?: boolean;
  device: string;
  dtype: GpuDType;
  fp32Activations?: boolean;
  redis?: string;
  queue: string;
}

const intList = (name: string, min: number, max: number) => (v: string): number[] =>
  listOption(v).map((x) => {
    const n = Number(x);
    if (!Number.isInteger(n) || n < min || n > max) throw new LowbitError('BAD_ARGUMENT', `${name} takes integers in [${min}, ${max}], got "${x}"`);
    return n;
  });

/** The bundled data's calibration ids; the presets calibrate from them. */
const BUNDLED_CALIB_IDS = path.join(DEFAULT_DATA_DIR, 'calib_c4_128x2048.i16');

interface Preset {
  models: string[];
  blocks: GridBlock[];
  tasks: string[];
  maxWindows?: number;
  seqlen: number;
  limit?: number;
  nsamples?: number;
  calibIds?: string;
}

const DEFAULT_TASKS = ['wikitext2', 'c4', 'piqa', 'arc_easy', 'arc_challenge', 'hellaswag', 'winogrande', 'boolq', 'lambada_openai'];

const PRESETS: Record<'paper' | 'default', Preset> = {
  // The study as published: full evaluation (all windows, all examples), 128 calibration windows.
  paper: { models: [DEFAULT_MODEL_DIR], blocks: PAPER_BLOCKS, tasks: PAPER_TASKS, seqlen: 2048, calibIds: BUNDLED_CALIB_IDS },
  // The small default job on the bundled model (npm start), sized for ~10 minutes on 2 cores: 2 perplexity
  // windows of 2048 tokens per task, 8 calibration windows, the zero-shot tasks on 100 examples each.
  // 5-shot MMLU (≈ 0.15 s a question here) is left to --preset paper or --tasks.
  default: {
    models: [DEFAULT_MODEL_DIR],
    blocks: DEFAULT_BLOCKS,
    tasks: DEFAULT_TASKS,
    maxWindows: 2,
    seqlen: 2048,
    limit: 100,
    nsamples: 8,
    calibIds: BUNDLED_CALIB_IDS,
  },
};

/** Tasks this build's evaluate() knows; a preset's unknown tasks are left out with a note, explicit ones are an error. */
function knownTasks(tasks: string[]): { known: string[]; unknown: string[] } {
  const check = (evalModule as { checkTasks?: (t: string[]) => unknown }).checkTasks;
  if (typeof check !== 'function') return { known: tasks, unknown: [] };
  const known: string[] = [];
  const unknown: string[] = [];
  for (const t of tasks) {
    try {
      check([t]);
      known.push(t);
    } catch {
      unknown.push(t);
    }
  }
  return { known, unknown };
}

export function studyCommand(): Command {
  return new Command('study')
    .description('run a quantization study (models × methods × bits × groups), resumable, with a report and plots')
    .option('--models <dirs>', 'comma-separated model folders', listOption)
    .option('--methods <list>', 'rtn,gptq,awq,smoothquant,naive,billm', listOption)
    .option('--wbits <list>', 'weight bits, e.g. 8,4,3,2,1', intList('--wbits', 1, 8))
    .option('--groups <list>', 'group sizes, -1 = per output channel, e.g. -1,128', intList('--groups', -1, 1 << 20))
    .option('--abits <list>', 'activation bits for smoothquant/naive, e.g. 8,4', intList('--abits', 2, 16))
    .option('--tasks <list>', 'evaluation tasks, e.g. wikitext2,c4,piqa', listOption)
    .option('--max-windows <n>', 'perplexity: at most N windows per task', intOption('--max-windows', 1))
    .option('--seqlen <n>', 'perplexity: tokens per window', intOption('--seqlen', 2, 1 << 20))
    .option('--limit <n>', 'zero-shot tasks: at most N examples each', intOption('--limit', 1))
    .option('--nsamples <n>', 'calibration windows', intOption('--nsamples', 1))
    .option('--calib-seqlen <n>', 'tokens per calibration window (default: each method\'s own)', intOption('--calib-seqlen', 2))
    .option('--seed <n>', 'seed for drawing calibration windows', intOption('--seed', 0))
    .option('--calib-ids <file>', 'raw int16 LE calibration ids [n, 2048]')
    .option('--calib <source>', 'calibration text: c4, wikitext2, or a .jsonl/.txt file')
    .option('--data-dir <dir>', 'folder with the evaluation/calibration data files', DEFAULT_DATA_DIR)
    .requiredOption('--out <dir>', 'study folder: results.log (resumable), report.md, results.csv, plots/')
    .addOption(new Option('--preset <name>', 'a whole grid: paper (the study) or default (small job on the bundled model)').choices(['paper', 'default']))
    .option('--retry-failed', 'run again the cells that failed before')
    .option('--no-png', 'plots as SVG only')
    .option('--threads <n>', 'worker threads (default: one per core)', intOption('--threads', 1, 1024))
    .option('--json', 'print one JSON document on stdout (the records) instead of the tables')
    .option('--device <dev>', 'evaluate (and run GPTQ/AWQ/SmoothQuant calibration) on cpu, or cuda[:N[,M…]] (a GPU: part of each cell\'s fingerprint, as GPU numbers differ slightly)', 'cpu')
    .option('--dtype <t>', `with --device cuda: ${GPU_DTYPES.join(', ')}`, gpuDtypeOption, 'bf16')
    .option('--fp32-activations', 'with --device cuda and --dtype bf16/fp16: keep activations fp32')
    .option('--redis <url>', 'distributed: queue the cells in this Redis for `lowbit worker`s and collect their results here')
    .option('--queue <name>', 'with --redis: queue name shared with the workers', 'lowbit')
    .action(async (o: StudyCliOptions) => {
      try {
        const signal = interruptSignal();
        applyThreads(o.threads);
        const progress = createProgress(process.stderr, false);
        const preset = o.preset ? PRESETS[o.preset] : undefined;
        const gridGiven = o.methods || o.wbits || o.groups || o.abits;
        let blocks: GridBlock[];
        if (gridGiven || !preset) {
          if (!o.methods) throw new LowbitError('BAD_ARGUMENT', 'give --methods (and --wbits, --groups) or --preset paper|default');
          blocks = [{ methods: o.methods, wbits: o.wbits ?? [8, 4, 3, 2], groups: o.groups ?? [128, -1], abits: o.abits }];
        } else blocks = preset.blocks;
        const models = o.models ?? preset?.models ?? [DEFAULT_MODEL_DIR];
        let tasks = o.tasks ?? preset?.tasks ?? ['wikitext2', 'c4'];
        const { known, unknown } = knownTasks(tasks);
        if (unknown.length) {
          if (o.tasks) throw new LowbitError('BAD_ARGUMENT', `unknown task(s) ${unknown.join(', ')} (--tasks)`);
          progress.log(`study: this build has no ${unknown.join(', ')}; the preset runs without them`);
          tasks = known;
        }
        const nsamples = o.nsamples ?? preset?.nsamples;
        const grid = expandGrid({ models, blocks, nsamples, calibSeqLen: o.calibSeqlen, seed: o.seed });
        const calibIds = o.calibIds ?? (o.calib ? undefined : preset?.calibIds);
        const device = parseDevice(o.device);
        // A distributed study's GPUs are the workers'; only a local one needs its own.
        if (device.type === 'cuda' && !o.redis) resolveDevice(o.device);
        const backend: GpuBackend | undefined = device.type === 'cuda' ? { type: 'cuda', dtype: o.dtype, actFp32: !!o.fp32Activations || o.dtype === 'fp32' } : undefined;
        const studyOpts: StudyOptions = {
          dir: o.out,
          grid,
          eval: { tasks, seqLen: o.seqlen ?? preset?.seqlen ?? 2048, maxWindows: o.maxWindows ?? preset?.maxWindows, limit: o.limit ?? preset?.limit, dataDir: o.dataDir, backend },
          calibIds,
          calib: o.calib,
          retryFailed: o.retryFailed,
          gpu: device.type === 'cuda' ? device : undefined,
          signal,
          progress,
        };
        // BullMQ and ioredis load only when used: they add ~0.1 s to every start of the CLI.
        // eslint-disable-next-line @typescript-eslint/no-var-requires
        const distributed = o.redis ? (require('../study/distributed') as typeof import('../study/distributed')) : undefined;
        const summary = distributed ? await distributed.runDistributedStudy({ ...studyOpts, redis: o.redis!, queue: o.queue }) : await runStudy(studyOpts);
        const rep = writeReport(o.out, { png: o.png });
        for (const w of rep.warnings) progress.log(`study: warning: ${w}`);
        const line =
          `study: ${summary.done}/${summary.total} cells done (${summary.ran} run now, ${summary.failed} failed, ${summary.skipped} combinations skipped) ` +
          `in ${summary.seconds.toFixed(1)} s; report ${rep.reportPath}, table ${rep.csvPath}, plots ${rep.plotsDir}`;
        if (o.json) {
          process.stdout.write(JSON.stringify({ out: path.resolve(o.out), summary, report: rep.reportPath, csv: rep.csvPath, plots: rep.plots, models: rep.data.models }) + '\n');
          progress.log(line);
        } else {
          process.stdout.write(rep.markdown + '\n' + line + '\n');
        }
        if (summary.failed) process.exitCode = 3;
      } catch (e) {
        fail(e);
      }
    });
}
