// loglikelihood(): the batched, padded, prefix-shared scoring of (context, continuation) requests equals,
// item by item, the log-likelihood computed here by an independent path — the token ids built in the test
// as lm-evaluation-harness splits them, one unpadded scoreSequences forward per request, the NLL of the
// continuation positions summed — and greedy equals the top-1 check on that forward.
import * as path from 'path';
import { tokenizeRequests } from '../lib/eval/evaluate';
import { scoreSequences } from '../lib/eval/forward';
import { encodePair, loglikelihood, LoglikelihoodRequest } from '../lib/eval/loglikelihood';
import { loadMmlu } from '../lib/eval/tasks/mmlu';
import { taskRequests } from '../lib/eval/tasks/registry';
import type { TextRequest } from '../lib/eval/tasks/types';
import { loadModel } from '../lib/load/model';
import { loadTokenizer, LowbitTokenizer } from '../lib/load/tokenizer';
import type { LoadedModel } from '../lib/load/types';

const ROOT = path.resolve(__dirname, '..');
const DATA = path.join(ROOT, 'data');
const TINY = path.join(ROOT, 'models', 'qwen3-tiny');

let model: LoadedModel;
let tok: LowbitTokenizer;
const encode = (t: string) => tok.encode(t);
beforeAll(() => {
  model = loadModel(TINY);
  tok = loadTokenizer(TINY);
});

/** The harness's split, written out: trailing context spaces move to the continuation; the continuation is
 *  the tail of encode(whole) past len(encode(context)); the context is encode(context). */
function splitIds(r: TextRequest): { ctx: number[]; cont: number[] } {
  const m = /\s+$/.exec(r.context);
  const context = m ? r.context.slice(0, m.index) : r.context;
  const continuation = (m ? m[0] : '') + r.continuation;
  const whole = tok.encode(context + continuation);
  const ctx = tok.encode(context);
  return { ctx, cont: whole.slice(ctx.length) };
}

/** One unpadded forward of the (left-truncated) sequence; Σ log p and greedy over the continuation positions. */
async function reference(ctx: number[], cont: number[], maxContext = model.config.maxPositionEmbeddings) {
  const seq = ctx.concat(cont).slice(-(maxContext + 1));
  const s = await scoreSequences(model, Int32Array.from(seq), seq.length, { topk: 1 });
  let logprob = 0;
  let greedy = true;
  for (let t = seq.length - 1 - cont.length; t < seq.length - 1; t++) {
    logprob -= s.nll[t];
    if (s.topIdx![t] !== seq[t + 1]) greedy = false;
  }
  return { logprob, greedy };
}

const TASKS = ['piqa', 'arc_easy', 'arc_challenge', 'hellaswag', 'winogrande', 'boolq', 'lambada_openai'];

test('per-item log-likelihoods of every task equal one unpadded forward per request (1e-4)', async () => {
  const text: TextRequest[] = [];
  const owner: string[] = [];
  for (const task of TASKS) {
    for (const doc of await taskRequests(task, DATA, { limit: 3 })) for (const r of doc) (text.push(r), owner.push(task));
  }
  // MMLU: 5-shot prompts, four one-token answers sharing one forward.
  for (const d of loadMmlu(DATA, { limit: 1, subjects: ['abstract_algebra', 'anatomy'], encode, maxContext: model.config.maxPositionEmbeddings })) {
    for (const r of d.requests) (text.push(r), owner.push('mmlu'));
  }
  const reqs = tokenizeRequests(encode, text);
  const split = text.map(splitIds);
  reqs.forEach((r, i) => {
    expect(r.context).toEqual(split[i].ctx);
    expect(r.continuation).toEqual(split[i].cont);
    expect(r.continuation.length).toBeGreaterThan(0);
  });
  const got = await loglikelihood(model, reqs, { batchTokens: 8192 });
  expect(got).toHaveLength(reqs.length);
  for (let i = 0; i < reqs.length; i++) {
    const ref = await reference(split[i].ctx, split[i].cont);
    expect({ task: owner[i], i, diff: Math.abs(got[i].logprob - ref.logprob) < 1e-4 }).toEqual({ task: owner[i], i, diff: true });
    expect(got[i].greedy).toBe(ref.greedy);
    expect(got[i].logprob).toBeLessThan(0);
  }
  // (greedy = true on real items is exercised by the lambada test below, with the model's own argmax tokens)
});

test('the same results one request per forward, in any batching, in the caller order', async () => {
  const text = (await Promise.all(TASKS.map((t) => taskRequests(t, DATA, { limit: 2 })))).flat(2);
  const reqs = tokenizeRequests(encode, text);
  const a = await loglikelihood(model, reqs, { batchTokens: 1 });
  const b = await loglikelihood(model, reqs, { batchTokens: 1 << 16 });
  const rev = await loglikelihood(model, [...reqs].reverse(), { batchTokens: 4096 });
  for (let i = 0; i < reqs.length; i++) {
    expect(Math.abs(a[i].logprob - b[i].logprob)).toBeLessThan(1e-4);
    expect(Math.abs(a[i].logprob - rev[reqs.length - 1 - i].logprob)).toBeLessThan(1e-4);
    expect(a[i].greedy).toBe(b[i].greedy);
  }
});

test('lambada: greedy is true exactly when every last-word token is the top-1 of its position', async () => {
  const text = (await taskRequests('lambada_openai', DATA, { limit: 4 })).flat();
  const reqs: LoglikelihoodRequest[] = [];
  const expected: boolean[] = [];
  for (const r of text) {
    const { ctx, cont } = splitIds(r);
    const s = await scoreSequences(model, Int32Array.from(ctx.concat(cont)), ctx.length + cont.length, { topk: 1 });
    expected.push(cont.every((id, c) => s.topIdx![ctx.length - 1 + c] === id));
    reqs.push({ context: ctx, continuation: cont });
    // The model's own greedy token after the context: greedy by construction, and its logprob is its NLL.
    const top = s.topIdx![ctx.length - 1];
    const own = await scoreSequences(model, Int32Array.from([...ctx, top]), ctx.length + 1);
    reqs.push({ context: ctx, continuation: [top] });
    expected.push(true);
    // A token that is not the argmax.
    reqs.push({ context: ctx, continuation: [top === 11 ? 12 : 11] });
    expected.push(false);
    (reqs[reqs.length - 2] as LoglikelihoodRequest & { nll?: number }).nll = own.nll[ctx.length - 1];
  }
  const got = await loglikelihood(model, reqs);
  expect(got.map((g) => g.greedy)).toEqual(expected);
  reqs.forEach((r, i) => {
    const nll = (r as LoglikelihoodRequest & { nll?: number }).nll;
    if (nll !== undefined) expect(Math.abs(got[i].logprob + nll)).toBeLessThan(1e-4);
  });
});

test('left truncation to the model context, as the harness: the last maxContext+1 tokens', async () => {
  const text = (await taskRequests('lambada_openai', DATA, { limit: 3 })).flat();
  const reqs = tokenizeRequests(encode, text);
  const got = await loglikelihood(model, reqs, { maxContext: 24 });
  for (let i = 0; i < reqs.length; i++) {
    expect(reqs[i].context.length).toBeGreaterThan(30);
    const ref = await reference(Array.from(reqs[i].context), Array.from(reqs[i].continuation), 24);
    expect(Math.abs(got[i].logprob - ref.logprob)).toBeLessThan(1e-4);
    expect(got[i].greedy).toBe(ref.greedy);
  }
  const full = await loglikelihood(model, reqs);
  expect(full.some((f, i) => Math.abs(f.logprob - got[i].logprob) > 1e-3)).toBe(true); // truncation mattered
});

test('encodePair moves trailing context spaces into the continuation', () => {
  const p = encodePair(encode, 'Answer: ', 'yes');
  expect(p.context).toEqual(tok.encode('Answer:'));
  expect(p.continuation).toEqual(tok.encode('Answer: yes').slice(tok.encode('Answer:').length));
  expect(tok.decode(p.continuation)).toBe(' yes');
});

test('an empty continuation or context is an error', async () => {
  await expect(loglikelihood(model, [{ context: [1, 2], continuation: [] }])).rejects.toThrow(/request 0: empty continuation/);
  await expect(loglikelihood(model, [{ context: [], continuation: [3] }])).rejects.toThrow(/request 0: empty context/);
});
