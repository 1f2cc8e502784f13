// PIQA (lm-eval `piqa`): "Question: {goal}\nAnswer:" → " {sol1}" | " {sol2}"; gold = label; acc, acc_norm.
import { checkGold, intField, readTaskRecords, strField, TASK_FILES } from '../datasets';
import type { ChoiceDoc, LoadOptions } from './types';

export async function loadPiqa(dataDir: string, opts: LoadOptions = {}): Promise<ChoiceDoc[]> {
  return (await readTaskRecords(dataDir, TASK_FILES.piqa, opts.limit)).map((r) => {
    const context = `Question: ${strField(r, 'goal')}\nAnswer:`;
    const choices = [strField(r, 'sol1'), strField(r, 'sol2')];
    return {
      requests: choices.map((c) => ({ context, continuation: ' ' + c })),
      gold: checkGold(r, 'label', intField(r, 'label'), 2),
      choiceLengths: choices.map((c) => c.length),
    };
  });
}
