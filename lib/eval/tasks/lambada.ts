// LAMBADA (lm-eval `lambada_openai`): context = the text up to its last space, continuation = " " + the
// last word; acc = the last word is the greedy continuation; ppl = exp(−mean log p(last word)).
import { LowbitError } from '../../load/errors';
import { readTaskRecords, strField, TASK_FILES, where } from '../datasets';
import type { LoadOptions, TextRequest } from './types';

export async function loadLambada(dataDir: string, opts: LoadOptions = {}): Promise<TextRequest[]> {
  return (await readTaskRecords(dataDir, TASK_FILES.lambada_openai, opts.limit)).map((r) => {
    const text = strField(r, 'text');
    const k = text.lastIndexOf(' ');
    if (k <= 0 || k === text.length - 1) throw new LowbitError('BAD_DATA', `${where(r)}: field "text" has no last word after a space`);
    return { context: text.slice(0, k), continuation: text.slice(k) };
  });
}
