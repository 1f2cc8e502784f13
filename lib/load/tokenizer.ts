// tokenizer.json through @huggingface/tokenizers (pure JS). Measured on the shared data it encodes the
// whole WikiText-2 test text (1.3 MB) in about a second and matches HF tokenizers' ids exactly, so texts
// are encoded whole: chunking would risk merges across chunk borders for no real gain.
import * as fs from 'fs';
import * as path from 'path';
import type { Tokenizer as HFTokenizer } from '@huggingface/tokenizers' with { 'resolution-mode': 'require' };
import { LowbitError, fsReason } from './errors';

// The package is ESM with a CommonJS build under its `require` export; a static import would make tsc
// (module node16, our output is CommonJS) refuse it, so load the CommonJS build directly.
// eslint-disable-next-line @typescript-eslint/no-var-requires
const { Tokenizer } = require('@huggingface/tokenizers') as { Tokenizer: typeof HFTokenizer };

export interface EncodeOptions {
  /** Add the post-processor's special tokens (BOS ...). Off by default: the GPTQ perplexity protocol uses none. */
  addSpecialTokens?: boolean;
}

export interface LowbitTokenizer {
  encode(text: string, options?: EncodeOptions): number[];
  decode(ids: ArrayLike<number>): string;
  /** Distinct ids the tokenizer can produce, added tokens included (may be below the model's vocab_size). */
  vocabSize: number;
}

export function loadTokenizer(dir: string): LowbitTokenizer {
  const file = path.join(dir, 'tokenizer.json');
  if (!fs.existsSync(file)) throw new LowbitError('FILE_NOT_FOUND', `${file}: not found (a model directory needs tokenizer.json)`);
  const json = readJson(file);
  // tokenizer_config.json is optional; it carries decode options such as clean_up_tokenization_spaces.
  const configFile = path.join(dir, 'tokenizer_config.json');
  const config = fs.existsSync(configFile) ? readJson(configFile) : {};
  // tokenizers.js cleans up spaces before punctuation unless told not to; HF's Qwen2/Llama tokenizers
  // do not, and decode must give back the original text.
  config.clean_up_tokenization_spaces ??= false;

  let tok: HFTokenizer;
  try {
    tok = new Tokenizer(json, config);
  } catch (e) {
    throw new LowbitError('BAD_TOKENIZER', `${file}: cannot build the tokenizer (${(e as Error).message})`, { cause: e });
  }
  const vocabSize = tok.get_vocab(true).size;
  return {
    encode: (text, options) => tok.encode(text, { add_special_tokens: options?.addSpecialTokens ?? false }).ids,
    decode: (ids) => tok.decode(Array.from(ids)),
    vocabSize,
  };
}

function readJson(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new LowbitError('BAD_TOKENIZER', `${file}: cannot read (${fsReason(e)})`, { cause: e });
  }
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not a JSON object');
    return v;
  } catch (e) {
    throw new LowbitError('BAD_TOKENIZER', `${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
}
