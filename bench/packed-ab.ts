/**
 * Old vs new packed GEMV in the same run: two addon builds (e.g. main's and this checkout's) measured in
 * alternating child processes (one build per process, so their buffers and thread pools never share a run),
 * REPS rounds per shape. Each child packs the weights (group 128), warms up, and reports the weight GB/s of
 * the median call (wall clock) and of the median batch by process CPU time (with 1 thread that leaves out
 * time the process was preempted by other jobs; memory-bandwidth contention still shows). The ratio column
 * is new ÷ old per round; its median is the figure to quote.
 *
 *   npx tsc -p tsconfig.json --outDir /tmp/lowbit-bench-packed
 *   node /tmp/lowbit-bench-packed/bench/packed-ab.js --base /work/main/build/Release/lowbit.node \
 *     [--new build/Release/lowbit.node] [--threads 1,2] [--reps 7] [--bits 4] [--shapes 4096x14336,14336x4096]
 */
import { execFileSync } from 'child_process';
import * as path from 'path';
import { arg, median } from './args';

/** One measurement in this process: prints {wall, cpu} GB/s as JSON. */
function child(mod: string, rows: number, cols: number, bits: number, threads: number): void {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const m = require(path.resolve(mod));
  m.setThreads(threads);
  const G = 128;
  const ng = cols / G;
  const maxq = (1 << bits) - 1;
  const q = new Uint8Array(rows * cols);
  for (let i = 0; i < q.length; i++) q[i] = ((i * 2654435761) >>> 11) & maxq;
  const p = m.packLinear(q, new Float32Array(rows * ng).fill(0.01), new Float32Array(rows * ng).fill((maxq + 1) / 2), null, { rows, cols, bits, groupSize: G });
  const x = Float32Array.from({ length: cols }, () => Math.random() - 0.5);
  const y = new Float32Array(rows);
  const bytes = p.data.byteLength + p.scales.byteLength + p.zeros.byteLength;
  for (let i = 0; i < 5; i++) m.packedMatmulSync(x, p, y);
  const wall: number[] = [];
  const cpu: number[] = [];
  const batch = Math.max(1, Math.round(2e7 / bytes));
  for (let b = 0; b < 12; b++) {
    const c0 = process.cpuUsage();
    for (let i = 0; i < batch; i++) {
      const t0 = process.hrtime.bigint();
      m.packedMatmulSync(x, p, y);
      wall.push(Number(process.hrtime.bigint() - t0) * 1e-9);
    }
    const d = process.cpuUsage(c0);
    cpu.push(((d.user + d.system) * 1e-6) / batch / threads);
  }
  console.log(JSON.stringify({ wall: (bytes / median(wall)) * 1e-9, cpu: (bytes / median(cpu)) * 1e-9 }));
}

function main(): void {
  if (process.argv[2] === '--child') {
    const [mod, rows, cols, bits, threads] = process.argv.slice(3);
    child(mod, Number(rows), Number(cols), Number(bits), Number(threads));
    return;
  }
  const base = arg('base', '');
  if (!base) throw new Error('--base OLD.node is required (e.g. /work/main/build/Release/lowbit.node)');
  const cur = arg('new', path.join('build', 'Release', 'lowbit.node'));
  const reps = Number(arg('reps', '7'));
  const bitsList = arg('bits', '4').split(',').map(Number);
  const threadsList = arg('threads', '1,2').split(',').map(Number);
  const shapes = arg('shapes', '4096x14336,14336x4096').split(',').map((s) => s.split('x').map(Number));
  const run = (mod: string, r: number, c: number, b: number, t: number): { wall: number; cpu: number } =>
    JSON.parse(execFileSync(process.execPath, [__filename, '--child', mod, String(r), String(c), String(b), String(t)], { encoding: 'utf8' }).trim());
  console.log(`old: ${base}\nnew: ${cur}\n`);
  console.log('| weights | rows×cols | threads | old GB/s (wall) per round | new GB/s (wall) per round | new ÷ old (wall), median | new ÷ old (CPU time), median |');
  console.log('|---|---|---|---|---|---|---|');
  for (const t of threadsList) {
    for (const b of bitsList) {
      for (const [r, c] of shapes) {
        const o: { wall: number; cpu: number }[] = [];
        const n: { wall: number; cpu: number }[] = [];
        for (let i = 0; i < reps; i++) {
          // Alternate which build goes first, so neither always follows the other.
          if (i % 2) {
            n.push(run(cur, r, c, b, t));
            o.push(run(base, r, c, b, t));
          } else {
            o.push(run(base, r, c, b, t));
            n.push(run(cur, r, c, b, t));
          }
        }
        const ratio = (k: 'wall' | 'cpu') => median(o.map((x, i) => n[i][k] / x[k])).toFixed(3);
        console.log(
          `| int${b} g128 | ${r}×${c} | ${t} | ${o.map((x) => x.wall.toFixed(1)).join(' ')} | ${n.map((x) => x.wall.toFixed(1)).join(' ')} | ` +
            `${ratio('wall')} | ${ratio('cpu')} |`,
        );
      }
    }
  }
}

main();
