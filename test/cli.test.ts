// The CLI as a user runs it: the compiled dist/cli/main.js in a child process. Checks stdout is one JSON
// document, errors are one clean line naming what is wrong (no stack), quantize writes an evaluable
// checkpoint atomically, and a checkpoint with a NaN weight is reported with exit code 2.
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const ROOT = path.resolve(__dirname, '..');
const SHARED = path.resolve(ROOT, '..', 'shared');
const MAIN = path.join(ROOT, 'dist', 'cli', 'main.js');
const TINY = path.join(ROOT, 'models', 'qwen3-tiny');
const EVAL_ARGS = ['--tasks', 'wikitext2', '--max-windows', '1', '--seqlen', '256', '--json'];

let tmp: string;

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [MAIN, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60000, env: { ...process.env, FORCE_COLOR: '0' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function noStack(stderr: string): void {
  expect(stderr).not.toMatch(/\n\s+at .+:\d+:\d+\)?/);
}

function copyModel(name: string, skip: string[] = []): string {
  const dst = path.join(tmp, name);
  fs.mkdirSync(dst);
  for (const f of fs.readdirSync(TINY)) if (!skip.includes(f)) fs.copyFileSync(path.join(TINY, f), path.join(dst, f));
  return dst;
}

let fpPpl: number;

beforeAll(() => {
  execFileSync(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'pipe' });
  expect(fs.existsSync(MAIN)).toBe(true);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-cli-'));
});

afterAll(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('eval --json prints exactly one JSON document', () => {
  const r = cli(['eval', TINY, ...EVAL_ARGS]);
  expect(r.code).toBe(0);
  const doc = JSON.parse(r.stdout); // throws if anything else is on stdout
  expect(r.stdout.trim().split('\n')).toHaveLength(1);
  const w = doc.results.wikitext2;
  expect(Number.isFinite(w.ppl)).toBe(true);
  expect(w.ppl).toBeGreaterThan(1);
  expect(w.windows).toBe(1);
  expect(w.tokens).toBe(256);
  expect(doc.quant).toBeUndefined();
  fpPpl = w.ppl;
});

test('a model folder without tokenizer.json: non-zero exit, the file named, no stack trace', () => {
  const dir = copyModel('no-tok', ['tokenizer.json']);
  const r = cli(['eval', dir, ...EVAL_ARGS]);
  expect(r.code).not.toBe(0);
  expect(r.stdout).toBe('');
  expect(r.stderr).toMatch(/^lowbit: .*tokenizer\.json/m);
  expect(r.stderr).toContain(path.join(dir, 'tokenizer.json'));
  noStack(r.stderr);
});

test('an unknown task: non-zero exit listing the known tasks', () => {
  const r = cli(['eval', TINY, '--tasks', 'wikitext2,hellaswag2', '--max-windows', '1', '--seqlen', '256', '--json']);
  expect(r.code).not.toBe(0);
  expect(r.stdout).toBe('');
  expect(r.stderr).toMatch(/unknown task "hellaswag2" \(--tasks\): known tasks are wikitext2, c4/);
  noStack(r.stderr);
});

test('quantize writes an evaluable checkpoint atomically', () => {
  const out = path.join(tmp, 'q');
  const r = cli(['quantize', TINY, '--quant', 'rtn:w4g128', '--out', out]);
  expect(r.stderr).not.toMatch(/error/i);
  expect(r.code).toBe(0);
  expect(r.stdout).toContain(`wrote ${out}`);
  const config = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  expect(config.lowbit_quantization).toMatchObject({ method: 'rtn', spec: 'rtn:w4g128', wbits: 4, abits: 0, group_size: 128 });
  for (const f of ['model.safetensors', 'tokenizer.json']) expect(fs.existsSync(path.join(out, f))).toBe(true);
  expect(fs.readdirSync(tmp).filter((f) => /\.(tmp|old)-/.test(f))).toEqual([]);

  const e = cli(['eval', out, ...EVAL_ARGS]);
  expect(e.code).toBe(0);
  const doc = JSON.parse(e.stdout);
  const ppl = doc.results.wikitext2.ppl;
  expect(Number.isFinite(ppl)).toBe(true);
  expect(fpPpl).toBeDefined();
  expect(ppl).not.toBe(fpPpl);
  expect(Math.abs(ppl - fpPpl) / fpPpl).toBeLessThan(0.2); // w4g128 RTN: a few percent worse, not broken
});

test('--group-size 100 is rejected naming the group size; nothing is written', () => {
  const out = path.join(tmp, 'g100');
  const r = cli(['quantize', TINY, '--quant', 'rtn:w4g128', '--group-size', '100', '--out', out]);
  expect(r.code).not.toBe(0);
  expect(r.stderr).toMatch(/--group-size 100 does not divide in_features 256 of model\.layers\.0\.q/);
  noStack(r.stderr);
  expect(fs.existsSync(out)).toBe(false);
  expect(fs.readdirSync(tmp).filter((f) => f.startsWith('g100'))).toEqual([]);
});

test('a NaN weight: a warning naming the tensor, ppl null, exit code 2', () => {
  const dir = copyModel('nan');
  const file = path.join(dir, 'model.safetensors');
  const buf = fs.readFileSync(file);
  const hlen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + hlen).toString('utf8'));
  const name = 'model.layers.1.mlp.down_proj.weight';
  expect(header[name].dtype).toBe('BF16');
  const off = 8 + hlen + header[name].data_offsets[0] + 2 * 1000; // element 1000
  buf.writeUInt16LE(0x7fc0, off);
  fs.writeFileSync(file, buf);

  const r = cli(['eval', dir, ...EVAL_ARGS]);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/warning: non-finite values \(NaN\/Inf\) in model\.layers\.1\.mlp\.down_proj\.weight \(1\)/);
  const doc = JSON.parse(r.stdout);
  expect(doc.results.wikitext2.ppl).toBeNull();
  expect(doc.results.wikitext2.windows).toBe(1);
});

test('the shared qwen3-tiny and the embedded copy are the same checkpoint', () => {
  // The CLI tests use the embedded models/qwen3-tiny; the golden values come from ../shared.
  const a = fs.readFileSync(path.join(TINY, 'model.safetensors'));
  const b = fs.readFileSync(path.join(SHARED, 'models', 'qwen3-tiny', 'model.safetensors'));
  expect(a.equals(b)).toBe(true);
});

describe('Qwen3-MoE and layer streaming from the command line', () => {
  const MOE = path.join(ROOT, 'test', 'fixtures', 'qwen3-moe-tiny');
  let moeDir: string;
  const ARGS = ['--tasks', 'wikitext2', '--max-windows', '3', '--seqlen', '128', '--json'];
  beforeAll(() => {
    moeDir = path.join(tmp, 'moe');
    fs.mkdirSync(moeDir);
    for (const f of fs.readdirSync(MOE)) fs.copyFileSync(path.join(MOE, f), path.join(moeDir, f));
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(TINY, f), path.join(moeDir, f));
  });

  test('eval reports the mode it ran: resident, --stream, and streamed on its own under --max-memory', () => {
    const run = (extra: string[]) => {
      const r = cli(['eval', moeDir, ...ARGS, '--device', 'cpu', ...extra]);
      expect(r.code).toBe(0);
      return JSON.parse(r.stdout).results.wikitext2;
    };
    const resident = run([]);
    const streamed = run(['--stream']);
    const capped = run(['--max-memory', '1M']);
    expect([resident.mode, streamed.mode, capped.mode]).toEqual(['resident', 'streamed', 'streamed, activations on disk']);
    expect(Number.isFinite(resident.ppl)).toBe(true);
    expect(streamed.ppl).toBe(resident.ppl);
    expect(capped.ppl).toBe(resident.ppl);
    const bad = cli(['eval', moeDir, ...ARGS, '--max-memory', 'lots']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--max-memory: cannot read "lots"/);
  });

  test('quantize --moe-calib routed reports per-expert token counts; the checkpoint evaluates', () => {
    const out = path.join(tmp, 'moe-gptq');
    const r = cli(['quantize', moeDir, '--quant', 'gptq:w4g32', '--nsamples', '4', '--calib-seqlen', '128', '--calib-ids', path.join(ROOT, 'data', 'calib_c4_128x2048.i16'), '--moe-calib', 'routed', '--out', out, '--json']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/experts: 16 in 2 sparse layers; routed calibration tokens per expert min \d+, median \d+, max \d+; \d+ got none; statistics from routed tokens/);
    const experts = JSON.parse(r.stdout).quant.experts;
    expect(experts.mode).toBe('routed');
    expect(experts.layers.map((c: { layer: number }) => c.layer)).toEqual([0, 2]);
    for (const c of experts.layers) {
      expect(c.tokens).toBe(4 * 128);
      expect(c.routed).toHaveLength(8);
      expect(c.routed.reduce((a: number, b: number) => a + b, 0)).toBe(2 * c.tokens);
    }
    const e = cli(['eval', out, ...ARGS]);
    expect(e.code).toBe(0);
    expect(Number.isFinite(JSON.parse(e.stdout).results.wikitext2.ppl)).toBe(true);
  });
});
