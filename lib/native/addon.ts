// The compiled addon, found by node-gyp-build (prebuilds/ first, then build/Release) and typed here.
import * as fs from 'fs';
import * as path from 'path';

export type WeightDType = 'F32' | 'BF16' | 'F16';
/** A row-major weight matrix as the kernels take it: fp32, or bf16/f16 bits in a Uint16Array. */
export interface WeightView {
  data: Float32Array | Uint16Array;
  dtype: WeightDType;
}
export type Weight = Float32Array | WeightView;

/** A SIMD level of the CPU kernels (simdLevel caps the running level at what the hardware has). */
export type SimdLevel = 'scalar' | 'avx2' | 'avx512';

export interface NativeAddon {
  mmapFile(path: string): ArrayBuffer;
  simdLevel(cap?: SimdLevel): SimdLevel;
  setThreads(n: number): number;
  getThreads(): number;
  [name: string]: any;
}

/** The package root: the nearest folder holding binding.gyp above this file (dist/, lib/) or, for a copy compiled
 *  elsewhere (benchmarks built with tsc --outDir /tmp/...), above the working directory. */
function packageRoot(): string {
  for (const start of [__dirname, process.cwd()]) {
    for (let d = start; ; d = path.dirname(d)) {
      if (fs.existsSync(path.join(d, 'binding.gyp'))) return d;
      if (path.dirname(d) === d) break;
    }
  }
  return process.cwd();
}

function load(): NativeAddon {
  const root = packageRoot();
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    return require(require.resolve('node-gyp-build', { paths: [root, __dirname] }))(root) as NativeAddon;
  } catch (e) {
    throw new Error(
      `lowbit: the native addon is not built (${(e as Error).message.split('\n')[0]}). ` +
        `Run \`npm install\` (builds it with node-gyp; needs python3, make and a C++17 compiler) or \`npm run build:native\`.`,
    );
  }
}

export const addon: NativeAddon = load();

/** A bare fp32 weight (owned by lowbit) rather than a {data, dtype} view. Not `instanceof`: arrays made by
 *  the addon come from the main realm, which differs from a test sandbox's. */
export function isF32Array(w: unknown): w is Float32Array {
  return ArrayBuffer.isView(w) && Object.prototype.toString.call(w) === '[object Float32Array]';
}
