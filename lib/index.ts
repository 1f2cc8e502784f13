// lowbit's public API: load → calibrate → quantize → export → evaluate.
export { loadModel, scanNonFinite } from './load/model';
export { loadTokenizer } from './load/tokenizer';
export { parseConfig, SUPPORTED_ARCHITECTURES } from './load/config';
export { openCheckpoint, openSafetensors, writeSafetensors } from './load/safetensors';
export { LowbitError } from './load/errors';
export type { LoadedModel, ModelConfig, ModelWeights, LayerWeights, Linear } from './load/types';
export { readCalibIds, sampleWindows, calibrationText } from './calibrate/calibration';
export type { CalibrationSet } from './calibrate/calibration';
export { loadCalibration } from './calibrate/resolve';
export { quantize, needsCalibration } from './quant/pipeline';
export type { QuantizeOptions, QuantizeReport, QuantizeProgress } from './quant/pipeline';
export { parseSpec, defaultSpec, validateSpec, specName, METHODS } from './quant/spec';
export type { QuantSpec, Method } from './quant/spec';
export { saveQuantized } from './export/checkpoint';
export { evaluate } from './eval/evaluate';
export { perplexity } from './eval/perplexity';
export { scoreSequences } from './eval/forward';
export { addon as native } from './native/addon';
