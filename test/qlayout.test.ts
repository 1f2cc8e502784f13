// The CUDA kernels' device layout of packed weights (native/cuda/qlayout.h), built on the host by
// native/cuda/qlayout_pack.cpp — in every build, so it is checked here without a GPU. Each record is read back
// with a reading of the layout's definition written in this file and compared with the quantized tensor it came
// from: every integer (in act-order's packed column order), every fp16 scale (times the power of two P) and zero,
// the zero padding past the last row and column; and the Hopper GEMM's x-tile column order against the A fragments'
// k indices. The GPU tests (test/cuda-packed.test.ts) check the kernels on it.
import { f32ToF16Bits } from '../lib/export/pack';
import { addon } from '../lib/native/addon';
import { packLinear } from '../lib/quant/packed';
import type { QuantizedTensor } from '../lib/quant/weights';
import { deviceScaleFactor, randomQuantized } from './helpers/quantized';

interface DeviceLayout {
  records: Uint8Array;
  ntiles: number;
  nkb: number;
  nsub: number;
  oscale: number;
  perm?: Int32Array;
}

// The definition (qlayout.h), stated again.
const words = (bits: number) => (bits === 2 ? 4 : bits === 3 ? 6 : bits === 4 ? 8 : 16);
const vec = (bits: number) => (bits === 3 ? 2 : 4);
const wordIndex = (bits: number, w: number, lane: number) => (Math.floor(w / vec(bits)) * 32 + lane) * vec(bits) + (w % vec(bits));
const recordBytes = (bits: number, nsub: number) => 128 * words(bits) + 64 * nsub;
/** lane, mma step, pair (register a0..a3) and element of row i, column c of a 16×128 record */
function slot(i: number, c: number) {
  const s = c >> 5, t = (c & 31) >> 3, h = (c & 7) >> 2, v = c & 3;
  return { lane: (i & 7) * 4 + t, st: 2 * s + h, j: (v >= 2 ? 2 : 0) + (i >> 3), e: v & 1 };
}
/** q of row i, column c of the record at byte offset `at` */
function readQ(rec: DataView, at: number, bits: number, i: number, c: number): number {
  const { lane, st, j, e } = slot(i, c);
  const word = (w: number) => rec.getUint32(at + 4 * wordIndex(bits, w, lane), true);
  if (bits === 4) return (word(st) >>> (4 * j + 16 * e)) & 15;
  if (bits === 8) return (word(2 * st + (j >> 1)) >>> (8 * (j & 1) + 16 * e)) & 255;
  const lo = (word(st >> 1) >>> (8 * (st & 1) + 2 * j + 16 * e)) & 3;
  if (bits === 2) return lo;
  return lo | (((word(4 + (st >> 2)) >>> (4 * (st & 3) + j + 16 * e)) & 1) << 2);
}
/** fp16 bits of (scale, zero) of row i, sub-group js of the record at `at` */
function readSz(rec: DataView, at: number, bits: number, i: number, js: number): [number, number] {
  const o = at + 128 * words(bits) + ((js * 8 + (i & 7)) * 2 + (i >> 3)) * 4;
  return [rec.getUint16(o, true), rec.getUint16(o + 2, true)];
}

function check(q: QuantizedTensor, rows: number, cols: number): void {
  const p = packLinear(q, rows, cols);
  const l = addon.qlayoutPack(p) as DeviceLayout;
  const g = q.groupSize < 0 ? cols : q.groupSize;
  const ng = cols / g;
  const sub = g >= 128 || g === cols ? 128 : g;
  expect(l.nsub).toBe(128 / sub);
  expect(l.nkb).toBe(Math.ceil(cols / 128));
  expect(l.ntiles % 2).toBe(0);
  expect(l.ntiles * 16).toBeGreaterThanOrEqual(rows);
  expect(l.records.length).toBe(l.ntiles * l.nkb * recordBytes(q.bits, l.nsub));
  const P = deviceScaleFactor(q.scales);
  expect(l.oscale).toBe(1 / P);
  // packed column j holds original column perm[j]: act-order sorts the columns by group
  const perm = l.perm ?? Int32Array.from({ length: cols }, (_, j) => j);
  if (q.gIdx) for (let j = 1; j < cols; j++) expect(q.gIdx[perm[j]]).toBeGreaterThanOrEqual(q.gIdx[perm[j - 1]]);
  const rec = new DataView(l.records.buffer, l.records.byteOffset, l.records.byteLength);
  let bad = 0;
  for (let tile = 0; tile < l.ntiles; tile++) {
    for (let kb = 0; kb < l.nkb; kb++) {
      const at = (kb * l.ntiles + tile) * recordBytes(q.bits, l.nsub);
      for (let i = 0; i < 16; i++) {
        const r = tile * 16 + i;
        for (let c = 0; c < 128; c++) {
          const j = kb * 128 + c;
          const want = r < rows && j < cols ? q.qweight[r * cols + perm[j]] : 0;
          if (readQ(rec, at, q.bits, i, c) !== want) bad++;
        }
        for (let js = 0; js < l.nsub; js++) {
          const j = kb * 128 + js * sub;
          const [s, z] = readSz(rec, at, q.bits, i, js);
          if (r >= rows || j >= cols) {
            if (s !== 0 || z !== 0) bad++;
            continue;
          }
          const grp = q.gIdx ? q.gIdx[perm[j]] : Math.floor(j / g);
          if (s !== f32ToF16Bits(Math.fround(q.scales[r * ng + grp] * P)) || z !== f32ToF16Bits(q.zeros[r * ng + grp])) bad++;
        }
      }
    }
  }
  expect(bad).toBe(0);
}

describe('device layout of packed weights (host repack for the CUDA kernels)', () => {
  const cases: [number, number, number, number, boolean][] = [];
  for (const bits of [2, 3, 4, 8]) {
    cases.push([bits, 40, 384, 32, false], [bits, 33, 320, 64, false], [bits, 18, 384, 128, false], [bits, 20, 200, -1, false], [bits, 17, 512, 128, true], [bits, 16, 512, 256, true]);
  }
  test.each(cases)('int%i, %i×%i, group %i, act-order %s: every integer, scale and zero where the definition puts it', (bits, rows, cols, group, act) => {
    check(randomQuantized(bits, rows, cols, group, act, bits * 7919 + rows * cols + group), rows, cols);
  });

  test('a group size the kernels do not take is named', () => {
    const q = randomQuantized(4, 16, 96, 48, false, 3);
    expect(() => addon.qlayoutPack(packLinear(q, 16, 96))).toThrow(/group sizes 32, 64 or multiples of 128 .*got 48/);
  });
});

test("the wgmma GEMM's x tiles take each step's columns in the A fragments' k order (qlayout.h q_wgmma_col)", () => {
  const order = addon.qgemmColumnOrder() as Int32Array;
  const seen = new Set<number>();
  for (let st = 0; st < 8; st++)
    for (let kap = 0; kap < 16; kap++) {
      const c = order[st * 16 + kap];
      seen.add(c);
      // mma.sync/wgmma A fragment: a0/a1 hold k indices 2t, 2t + 1 (t = lane % 4), a2/a3 hold 2t + 8, 2t + 9
      for (const row of [0, 5, 8, 15]) {
        const s = slot(row, c);
        expect(s.st).toBe(st);
        expect(2 * (s.lane & 3) + s.e + (s.j >= 2 ? 8 : 0)).toBe(kap);
      }
    }
  expect(seen.size).toBe(128); // every column of the block once
});
