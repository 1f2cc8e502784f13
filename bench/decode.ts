/**
 * Token-by-token decode speed (batch 1, KV cache, greedy) of a model in fp32, w4 (rtn:w4g128 → packed
 * 4-bit kernels) and w8a8 (naive:w8a8 → int8 weights × int8 activations), same machine, same run.
 *
 *   sh bench/decode/run.sh [--model /work/shared/models/qwen3-small] [--prompt 32] [--gen 128] [--threads 1,2] [--reps 3]
 *
 * tokens/s counts the generated positions only (the prompt is fed through the same decode step first);
 * each figure is the best of --reps runs (the machine is shared).
 */
import * as path from 'path';
import { createKvCache, decodeStep } from '../lib/eval/decode';
import { loadModel } from '../lib/load/model';
import { LoadedModel } from '../lib/load/types';
import { addon } from '../lib/native/addon';
import { attachPacked } from '../lib/quant/packed';
import { quantize } from '../lib/quant/pipeline';
import { parseSpec } from '../lib/quant/spec';
import { arg } from './args';

async function variant(dir: string, spec: string | null): Promise<LoadedModel> {
  const model = loadModel(dir);
  if (spec) {
    await quantize(model, parseSpec(spec));
    attachPacked(model);
  }
  return model;
}

/** Seconds for `gen` greedy positions after a `prompt`-token prompt; returns the tokens too. */
async function run(model: LoadedModel, prompt: Int32Array, gen: number): Promise<{ s: number; tokens: Int32Array }> {
  const cache = createKvCache(model, prompt.length + gen);
  let next = 0;
  for (let i = 0; i < prompt.length; i++) next = (await decodeStep(model, prompt[i], i, cache)).next;
  const tokens = new Int32Array(gen);
  const t0 = process.hrtime.bigint();
  for (let s = 0; s < gen; s++) {
    tokens[s] = next;
    next = (await decodeStep(model, next, prompt.length + s, cache)).next;
  }
  return { s: Number(process.hrtime.bigint() - t0) * 1e-9, tokens };
}

function linearBytes(model: LoadedModel): number {
  let n = 0;
  for (const layer of model.weights.layers) {
    for (const lin of Object.values(layer.linears)) {
      const l = lin as { weight?: Float32Array | { data: ArrayBufferView }; packed?: { data: ArrayBufferView; scales: ArrayBufferView; zeros?: ArrayBufferView; wsum?: ArrayBufferView } };
      if (l.packed) n += l.packed.data.byteLength + l.packed.scales.byteLength + (l.packed.zeros?.byteLength ?? 0) + (l.packed.wsum?.byteLength ?? 0);
      else if (l.weight) n += (l.weight as ArrayBufferView).byteLength ?? (l.weight as { data: ArrayBufferView }).data.byteLength;
    }
  }
  return n;
}

async function main(): Promise<void> {
  const dir = arg('model', '/work/shared/models/qwen3-small');
  const P = Number(arg('prompt', '32'));
  const G = Number(arg('gen', '128'));
  const reps = Number(arg('reps', '3'));
  const threads = arg('threads', '1,2').split(',').map(Number);
  const variants: [string, string | null][] = [
    ['fp32', null],
    ['w4 (rtn:w4g128, packed)', 'rtn:w4g128'],
    ['w8a8 (naive:w8a8, int8)', 'naive:w8a8'],
  ];
  const models: [string, LoadedModel][] = [];
  for (const [name, spec] of variants) models.push([name, await variant(dir, spec)]);
  const vocab = models[0][1].config.vocabSize;
  const prompt = Int32Array.from({ length: P }, (_, i) => (i * 7919 + 13) % vocab);
  console.log(`model ${path.basename(dir)}; prompt ${P} tokens, ${G} generated; SIMD ${addon.simdLevel()}; best of ${reps}`);
  console.log('| model | threads | linear weight MB | ms/token | tokens/s | vs fp32 | greedy tokens = fp32 |');
  console.log('|---|---|---|---|---|---|---|');
  for (const th of threads) {
    addon.setThreads(th);
    let base = 0;
    let baseTokens: Int32Array | undefined;
    for (const [name, model] of models) {
      let best = Infinity;
      let tokens: Int32Array = new Int32Array();
      for (let r = 0; r < reps; r++) {
        const o = await run(model, prompt, G);
        if (o.s < best) best = o.s;
        tokens = o.tokens;
      }
      const tps = G / best;
      if (!baseTokens) {
        base = tps;
        baseTokens = tokens;
      }
      let same = 0;
      while (same < G && tokens[same] === baseTokens[same]) same++;
      console.log(
        `| ${name} | ${th} | ${(linearBytes(model) / 1e6).toFixed(1)} | ${((best / G) * 1e3).toFixed(2)} | ${tps.toFixed(1)} | ${(tps / base).toFixed(2)}× | first ${same}/${G} |`,
      );
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
