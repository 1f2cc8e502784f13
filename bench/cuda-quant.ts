// Quantization wall time per layer on the GPU (GPTQ: calibration + Hessians + solve + propagate; AWQ: capture +
// scale and clip searches + host quantization), and the device memory it needed. Usage (compile with tsc first,
// as bench/anchors.ts):
//   node DIST/bench/cuda-quant.js MODEL_DIR CALIB_IDS [SPEC=gptq:w4g128] [--device cuda:N]
// Prints one JSON line: {model, spec, device, seconds, perLayer: [s…], stages: {kind: s}, peakGiB}. bench/cuda-quant.sh runs it
// beside reference_ptq.py's same method on the same card.
import { readCalibIds } from '../lib/calibrate/calibration';
import { loadModel } from '../lib/load/model';
import { quantize } from '../lib/quant/pipeline';
import { parseSpec } from '../lib/quant/spec';

async function main() {
  const args = process.argv.slice(2);
  const di = args.indexOf('--device');
  const device = di >= 0 ? args.splice(di, 2)[1] : 'cuda';
  const [dir, calibFile, specText = 'gptq:w4g128'] = args;
  const spec = parseSpec(specText);
  const model = loadModel(dir);
  const calibration = readCalibIds(calibFile, spec.nsamples, spec.calibSeqLen);
  const starts: number[] = [];
  // Seconds per kind of stage (the first word of the progress stage: embed, upload, hessian, solve, awq, quantize,
  // propagate), summed over layers: each stage lasts until the next progress event.
  const stages: Record<string, number> = {};
  let last: { kind: string; t: number } | undefined;
  const t0 = performance.now();
  const r = await quantize(model, spec, {
    calibration,
    device,
    onProgress: (p) => {
      const now = performance.now();
      if (starts[p.layer] === undefined) starts[p.layer] = now;
      if (last) stages[last.kind] = (stages[last.kind] ?? 0) + (now - last.t) / 1000;
      last = { kind: p.stage.split(' ')[0], t: now };
    },
  });
  const t1 = performance.now();
  if (last) stages[last.kind] = (stages[last.kind] ?? 0) + (t1 - last.t) / 1000;
  // Layer l's time: from its first progress event to the next layer's (the last layer: to the end).
  const perLayer = starts.map((s, l) => ((l + 1 < starts.length ? starts[l + 1] : t1) - s) / 1000);
  process.stdout.write(
    JSON.stringify({
      model: dir,
      spec: r.name,
      device: r.device,
      seconds: (t1 - t0) / 1000,
      perLayer: perLayer.map((x) => Number(x.toFixed(3))),
      stages: Object.fromEntries(Object.entries(stages).map(([k, v]) => [k, Number(v.toFixed(3))])),
      peakGiB: r.gpuPeakBytes !== undefined ? Number((r.gpuPeakBytes / 2 ** 30).toFixed(2)) : null,
    }) + '\n',
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
