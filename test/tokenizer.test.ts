// Token ids must equal HF tokenizers' exactly: perplexity windows and the calibration set are cut from them.
import * as fs from 'fs';
import * as path from 'path';
import { loadTokenizer } from '../lib/load/tokenizer';
import { SHARED_DIR } from './helpers/fixtures';

interface Case {
  text: string;
  ids: number[];
}
interface Head {
  chars: number;
  ids: number[];
}
interface GoldenEntry {
  stress: Case;
  special?: Case;
  wikitext_head: Head;
  c4_head: Head;
  decode_roundtrip?: boolean;
  wikitext_tokens_total?: number;
  c4_tokens_total?: number;
}

const golden = JSON.parse(fs.readFileSync(path.join(SHARED_DIR, 'golden', 'tokenizers.json'), 'utf8')) as Record<string, GoldenEntry | string>;

/** The golden file's keys name the tokenizer they were made with; map each to its directory. */
const TOKENIZER_DIRS: Record<string, string> = {
  'own_tokenizer (shared/models/*/tokenizer.json)': path.join(SHARED_DIR, 'models', 'qwen3-tiny'),
  'qwen2_qwen3_base_vocab (golden/qwen2-tokenizer/tokenizer.json)': path.join(SHARED_DIR, 'golden', 'qwen2-tokenizer'),
};

/** The evaluation texts as the GPTQ protocol joins them (see shared/data/README.md). */
const data = path.join(SHARED_DIR, 'data');
const wikitext = (JSON.parse(fs.readFileSync(path.join(data, 'wikitext-2-raw-v1.test.json'), 'utf8')) as string[]).join('\n\n');
const c4 = fs
  .readFileSync(path.join(data, 'c4_validation_shard0_head.jsonl'), 'utf8')
  .split('\n')
  .filter((l) => l.trim())
  .map((l) => JSON.parse(l).text as string)
  .join(' ');

const entries = Object.entries(golden).filter((e): e is [string, GoldenEntry] => typeof e[1] === 'object');

test('every golden tokenizer entry is covered', () => {
  expect(entries.map(([k]) => k).sort()).toEqual(Object.keys(TOKENIZER_DIRS).sort());
});

describe.each(entries)('%s', (key, g) => {
  const tok = loadTokenizer(TOKENIZER_DIRS[key]);

  test('stress text', () => {
    expect(tok.encode(g.stress.text)).toEqual(g.stress.ids);
  });

  test('WikiText-2 and C4 heads', () => {
    expect(tok.encode(wikitext.slice(0, g.wikitext_head.chars))).toEqual(g.wikitext_head.ids);
    expect(tok.encode(c4.slice(0, g.c4_head.chars))).toEqual(g.c4_head.ids);
  });

  if (g.special) {
    const special = g.special;
    test('special tokens in the text are matched even without addSpecialTokens', () => {
      expect(tok.encode(special.text)).toEqual(special.ids);
    });
  }

  test('decode gives the text back', () => {
    expect(tok.decode(tok.encode(g.stress.text))).toBe(g.stress.text);
    if (g.special) expect(tok.decode(tok.encode(g.special.text))).toBe(g.special.text);
  });

  if (g.wikitext_tokens_total !== undefined && g.c4_tokens_total !== undefined) {
    const totals = { wikitext: g.wikitext_tokens_total, c4: g.c4_tokens_total };
    test('whole WikiText-2 and C4 texts: token counts and speed', () => {
      for (const [name, text] of [['wikitext', wikitext], ['c4', c4]] as const) {
        const t0 = performance.now();
        const ids = tok.encode(text);
        const ms = performance.now() - t0;
        expect([name, ids.length]).toEqual([name, totals[name]]);
        // Guards against a pathological slowdown, not a benchmark: ~1-2 s on a laptop core.
        expect(ms).toBeLessThan(30000);
      }
    });
  }
});

test('vocabSize counts added tokens', () => {
  expect(loadTokenizer(path.join(SHARED_DIR, 'golden', 'qwen2-tokenizer')).vocabSize).toBe(151643 + 3);
});
