// The lm-evaluation-harness task definitions: the exact prompt strings of the first document of each task
// (written here by hand from the data records), the MMLU few-shot prompt and its shot dropping, task
// scoring, and the errors for missing files, malformed records and unknown tasks.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { choiceOutcomes, evaluate, scoreMmlu } from '../lib/eval/evaluate';
import { parseCsv } from '../lib/eval/tasks/csv';
import { hellaswagPreprocess, loadHellaswag } from '../lib/eval/tasks/hellaswag';
import { loadMmlu, MMLU_CATEGORIES, MMLU_SUBJECTS, mmluPrompt, readMmluCsv } from '../lib/eval/tasks/mmlu';
import { loadChoiceTask, TASK_NAMES, taskRequests } from '../lib/eval/tasks/registry';
import { loadModel } from '../lib/load/model';
import { loadTokenizer } from '../lib/load/tokenizer';
import type { LoadedModel } from '../lib/load/types';

const ROOT = path.resolve(__dirname, '..');
const DATA = path.join(ROOT, 'data'); // the bundled heads of the task files
const TINY = path.join(ROOT, 'models', 'qwen3-tiny');

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lowbit-tasks-'));
});
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const first = async (task: string) => (await taskRequests(task, DATA, { limit: 1 }))[0];

describe('prompts of the first document of each task', () => {
  test('piqa: "Question: {goal}\\nAnswer:" → " {sol1}", " {sol2}"', async () => {
    const ctx = "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:";
    expect(await first('piqa')).toEqual([
      { context: ctx, continuation: ' Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.' },
      { context: ctx, continuation: ' Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also need to supply it with a water bottle and a food dish.' },
    ]);
  });

  test('arc_easy and arc_challenge: "Question: {question}\\nAnswer:" → " {choice}"', async () => {
    const e = 'Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:';
    expect(await first('arc_easy')).toEqual([
      ' Sunlight is the source of energy for nearly all ecosystems.',
      ' Most ecosystems are found on land instead of in water.',
      ' Carbon dioxide is more available than other gases.',
      ' The producers in all ecosystems are plants.',
    ].map((continuation) => ({ context: e, continuation })));
    const c = 'Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the most likely effect of this increase in rotation?\nAnswer:';
    expect(await first('arc_challenge')).toEqual([
      ' Planetary density will decrease.',
      ' Planetary years will become longer.',
      ' Planetary days will become shorter.',
      ' Planetary gravity will become stronger.',
    ].map((continuation) => ({ context: c, continuation })));
  });

  test('hellaswag: preprocess(activity_label + ": " + ctx) → " " + preprocess(ending)', async () => {
    const ctx = 'Roof shingle removal: A man is sitting on a roof. he';
    expect(await first('hellaswag')).toEqual([
      ' is using wrap to wrap a pair of skis.',
      ' is ripping level tiles off.',
      " is holding a rubik's cube.",
      ' starts pulling up roofing on a roof.',
    ].map((continuation) => ({ context: ctx, continuation })));
  });

  test('hellaswag: preprocess, and ctx_a + " " + ctx_b.capitalize() when the record has them', async () => {
    expect(hellaswagPreprocess('  How to dry [title] Step one [header] is  easy. ')).toBe('How to dry. Step one is easy.');
    const dir = path.join(tmp, 'hs');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'hellaswag_validation.jsonl'), JSON.stringify({ activity_label: 'Canoeing', ctx_a: 'A man paddles.', ctx_b: 'the MAN', ctx: 'x', endings: ['a', 'b', 'c', 'd'], label: 0 }) + '\n');
    expect((await loadHellaswag(dir))[0].requests[0]).toEqual({ context: 'Canoeing: A man paddles. The man', continuation: ' a' });
  });

  test('winogrande: sentence up to the blank + option → " " + the rest after the blank', async () => {
    const cont = ' always got the easier cases.';
    expect(await first('winogrande')).toEqual([
      { context: 'Sarah was a much better surgeon than Maria so Sarah', continuation: cont },
      { context: 'Sarah was a much better surgeon than Maria so Maria', continuation: cont },
    ]);
  });

  test('boolq: "{passage}\\nQuestion: {question}?\\nAnswer:" → " no", " yes"', async () => {
    const passage =
      "Ethanol fuel -- All biomass goes through at least some of these steps: it needs to be grown, collected, dried, fermented, distilled, and burned. All of these steps require resources and an infrastructure. The total amount of energy input into the process compared to the energy released by burning the resulting ethanol fuel is known as the energy balance (or ``energy returned on energy invested''). Figures compiled in a 2007 report by National Geographic Magazine point to modest results for corn ethanol produced in the US: one unit of fossil-fuel energy is required to create 1.3 energy units from the resulting ethanol. The energy balance for sugarcane ethanol produced in Brazil is more favorable, with one unit of fossil-fuel energy required to create 8 from the ethanol. Energy balance estimates are not easily produced, thus numerous such reports have been generated that are contradictory. For instance, a separate survey reports that production of ethanol from sugarcane, which requires a tropical climate to grow productively, returns from 8 to 9 units of energy for each unit expended, as compared to corn, which only returns about 1.34 units of fuel energy for each unit of energy expended. A 2006 University of California Berkeley study, after analyzing six separate studies, concluded that producing ethanol from corn uses much less petroleum than producing gasoline.";
    const ctx = `${passage}\nQuestion: does ethanol take more energy make that produces?\nAnswer:`;
    expect(await first('boolq')).toEqual([
      { context: ctx, continuation: ' no' },
      { context: ctx, continuation: ' yes' },
    ]);
  });

  test('lambada_openai: the text up to the last space → " " + the last word', async () => {
    expect(await first('lambada_openai')).toEqual([
      {
        context:
          'In my palm is a clear stone, and inside it is a small ivory statuette. A guardian angel.\n\n"Figured if you\'re going to be out at night getting hit by cars, you might as well have some backup."\n\nI look at him, feeling stunned. Like this is some sort of sign. But as I stare at Harlin, his mouth curved in a confident grin, I don\'t care about',
        continuation: ' signs',
      },
    ]);
  });

  test('gold indices: piqa label, arc answerKey in labels, hellaswag label, winogrande answer-1, boolq true→yes', async () => {
    const gold = async (t: string) => (await loadChoiceTask(t, DATA, { limit: 2 })).map((d) => d.gold);
    expect(await gold('piqa')).toEqual([0, 1]);
    expect((await gold('arc_easy'))[0]).toBe(0); // answerKey "A"
    expect((await gold('arc_challenge'))[0]).toBe(2); // answerKey "C"
    expect((await gold('hellaswag'))[0]).toBe(3);
    expect(await gold('winogrande')).toEqual([1, 0]); // answers "2", "1"
    expect((await gold('boolq'))[0]).toBe(0); // label "false" → " no"
  });
});

describe('mmlu', () => {
  const AA_PROMPT =
    'The following are multiple choice questions (with answers) about abstract algebra.\n\n' +
    'Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n' +
    'Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K are subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: B\n\n' +
    'Statement 1 | Every element of a group generates a cyclic subgroup of the group. Statement 2 | The symmetric group S_10 has 10 elements.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: C\n\n' +
    'Statement 1| Every function from a finite set onto itself must be one to one. Statement 2 | Every subgroup of an abelian group is abelian.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: A\n\n' +
    'Find the characteristic of the ring 2Z.\nA. 0\nB. 3\nC. 12\nD. 30\nAnswer: A\n\n';
  const AA_Q = 'Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:';

  test('5-shot prompt of the first abstract_algebra test question, choices " A".." D", gold B', () => {
    const docs = loadMmlu(DATA, { limit: 1, subjects: ['abstract_algebra'] });
    expect(docs).toHaveLength(1);
    expect(docs[0].requests).toEqual(['A', 'B', 'C', 'D'].map((l) => ({ context: AA_PROMPT + AA_Q, continuation: ' ' + l })));
    expect(docs[0].gold).toBe(1);
    expect(docs[0].subject).toBe('abstract_algebra');
  });

  test('shots are dropped from the front when the prompt and its answer exceed a forced max context', () => {
    const tok = loadTokenizer(TINY);
    const encode = (t: string) => tok.encode(t);
    const dev = readMmluCsv(path.join(DATA, 'mmlu', 'dev', 'abstract_algebra_dev.csv'));
    const q = readMmluCsv(path.join(DATA, 'mmlu', 'test', 'abstract_algebra_test.csv'), 1)[0];
    const header = 'The following are multiple choice questions (with answers) about abstract algebra.\n\n';
    const shotTexts = AA_PROMPT.slice(header.length).split(/(?<=Answer: [A-D]\n\n)/);
    expect(shotTexts).toHaveLength(5);
    const withLast = (k: number) => header + shotTexts.slice(5 - k).join('') + AA_Q;
    // Room for exactly the last 3 shots and the answer token.
    const fit3 = encode(withLast(3) + ' A').length;
    expect(mmluPrompt('abstract_algebra', dev, q, { encode, maxContext: fit3 })).toBe(withLast(3));
    expect(mmluPrompt('abstract_algebra', dev, q, { encode, maxContext: fit3 - 1 })).toBe(withLast(2));
    expect(mmluPrompt('abstract_algebra', dev, q, { encode, maxContext: 10 })).toBe(withLast(0)); // header and question stay
    expect(mmluPrompt('abstract_algebra', dev, q, { encode, maxContext: 100000 })).toBe(withLast(5));
  });

  test('the subject → category map covers the 57 subjects and the 4 standard categories', () => {
    expect(MMLU_SUBJECTS).toHaveLength(57);
    const count: Record<string, number> = {};
    for (const s of MMLU_SUBJECTS) count[MMLU_CATEGORIES[s]] = (count[MMLU_CATEGORIES[s]] ?? 0) + 1;
    expect(count).toEqual({ stem: 19, humanities: 13, social_sciences: 12, other: 13 }); // lm-eval's mmlu_stem, …
    expect(fs.readdirSync(path.join(DATA, 'mmlu', 'test')).map((f) => f.replace(/_test\.csv$/, '')).sort()).toEqual([...MMLU_SUBJECTS]);
  });

  test('--limit: first N test questions of each subject; micro-averaged, per subject and per category', () => {
    const docs = loadMmlu(DATA, { limit: 2, subjects: ['anatomy', 'philosophy', 'virology'] });
    expect(docs.map((d) => d.subject)).toEqual(['anatomy', 'anatomy', 'philosophy', 'philosophy', 'virology', 'virology']);
    // Fake log-likelihoods: the gold choice is the best on docs 0, 2, 3 and the worst on the others.
    const right = [true, false, true, true, false, false];
    const lls = docs.flatMap((d, i) => [0, 1, 2, 3].map((c) => (c === d.gold ? (right[i] ? -0.5 : -9) : -1 - c)));
    expect(choiceOutcomes(docs, lls).acc).toEqual(right.map((r) => (r ? 1 : 0)));
    const r = scoreMmlu(docs, lls, 0);
    expect(r.acc).toBeCloseTo(3 / 6, 12);
    expect(r.n).toBe(6);
    expect(r.subjects).toEqual({ anatomy: { acc: 0.5, n: 2 }, philosophy: { acc: 1, n: 2 }, virology: { acc: 0, n: 2 } });
    expect(r.categories).toEqual({ stem: { acc: 0.5, n: 2 }, humanities: { acc: 1, n: 2 }, other: { acc: 0, n: 2 } });
  });
});

describe('CSV reader', () => {
  test('quoted fields, "" escapes, newlines inside quotes, CRLF; records keep their first line', () => {
    const text = 'a,"b ""q"", c",d\r\n"multi\nline",x,\r\nlast,"",z\n';
    expect(parseCsv(text, 'f.csv')).toEqual([
      { fields: ['a', 'b "q", c', 'd'], line: 1 },
      { fields: ['multi\nline', 'x', ''], line: 2 },
      { fields: ['last', '', 'z'], line: 4 },
    ]);
    expect(() => parseCsv('a,"open\n', 'f.csv')).toThrow(/f\.csv:1: unterminated quoted field/);
  });
});

describe('errors', () => {
  let model: LoadedModel;
  const encode = (t: string) => [...t].map((c) => c.charCodeAt(0) % 100); // never reached: data is checked first
  beforeAll(() => {
    model = loadModel(TINY);
  });

  test('unknown task: lists the known tasks', async () => {
    await expect(evaluate(model, encode, { tasks: ['piqa', 'hellaswag2'], dataDir: DATA })).rejects.toThrow(
      `unknown task "hellaswag2" (--tasks): known tasks are ${TASK_NAMES.join(', ')}`,
    );
    expect(TASK_NAMES).toEqual(['wikitext2', 'c4', 'piqa', 'arc_easy', 'arc_challenge', 'hellaswag', 'winogrande', 'boolq', 'lambada_openai', 'mmlu']);
  });

  test('missing file: the error names the path', async () => {
    const dir = path.join(tmp, 'empty');
    fs.mkdirSync(dir);
    await expect(evaluate(model, encode, { tasks: ['boolq'], dataDir: dir })).rejects.toThrow(path.join(dir, 'boolq_val.jsonl'));
    fs.mkdirSync(path.join(dir, 'mmlu', 'dev'), { recursive: true });
    await expect(evaluate(model, encode, { tasks: ['mmlu'], dataDir: dir })).rejects.toThrow(path.join(dir, 'mmlu', 'dev', 'abstract_algebra_dev.csv'));
  });

  test('malformed records: file:line and what is wrong', async () => {
    const dir = path.join(tmp, 'bad');
    fs.mkdirSync(dir);
    const good = fs.readFileSync(path.join(DATA, 'piqa_validation.jsonl'), 'utf8').split('\n').slice(0, 2);
    const piqa = path.join(dir, 'piqa_validation.jsonl');
    fs.writeFileSync(piqa, [good[0], '', '{"goal": "x", "sol1": "a", "sol2": "b"', good[1]].join('\n'));
    await expect(evaluate(model, encode, { tasks: ['piqa'], dataDir: dir })).rejects.toThrow(new RegExp(`^${escape(piqa)}:3: not valid JSON`));
    fs.writeFileSync(piqa, [good[0], '{"goal": "x", "sol1": "a", "sol2": 7, "label": 0}'].join('\n'));
    await expect(evaluate(model, encode, { tasks: ['piqa'], dataDir: dir })).rejects.toThrow(`${piqa}:2: field "sol2" missing or not a string`);
    fs.writeFileSync(piqa, '{"goal": "x", "sol1": "a", "sol2": "b", "label": 2}\n');
    await expect(evaluate(model, encode, { tasks: ['piqa'], dataDir: dir })).rejects.toThrow(`${piqa}:1: field "label" gives answer 2, outside the 2 choices`);
    const wino = path.join(dir, 'winogrande_xl_validation.jsonl');
    fs.writeFileSync(wino, '{"sentence": "no blank here", "option1": "a", "option2": "b", "answer": "1"}\n');
    await expect(evaluate(model, encode, { tasks: ['winogrande'], dataDir: dir })).rejects.toThrow(`${wino}:1: field "sentence" has no "_" blank`);

    // MMLU: a record with 5 fields on its line 3 (line 2 holds a quoted newline).
    fs.cpSync(path.join(DATA, 'mmlu'), path.join(dir, 'mmlu'), { recursive: true });
    const csv = path.join(dir, 'mmlu', 'test', 'anatomy_test.csv');
    fs.writeFileSync(csv, 'Q1,a,b,c,d,A\n"Q2\nspans lines",a,b,c,d,B\nQ3,a,b,c,D\n');
    await expect(evaluate(model, encode, { tasks: ['mmlu'], dataDir: dir })).rejects.toThrow(`${csv}:4: expected 6 fields (question, A, B, C, D, answer), got 5`);
    fs.writeFileSync(csv, 'Q1,a,b,c,d,E\n');
    await expect(evaluate(model, encode, { tasks: ['mmlu'], dataDir: dir })).rejects.toThrow(`${csv}:1: answer must be one of A, B, C, D, got "E"`);
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
