// The GPTQ perplexity protocol at a small scale, and the protocol's corpus text, checked against values
// computed in the test from per-window scores and from the raw data files.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { pplText } from '../lib/eval/datasets';
import { evaluate } from '../lib/eval/evaluate';
import { scoreSequences } from '../lib/eval/forward';
import { perplexity } from '../lib/eval/perplexity';
import { loadModel } from '../lib/load/model';
import type { LoadedModel } from '../lib/load/types';

const SHARED = path.resolve(__dirname, '..', '..', 'shared');
const DATA = path.join(SHARED, 'data');

let model: LoadedModel;
let ids: Int32Array;
beforeAll(() => {
  model = loadModel(path.join(SHARED, 'models', 'qwen3-tiny'));
  const g = JSON.parse(fs.readFileSync(path.join(SHARED, 'golden', 'qwen3-tiny.json'), 'utf8')).golden;
  // 512 real tokens + 50 extra: 4 whole windows of 128 exist, maxWindows keeps 3.
  ids = Int32Array.from([...g.input_ids[0], ...g.input_ids[1], ...g.input_ids[0].slice(0, 50)]);
});

describe('perplexity (GPTQ protocol)', () => {
  test('ppl = exp(mean over windows of the mean NLL of positions 0..seqLen-2)', async () => {
    const seqLen = 128;
    const r = await perplexity(model, ids, { seqLen, maxWindows: 3 });
    expect(r.windows).toBe(3);
    expect(r.tokens).toBe(3 * seqLen);
    const means: number[] = [];
    for (let w = 0; w < 3; w++) {
      const s = await scoreSequences(model, ids.slice(w * seqLen, (w + 1) * seqLen), seqLen);
      let sum = 0;
      for (let t = 0; t <= seqLen - 2; t++) sum += s.nll[t];
      means.push(sum / (seqLen - 1));
    }
    const expected = Math.exp(means.reduce((a, b) => a + b, 0) / means.length);
    expect(Number.isFinite(r.ppl)).toBe(true);
    expect(Math.abs(r.ppl - expected) / expected).toBeLessThan(1e-6);
    r.windowNll.forEach((m, i) => expect(Math.abs(m - means[i])).toBeLessThan(1e-6));
  });

  test('the window count is floor(tokens / seqLen) without maxWindows; too few tokens is an error', async () => {
    const r = await perplexity(model, ids.subarray(0, 3 * 128 + 127), { seqLen: 128 });
    expect(r.windows).toBe(3);
    await expect(perplexity(model, ids.subarray(0, 100), { seqLen: 128 })).rejects.toThrow(/128 tokens.*100/);
  });
});

describe('protocol text', () => {
  test('wikitext2: the rows joined by "\\n\\n"', () => {
    const rows = JSON.parse(fs.readFileSync(path.join(DATA, 'wikitext-2-raw-v1.test.json'), 'utf8')) as string[];
    expect(rows.length).toBeGreaterThan(1000);
    expect(pplText('wikitext2', DATA)).toBe(rows.join('\n\n'));
  });

  test('c4: the first 1100 docs joined by " "', () => {
    const lines = fs.readFileSync(path.join(DATA, 'c4_validation_shard0_head.jsonl'), 'utf8').split('\n').filter((l) => l.trim());
    const docs = lines.map((l) => JSON.parse(l).text as string);
    expect(pplText('c4', DATA)).toBe(docs.slice(0, 1100).join(' '));
  });

  test('c4: a file with more than 1100 docs is cut at 1100', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-ppl-'));
    try {
      const docs = Array.from({ length: 1205 }, (_, i) => `doc ${i}`);
      fs.writeFileSync(path.join(dir, 'c4_validation_shard0_head.jsonl'), docs.map((text) => JSON.stringify({ text, url: 'x' })).join('\n') + '\n');
      const text = pplText('c4', dir);
      expect(text).toBe(docs.slice(0, 1100).join(' '));
      expect(text.endsWith('doc 1099')).toBe(true);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('evaluate() errors', () => {
  const encode = (t: string) => Int32Array.from({ length: Math.min(t.length, 600) }, (_, i) => t.charCodeAt(i) % 8192);

  test('an unknown task name lists the known tasks', async () => {
    await expect(evaluate(model, encode, { tasks: ['wikitext2', 'lambada'], dataDir: DATA })).rejects.toThrow(
      /unknown task "lambada".*wikitext2, c4/,
    );
  });

  test('a missing data file names its path', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-ppl-'));
    try {
      const expected = path.join(dir, 'wikitext-2-raw-v1.test.json');
      await expect(evaluate(model, encode, { tasks: ['wikitext2'], dataDir: dir })).rejects.toThrow(
        new RegExp(`data file not found: ${expected.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`),
      );
      expect(() => pplText('c4', dir)).toThrow(/c4_validation_shard0_head\.jsonl/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a malformed jsonl line names the file and line', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-ppl-'));
    try {
      fs.writeFileSync(path.join(dir, 'c4_validation_shard0_head.jsonl'), '{"text": "a"}\n{not json\n');
      expect(() => pplText('c4', dir)).toThrow(/c4_validation_shard0_head\.jsonl:2: not valid JSON/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
