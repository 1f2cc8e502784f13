// WinoGrande (lm-eval `winogrande`, partial scoring): for each option the context is the sentence up to
// the blank with the option in its place; the continuation, the same for both, is " " + the rest of the
// sentence after the blank, stripped; acc.
import { LowbitError } from '../../load/errors';
import { checkGold, intField, readTaskRecords, strField, TASK_FILES, where } from '../datasets';
import type { ChoiceDoc, LoadOptions } from './types';

export async function loadWinogrande(dataDir: string, opts: LoadOptions = {}): Promise<ChoiceDoc[]> {
  return (await readTaskRecords(dataDir, TASK_FILES.winogrande, opts.limit)).map((r) => {
    const sentence = strField(r, 'sentence');
    const idx = sentence.indexOf('_');
    if (idx < 0) throw new LowbitError('BAD_DATA', `${where(r)}: field "sentence" has no "_" blank`);
    const target = ' ' + sentence.slice(idx + 1).trim();
    const options = [strField(r, 'option1'), strField(r, 'option2')];
    return {
      requests: options.map((o) => ({ context: sentence.slice(0, idx) + o, continuation: target })),
      gold: checkGold(r, 'answer', intField(r, 'answer') - 1, 2),
      choiceLengths: options.map(() => target.length - 1),
    };
  });
}
