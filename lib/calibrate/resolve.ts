// Picks the calibration windows a spec asks for: a raw id file (--calib-ids), or windows drawn with the
// seed from a text source (--calib: c4, wikitext2, or a .jsonl/.txt file) tokenized with the model's tokenizer.
import type { LoadedModel } from '../load/types';
import type { QuantSpec } from '../quant/spec';
import { CalibrationSet, calibrationText, readCalibIds, sampleWindows } from './calibration';

export interface CalibrationSource {
  calibIds?: string;
  calib?: string;
  dataDir: string;
}

export function loadCalibration(
  model: LoadedModel,
  encode: (text: string) => ArrayLike<number>,
  spec: QuantSpec,
  src: CalibrationSource,
): CalibrationSet {
  if (src.calibIds) return readCalibIds(src.calibIds, spec.nsamples, spec.calibSeqLen, 2048, model.config.vocabSize);
  const name = src.calib ?? 'c4';
  return sampleWindows(encode(calibrationText(name, src.dataDir)), spec.nsamples, spec.calibSeqLen, spec.seed, name);
}
