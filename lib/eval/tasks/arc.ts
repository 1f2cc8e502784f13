// AI2 ARC (lm-eval `arc_easy`, `arc_challenge`): "Question: {question}\nAnswer:" → " {choice text}" for each
// choice; gold = index of answerKey in choices.label; acc, acc_norm.
import { LowbitError } from '../../load/errors';
import { checkGold, readTaskRecords, strArrayField, strField, TASK_FILES, where } from '../datasets';
import type { ChoiceDoc, LoadOptions } from './types';

export async function loadArc(task: 'arc_easy' | 'arc_challenge', dataDir: string, opts: LoadOptions = {}): Promise<ChoiceDoc[]> {
  return (await readTaskRecords(dataDir, TASK_FILES[task], opts.limit)).map((r) => {
    const context = `Question: ${strField(r, 'question')}\nAnswer:`;
    const ch = r.rec.choices as Record<string, unknown> | undefined;
    if (!ch || typeof ch !== 'object') throw new LowbitError('BAD_DATA', `${where(r)}: field "choices" missing or not an object`);
    const texts = strArrayField(r, 'choices.text', ch.text);
    const labels = strArrayField(r, 'choices.label', ch.label);
    if (labels.length !== texts.length) throw new LowbitError('BAD_DATA', `${where(r)}: choices.text and choices.label differ in length`);
    const key = strField(r, 'answerKey');
    return {
      requests: texts.map((c) => ({ context, continuation: ' ' + c })),
      gold: checkGold(r, 'answerKey', labels.indexOf(key), texts.length),
      choiceLengths: texts.map((c) => c.length),
    };
  });
}
