// LAMBADA (lm-eval `lambada_openai`): context = the text up to its last space, continuation = " " + the
// last word; acc = the last word is the greedy continuation; ppl = exp(−mean log p(last word)).
import { LowbitError } from '../../load/errors';
import { dataFile, readJsonlRecords, strField, TASK_FILES } from '../datasets';
import type { LoadOptions, TextRequest } from './types';

export function loadLambada(dataDir: string, opts: LoadOptions = {}): TextRequest[] {
  const file = dataFile(dataDir, TASK_FILES.lambada_openai);
  return readJsonlRecords(file, opts.limit).map((r) => {
    const text = strField(r, 'text');
    const k = text.lastIndexOf(' ');
    if (k <= 0 || k === text.length - 1) throw new LowbitError('BAD_DATA', `${r.file}:${r.line}: field "text" has no last word after a space`);
    return { context: text.slice(0, k), continuation: text.slice(k) };
  });
}
