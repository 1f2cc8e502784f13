// One error type for everything that goes wrong while reading a model, so the CLI can print the message
// alone (it always names the file, tensor or option at fault) and callers can branch on `code`.

export type LowbitErrorCode =
  | 'FILE_NOT_FOUND' // a required file (config.json, tokenizer.json, a shard) is absent
  | 'BAD_SAFETENSORS' // a .safetensors file is malformed: header, offsets, dtype, truncation
  | 'BAD_CHECKPOINT' // the set of files is inconsistent: index.json, shards, duplicate tensors
  | 'BAD_CONFIG' // config.json is unreadable, has a missing or invalid option
  | 'UNSUPPORTED' // a valid but unsupported architecture or option
  | 'MISSING_TENSOR' // a tensor the architecture needs is in none of the files
  | 'SHAPE_MISMATCH' // a tensor's shape disagrees with config.json
  | 'BAD_DTYPE' // a tensor has a dtype the consumer cannot take
  | 'BAD_TOKENIZER' // tokenizer.json is unreadable
  | 'BAD_ARGUMENT' // an API or CLI option is out of range or inconsistent
  | 'BAD_DATA' // an evaluation or calibration data file is malformed (names file and line)
  | 'IO_ERROR' // writing a file failed
  | 'QUEUE_ERROR' // the job queue (Redis) of a distributed study is unreachable or refused a command
  | 'INPUT_MISMATCH'; // a worker's copy of a model, data or calibration file differs from the study's

export class LowbitError extends Error {
  readonly code: LowbitErrorCode;

  constructor(code: LowbitErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'LowbitError';
    this.code = code;
  }
}

/** Node's own message for an fs failure already names the path; keep only the reason (ENOENT ...). */
export function fsReason(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  return err.code ?? err.message;
}
