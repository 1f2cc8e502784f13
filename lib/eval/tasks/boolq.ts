// BoolQ (lm-eval `boolq`, SuperGLUE): "{passage}\nQuestion: {question}?\nAnswer:" → " no" | " yes";
// gold = 1 (yes) when label is true; acc.
import { LowbitError } from '../../load/errors';
import { readTaskRecords, strField, TASK_FILES, where } from '../datasets';
import type { ChoiceDoc, LoadOptions } from './types';

export async function loadBoolq(dataDir: string, opts: LoadOptions = {}): Promise<ChoiceDoc[]> {
  return (await readTaskRecords(dataDir, TASK_FILES.boolq, opts.limit)).map((r) => {
    const context = `${strField(r, 'passage')}\nQuestion: ${strField(r, 'question')}?\nAnswer:`;
    const l = r.rec.label;
    const gold = l === true || l === 'true' || l === 1 ? 1 : l === false || l === 'false' || l === 0 ? 0 : -1;
    if (gold < 0) throw new LowbitError('BAD_DATA', `${where(r)}: field "label" must be true or false, got ${JSON.stringify(l)}`);
    return {
      requests: [{ context, continuation: ' no' }, { context, continuation: ' yes' }],
      gold,
      choiceLengths: [2, 3],
    };
  });
}
