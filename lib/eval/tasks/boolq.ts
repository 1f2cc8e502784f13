// BoolQ (lm-eval `boolq`, SuperGLUE): "{passage}\nQuestion: {question}?\nAnswer:" → " no" | " yes";
// gold = 1 (yes) when label is true; acc.
import { LowbitError } from '../../load/errors';
import { dataFile, readJsonlRecords, strField, TASK_FILES } from '../datasets';
import type { ChoiceDoc, LoadOptions } from './types';

export function loadBoolq(dataDir: string, opts: LoadOptions = {}): ChoiceDoc[] {
  const file = dataFile(dataDir, TASK_FILES.boolq);
  return readJsonlRecords(file, opts.limit).map((r) => {
    const context = `${strField(r, 'passage')}\nQuestion: ${strField(r, 'question')}?\nAnswer:`;
    const l = r.rec.label;
    const gold = l === true || l === 'true' || l === 1 ? 1 : l === false || l === 'false' || l === 0 ? 0 : -1;
    if (gold < 0) throw new LowbitError('BAD_DATA', `${r.file}:${r.line}: field "label" must be true or false, got ${JSON.stringify(l)}`);
    return {
      requests: [{ context, continuation: ' no' }, { context, continuation: ' yes' }],
      gold,
      choiceLengths: [2, 3],
    };
  });
}
