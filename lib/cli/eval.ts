import { Command } from 'commander';
import { deviceName, firstLinearWithoutWeight, GPU_DTYPES, GpuDType, GpuModelInfo, resolveDevice, toDevice } from '../eval/cuda';
import { evaluate, TaskResult } from '../eval/evaluate';
import { TASKS, TASK_NAMES } from '../eval/tasks/registry';
import { loadModel, scanNonFinite } from '../load/model';
import { loadTokenizer } from '../load/tokenizer';
import { planMemory, parseBytes, scanNonFiniteStreaming } from '../eval/stream';
import { applyThreads, fail, gpuDtypeOption, intOption, interruptSignal, listOption } from './common';
import { createProgress } from './progress';
import { addQuantOptions, QuantCliOptions, quantSummary, runQuantization, specFromOptions } from './quantize';

interface EvalCliOptions extends QuantCliOptions {
  tasks: string[];
  seqlen: number;
  maxWindows?: number;
  limit?: number;
  threads?: number;
  json?: boolean;
  device?: string;
  dtype: GpuDType;
  fp32Activations?: boolean;
  stream?: boolean;
  maxMemory?: number;
  spillDir?: string;
}

export function evalCommand(): Command {
  const cmd = new Command('eval')
    .description('perplexity (GPTQ protocol) and zero-/few-shot accuracy (lm-evaluation-harness) of a model')
    .argument('<model-dir>', 'folder with config.json, *.safetensors and tokenizer.json')
    .option('--tasks <list>', `comma-separated tasks: ${TASK_NAMES.join(',')}`, listOption, ['wikitext2', 'c4'])
    .option('--seqlen <n>', 'tokens per window', intOption('--seqlen', 2, 1 << 20), 2048)
    .option('--max-windows <n>', 'score at most N windows per task', intOption('--max-windows', 1))
    .option('--limit <n>', 'lm-eval tasks: the first N documents of each (mmlu: of each subject)', intOption('--limit', 1))
    .option('--threads <n>', 'worker threads (default: one per core)', intOption('--threads', 1, 1024))
    .option('--device <dev>', 'cpu, cuda, cuda:N, or cuda:N,M… (split by layers only across these when the model does not fit on the first; default: cuda when a GPU and a CUDA build are there, else cpu)')
    .option('--dtype <t>', `weights and activations on the GPU: ${GPU_DTYPES.join(', ')} (fp32 accumulation)`, gpuDtypeOption, 'bf16')
    .option('--fp32-activations', 'with --dtype bf16/fp16 on the GPU: keep activations fp32 (closer to fp32, slower)')
    .option('--stream', 'run all windows through one layer before the next, so only one layer is resident (models larger than memory; CPU)')
    .option('--max-memory <size>', 'memory the evaluation may use, e.g. 4G; a larger model is streamed layer by layer', parseBytes)
    .option('--spill-dir <dir>', 'with streaming: where activations go when they do not fit in --max-memory (default: the OS temp folder)')
    .option('--json', 'print exactly one JSON document on stdout')
    .addHelpText('after', '\nTasks:\n' + TASK_NAMES.map((t) => `  ${t.padEnd(15)} ${TASKS[t].description}`).join('\n'));
  addQuantOptions(cmd);
  return cmd.action(async (modelDir: string, o: EvalCliOptions) => {
      try {
        const signal = interruptSignal();
        const t0 = performance.now();
        const threads = applyThreads(o.threads);
        let device = resolveDevice(o.device);
        let gpu: GpuModelInfo | undefined;
        const model = await loadModel(modelDir);
        const tok = await loadTokenizer(modelDir);
        const progress = createProgress(process.stderr, false);
        const spec = specFromOptions(o);
        const memory = { stream: o.stream, maxMemory: o.maxMemory, spillDir: o.spillDir };
        const streaming = planMemory(model, 0, 0, memory).mode !== 'resident';
        const bad = streaming ? scanNonFiniteStreaming(model) : scanNonFinite(model);
        if (bad.length) progress.log(`lowbit: warning: non-finite values (NaN/Inf) in ${bad.map((b) => `${b.name} (${b.count})`).join(", ")}; results will be NaN`);
        const quant = spec ? quantSummary(await runQuantization(model, (t) => tok.encode(t), spec, o, progress, signal, device, { memory })) : undefined;
        if (device.type === 'cuda') {
          const bare = firstLinearWithoutWeight(model);
          const onCpu = model.config.moe
              ? 'Qwen3-MoE (sparse) layers run on the CPU path'
              : streaming
                ? 'layer streaming runs on the CPU path'
                : bare
                  ? `${bare} has no weight the GPU can take`
                  : undefined;
          if (onCpu) {
            progress.log(`lowbit: note: ${onCpu}; evaluating on the CPU`);
            device = { type: 'cpu' };
          } else {
            gpu = (await toDevice(model, device, { dtype: o.dtype, actFp32: o.fp32Activations }))?.info();
            if (gpu?.mode === 'layer-split') {
              progress.log(`lowbit: note: the model does not fit on cuda:${gpu.devices[0]}; its layers are split across ${gpu.devices.map((d, i) => `cuda:${d} (${gpu!.layersPerDevice[i]})`).join(', ')}`);
            }
          }
        }
        const results = await evaluate(model, (t) => tok.encode(t), {
          tasks: o.tasks,
          dataDir: o.dataDir,
          seqLen: o.seqlen,
          maxWindows: o.maxWindows,
          limit: o.limit,
          memory,
          signal,
          onTaskStart: (task, total) => progress.start(task, total),
          onProgress: (p) => progress.update(p.windows, p.tokens),
        });
        progress.stop();
        const seconds = (performance.now() - t0) / 1000;
        if (o.json) {
          process.stdout.write(JSON.stringify({ model: model.dir, ...(quant ? { quant } : {}), device: deviceName(device), ...(device.type === 'cuda' ? { dtype: o.dtype, fp32Activations: !!o.fp32Activations || o.dtype === 'fp32' } : {}), ...(gpu ? { gpu: { mode: gpu.mode, devices: gpu.devices, layersPerDevice: gpu.layersPerDevice } } : {}), threads, results, seconds }) + '\n');
        } else {
          printTable(model.dir + (quant ? ` (${quant.spec})` : '') + ` on ${deviceName(device)}${device.type === 'cuda' ? ` (${o.dtype})` : ''}`, results, seconds);
        }
        if (bad.length) process.exitCode = 2;
      } catch (e) {
        fail(e);
      }
    });
}

function printTable(model: string, results: Record<string, TaskResult>, seconds: number): void {
  const f = (x: number | null | undefined, d = 4) => (x === undefined ? '–' : x === null || !Number.isFinite(x) ? 'NaN' : x.toFixed(d));
  const lines = [`model: ${model}`, 'task            ppl        acc      acc_norm  n/windows  tokens     seconds  mode'];
  const row = (name: string, r: TaskResult) =>
    `${name.padEnd(16)}${f(r.ppl, 3).padEnd(11)}${f(r.acc).padEnd(9)}${f(r.acc_norm).padEnd(10)}${String(r.windows ?? r.n ?? '–').padEnd(11)}${String(r.tokens ?? '–').padEnd(11)}${r.seconds.toFixed(1).padEnd(9)}${r.mode ?? ''}`;
  for (const [task, r] of Object.entries(results)) {
    lines.push(row(task, r));
    if (r.categories) {
      for (const [c, g] of Object.entries(r.categories)) lines.push(`${('  ' + c).padEnd(18)}${'–'.padEnd(9)}${g.acc.toFixed(4).padEnd(9)}${'–'.padEnd(10)}${g.n}`);
    }
  }
  lines.push(`total ${seconds.toFixed(1)} s`);
  process.stdout.write(lines.join('\n') + '\n');
}
