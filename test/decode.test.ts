// KV-cache decoding (addon.decodeStep via lib/eval/decode): feeding a sequence token by token must give
// the same per-position NLL as scoring the whole sequence at once (scoreSequences), for the fp32 model and
// for the packed 4-bit kernels.
import * as fs from 'fs';
import * as path from 'path';
import { createKvCache, decodeStep, greedyDecode } from '../lib/eval/decode';
import { scoreSequences } from '../lib/eval/forward';
import { loadModel } from '../lib/load/model';
import { LoadedModel } from '../lib/load/types';
import { addon } from '../lib/native/addon';
import { attachPacked } from '../lib/quant/packed';
import { quantize } from '../lib/quant/pipeline';
import { parseSpec } from '../lib/quant/spec';

const SHARED = path.resolve(__dirname, '..', '..', 'shared');
const N = 48;

async function decodedNll(model: LoadedModel, ids: Int32Array): Promise<{ nll: Float64Array; next: Int32Array }> {
  const cache = createKvCache(model, ids.length);
  const nll = new Float64Array(ids.length);
  const next = new Int32Array(ids.length);
  for (let t = 0; t < ids.length; t++) {
    const r = await decodeStep(model, ids[t], t, cache, t + 1 < ids.length ? { target: ids[t + 1] } : {});
    nll[t] = r.nll;
    next[t] = r.next;
  }
  return { nll, next };
}

describe('token-by-token decode with a KV cache matches the full-sequence forward', () => {
  let ids: Int32Array;
  let both: Int32Array; // the golden file's two 256-token sequences back to back
  beforeAll(() => {
    const g = JSON.parse(fs.readFileSync(path.join(SHARED, 'golden', 'qwen3-tiny.json'), 'utf8')).golden;
    ids = Int32Array.from(g.input_ids[0].slice(0, N));
    both = Int32Array.from([...g.input_ids[0], ...g.input_ids[1]]);
    addon.setThreads(2);
  });

  async function check(model: LoadedModel, seq = ids): Promise<void> {
    const n = seq.length;
    const full = await scoreSequences(model, seq, n, { topk: 1 });
    const dec = await decodedNll(model, seq);
    let worst = 0;
    for (let t = 0; t < n; t++) worst = Math.max(worst, Math.abs(full.nll[t] - dec.nll[t]));
    expect(worst).toBeLessThan(1e-4);
    let same = 0;
    for (let t = 0; t < n; t++) same += full.topIdx![t] === dec.next[t] ? 1 : 0;
    expect(same).toBeGreaterThanOrEqual(n - 1); // argmax ties aside
  }

  test('fp32 (qwen3-tiny): per-position NLL within 1e-4', async () => {
    await check(loadModel(path.join(SHARED, 'models', 'qwen3-tiny')));
  }, 30000);

  test('fp32, 512 positions (past 256 the attention splits its KV heads across threads)', async () => {
    await check(loadModel(path.join(SHARED, 'models', 'qwen3-tiny')), both);
  }, 60000);

  test('rtn:w4g128 → packed 4-bit kernels: per-position NLL within 1e-4', async () => {
    const model = loadModel(path.join(SHARED, 'models', 'qwen3-tiny'));
    await quantize(model, parseSpec('rtn:w4g128'));
    attachPacked(model);
    await check(model);
  }, 30000);

  test('greedyDecode continues the prompt with the argmax tokens; the cache bounds positions', async () => {
    const model = loadModel(path.join(SHARED, 'models', 'qwen3-tiny'));
    const out = await greedyDecode(model, ids.slice(0, 8), 4);
    expect(out).toHaveLength(4);
    const seq = Int32Array.from([...ids.slice(0, 8), ...out.slice(0, 3)]);
    const full = await scoreSequences(model, seq, seq.length, { topk: 1 });
    for (let s = 0; s < 4; s++) expect(out[s]).toBe(full.topIdx![7 + s]);
    await expect(decodeStep(model, 1, 4, createKvCache(model, 4))).rejects.toThrow(/outside the cache/);
    await expect(decodeStep(model, model.config.vocabSize, 0, createKvCache(model, 4))).rejects.toThrow(/token id \d+ is outside the vocabulary/);
    await expect(decodeStep(model, NaN, 0, createKvCache(model, 4))).rejects.toThrow(/token NaN is not a token id/);
  }, 30000);

  test('greedyDecode stops between steps once its signal aborts', async () => {
    const model = loadModel(path.join(SHARED, 'models', 'qwen3-tiny'));
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 0); // fires while the first step runs off the event loop
    await expect(greedyDecode(model, ids.slice(0, 8), 64, { signal: ac.signal })).rejects.toMatchObject({ name: 'AbortError' });
  }, 30000);
});
