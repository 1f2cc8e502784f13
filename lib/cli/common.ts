// Shared CLI plumbing: option parsing helpers, Ctrl-C → AbortSignal, and error reporting without stacks.
import * as path from 'path';
import { InvalidArgumentError } from 'commander';
import { GPU_DTYPES, GpuDType } from '../eval/cuda';
import { addon } from '../native/addon';

export const DEFAULT_DATA_DIR = path.resolve(__dirname, '..', '..', 'data');
export const DEFAULT_MODEL_DIR = path.resolve(__dirname, '..', '..', 'models', 'qwen3-tiny');

export function intOption(name: string, min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) {
      throw new InvalidArgumentError(`${name} must be an integer in [${min}, ${max}], got "${v}"`);
    }
    return n;
  };
}

export function gpuDtypeOption(v: string): GpuDType {
  if (!(GPU_DTYPES as readonly string[]).includes(v)) throw new InvalidArgumentError(`--dtype must be one of ${GPU_DTYPES.join(', ')}, got "${v}"`);
  return v as GpuDType;
}

export function listOption(v: string): string[] {
  return v.split(',').map((s) => s.trim()).filter(Boolean);
}

export function applyThreads(threads?: number): number {
  return threads ? addon.setThreads(threads) : addon.getThreads();
}

/** An AbortSignal that fires on the first Ctrl-C; a second one exits at once. */
export function interruptSignal(): AbortSignal {
  const ac = new AbortController();
  process.once('SIGINT', () => {
    process.stderr.write('\nlowbit: interrupted, stopping after the current step (Ctrl-C again to quit now)\n');
    ac.abort();
    process.once('SIGINT', () => process.exit(130));
  });
  return ac.signal;
}

export function fail(e: unknown): never {
  const err = e as Error;
  if (err?.name === 'AbortError') {
    process.stderr.write('lowbit: aborted; nothing was written\n');
    process.exit(130);
  }
  const msg = err?.name === 'LowbitError' || err?.name === 'Error' ? err.message : String(err?.stack ?? err);
  process.stderr.write(`lowbit: ${msg}\n`);
  process.exit(1);
}
