// HellaSwag (lm-eval `hellaswag`): query = preprocess(activity_label + ": " + ctx_a + " " + capitalize(ctx_b)),
// choices " " + preprocess(ending); acc, acc_norm.
// The shared data has the HF `ctx` column only (ctx_a and ctx_b joined, ctx_b not re-capitalised); when a
// record carries ctx_a/ctx_b they are used exactly as lm-eval does, otherwise `ctx` is used as it is.
import { LowbitError } from '../../load/errors';
import { checkGold, intField, readTaskRecords, strArrayField, strField, TASK_FILES, where } from '../datasets';
import type { ChoiceDoc, LoadOptions } from './types';

/** lm-eval's hellaswag preprocess: strip; " [title]" → ". "; drop "[...]"; "  " → " ". */
export function hellaswagPreprocess(text: string): string {
  return pyStrip(text).replaceAll(' [title]', '. ').replace(/\[.*?\]/g, '').replaceAll('  ', ' ');
}

/** Python's str.strip() (Unicode whitespace). */
function pyStrip(s: string): string {
  return s.replace(/^[\s\x1c-\x1f\x85]+|[\s\x1c-\x1f\x85]+$/gu, '');
}

/** Python's str.capitalize(): first character upper case, the rest lower case. */
export function pyCapitalize(s: string): string {
  return s.length ? s[0].toUpperCase() + s.slice(1).toLowerCase() : s;
}

export async function loadHellaswag(dataDir: string, opts: LoadOptions = {}): Promise<ChoiceDoc[]> {
  return (await readTaskRecords(dataDir, TASK_FILES.hellaswag, opts.limit)).map((r) => {
    const ctx = typeof r.rec.ctx_a === 'string' && typeof r.rec.ctx_b === 'string'
      ? `${r.rec.ctx_a} ${pyCapitalize(r.rec.ctx_b)}`
      : strField(r, 'ctx');
    const context = hellaswagPreprocess(`${strField(r, 'activity_label')}: ${ctx}`);
    const endings = strArrayField(r, 'endings').map(hellaswagPreprocess);
    if (endings.length !== 4) throw new LowbitError('BAD_DATA', `${where(r)}: field "endings" must hold 4 endings, has ${endings.length}`);
    return {
      requests: endings.map((e) => ({ context, continuation: ' ' + e })),
      gold: checkGold(r, 'label', intField(r, 'label'), 4),
      choiceLengths: endings.map((e) => e.length),
    };
  });
}
