import * as fs from 'fs';
import * as path from 'path';
import { parseConfig } from '../lib/load/config';
import { LowbitError } from '../lib/load/errors';
import { f16ToF32, loadModel, namedTensors, scanNonFinite } from '../lib/load/model';
import { addon } from '../lib/native/addon';
import { TensorToWrite, openCheckpoint, openSafetensors, writeSafetensors } from '../lib/load/safetensors';
import { loadTokenizer } from '../lib/load/tokenizer';
import { LINEAR_NAMES, LINEAR_TENSORS } from '../lib/load/types';
import { SHARED_DIR, SYNTH, syntheticModel, tmpDir, toBf16, writeModelDir, writeRawSafetensors } from './helpers/fixtures';

const TINY = path.join(SHARED_DIR, 'models', 'qwen3-tiny');

/** Runs fn, expects a LowbitError with this code whose message matches every pattern. */
function expectLowbitError(fn: () => unknown, code: string, ...patterns: RegExp[]): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(LowbitError);
  expect((err as LowbitError).code).toBe(code);
  for (const p of patterns) expect((err as LowbitError).message).toMatch(p);
}

const esc = (s: string): RegExp => new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));

let tmp: string;
beforeEach(() => {
  tmp = tmpDir();
});
afterEach(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('qwen3-tiny from ../shared', () => {
  const cfg = JSON.parse(fs.readFileSync(path.join(TINY, 'config.json'), 'utf8'));

  test('config matches config.json', () => {
    const c = parseConfig(TINY);
    expect(c).toMatchObject({
      architecture: 'Qwen3ForCausalLM',
      modelType: cfg.model_type,
      hiddenSize: cfg.hidden_size,
      intermediateSize: cfg.intermediate_size,
      numLayers: cfg.num_hidden_layers,
      numHeads: cfg.num_attention_heads,
      numKvHeads: cfg.num_key_value_heads,
      headDim: cfg.head_dim,
      vocabSize: cfg.vocab_size,
      rmsNormEps: cfg.rms_norm_eps,
      ropeTheta: cfg.rope_parameters.rope_theta,
      tieWordEmbeddings: cfg.tie_word_embeddings,
      qkNorm: true,
      attentionBias: cfg.attention_bias,
      maxPositionEmbeddings: cfg.max_position_embeddings,
    });
  });

  test('weights have the shapes config.json implies and stay views over the mapped file', () => {
    const m = loadModel(TINY);
    const { hidden_size: h, intermediate_size: inter, num_attention_heads: nh, num_key_value_heads: nkv, head_dim: hd } = cfg;
    const file = path.join(TINY, 'model.safetensors');
    expect(m.files).toEqual([file]);
    expect(m.weights.layers).toHaveLength(cfg.num_hidden_layers);

    const embed = m.weights.embed;
    expect(embed).not.toBeInstanceOf(Float32Array);
    if (embed instanceof Float32Array) return;
    expect(embed.dtype).toBe('BF16');
    expect(embed.data.length).toBe(cfg.vocab_size * h);
    // The whole file is the backing buffer: nothing was copied.
    expect(embed.data.buffer.byteLength).toBe(fs.statSync(file).size);
    expect(m.weights.lmHead).toBe(embed);

    const expected = { q: [nh * hd, h], k: [nkv * hd, h], v: [nkv * hd, h], o: [h, nh * hd], gate: [inter, h], up: [inter, h], down: [h, inter] };
    for (const layer of m.weights.layers) {
      for (const n of LINEAR_NAMES) {
        const lin = layer.linears[n]!;
        expect([n, lin.outFeatures, lin.inFeatures]).toEqual([n, ...expected[n]]);
        const w = lin.weight as { data: Uint16Array };
        expect(w.data.length).toBe(lin.outFeatures * lin.inFeatures);
        expect(w.data.buffer).toBe(embed.data.buffer);
        expect(lin.bias).toBeUndefined();
      }
      expect(layer.inputNorm).toHaveLength(h);
      expect(layer.postAttnNorm).toHaveLength(h);
      expect(layer.qNorm).toHaveLength(hd);
      expect(layer.kNorm).toHaveLength(hd);
    }
    expect(m.weights.finalNorm).toHaveLength(h);
  });

  test('norms are fp32 copies equal to the bf16 values', () => {
    const m = loadModel(TINY);
    const raw = openSafetensors(path.join(TINY, 'model.safetensors')).get('model.layers.0.input_layernorm.weight');
    const bits = raw.data as Uint16Array;
    const norm = m.weights.layers[0].inputNorm;
    expect(norm.buffer.byteLength).toBe(norm.byteLength);
    const back = new Uint32Array(norm.buffer);
    for (let i = 0; i < bits.length; i++) expect(back[i]).toBe(bits[i] << 16);
  });

  test('has no NaN/Inf and the tokenizer loads', () => {
    expect(scanNonFinite(loadModel(TINY))).toEqual([]);
    expect(loadTokenizer(TINY).vocabSize).toBe(cfg.vocab_size);
  });
});

describe('synthetic models', () => {
  test('Qwen2: q/k/v biases, untied lm_head, F32 weights', () => {
    const dir = writeModelDir(path.join(tmp, 'm'), syntheticModel({ architecture: 'Qwen2ForCausalLM', dtype: 'F32' }));
    const m = loadModel(dir);
    expect(m.config).toMatchObject({ architecture: 'Qwen2ForCausalLM', attentionBias: true, oBias: false, qkNorm: false, headDim: SYNTH.headDim });
    const l0 = m.weights.layers[0];
    expect(l0.linears.q.bias).toHaveLength(SYNTH.heads * SYNTH.headDim);
    expect(l0.linears.k.bias).toHaveLength(SYNTH.kvHeads * SYNTH.headDim);
    expect(l0.linears.o.bias).toBeUndefined();
    expect(l0.qNorm).toBeUndefined();
    expect(m.weights.lmHead).not.toBe(m.weights.embed);
    expect(m.weights.lmHead).toBeInstanceOf(Float32Array);
    expect(m.weights.lmHead).toEqual(openSafetensors(m.files[0]).get('lm_head.weight').data);
  });

  test('Llama with attention_bias has an o_proj bias; F16 norms are decoded', () => {
    const model = syntheticModel({ architecture: 'LlamaForCausalLM', dtype: 'F16', attentionBias: true, tie: true });
    const m = loadModel(writeModelDir(path.join(tmp, 'm'), model));
    expect(m.config).toMatchObject({ attentionBias: true, oBias: true, tieWordEmbeddings: true });
    expect(m.weights.layers[1].linears.o.bias).toHaveLength(SYNTH.hidden);
    expect((m.weights.embed as { dtype: string }).dtype).toBe('F16');
    const src = model.tensors['model.norm.weight'].data as Uint16Array;
    expect(Array.from(m.weights.finalNorm)).toEqual(Array.from(src, f16ToF32));
  });

  test('a tied model with lm_head.weight missing uses the embedding', () => {
    const m = loadModel(writeModelDir(path.join(tmp, 'm'), syntheticModel({ tie: true })));
    expect(m.weights.lmHead).toBe(m.weights.embed);
    expect(namedTensors(m).map(([n]) => n)).not.toContain('lm_head.weight');
  });

  test('scanNonFinite reports bf16 NaN and Inf by tensor', () => {
    const model = syntheticModel();
    const down = model.tensors['model.layers.1.mlp.down_proj.weight'].data as Uint16Array;
    down[3] = 0x7fc0; // NaN
    down[5] = 0xff80; // -Inf
    (model.tensors['model.norm.weight'].data as Uint16Array)[0] = 0x7f80; // +Inf, reaches the fp32 copy
    const m = loadModel(writeModelDir(path.join(tmp, 'm'), model));
    expect(scanNonFinite(m)).toEqual([
      { name: 'model.layers.1.mlp.down_proj.weight', count: 2 },
      { name: 'model.norm.weight', count: 1 },
    ]);
  });

  test('countNonFinite (native, threaded) over every bf16/fp16 bit pattern and fp32 specials, against the decoded values', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const bf16Bad = Array.from(all).filter((h) => !Number.isFinite(new Float32Array(new Uint32Array([h << 16]).buffer)[0])).length;
    const f16Bad = Array.from(all).filter((h) => !Number.isFinite(f16ToF32(h))).length;
    expect(addon.countNonFinite(all, 'BF16')).toBe(bf16Bad);
    expect(addon.countNonFinite(all, 'F16')).toBe(f16Bad);
    expect(bf16Bad).toBe(2 * 128); // sign × (Inf + 127 NaN payloads)
    const f = new Float32Array(300001).map((_, i) => (i % 7) - 3.5);
    f[0] = NaN;
    f[150000] = Infinity;
    f[300000] = -Infinity;
    f[12] = 3.4e38;
    expect(addon.countNonFinite(f, 'F32')).toBe(3);
    expect(() => addon.countNonFinite(f, 'BF16')).toThrow(/countNonFinite/);
  });
});

describe('config.json', () => {
  const write = (c: Record<string, unknown>): string => {
    fs.writeFileSync(path.join(tmp, 'config.json'), JSON.stringify(c));
    return tmp;
  };
  const base = (): Record<string, unknown> => syntheticModel().config;

  test('transformers 4 style: top-level rope_theta, no head_dim, no num_key_value_heads', () => {
    const c = base();
    delete c.num_key_value_heads;
    delete c.head_dim;
    c.rope_theta = 500000;
    c.rope_scaling = null;
    const cfg = parseConfig(write(c));
    expect(cfg).toMatchObject({ ropeTheta: 500000, headDim: SYNTH.hidden / SYNTH.heads, numKvHeads: SYNTH.heads });
  });

  test('unsupported architecture lists the supported ones', () => {
    expectLowbitError(
      () => parseConfig(write({ ...base(), architectures: ['MistralForCausalLM'] })),
      'UNSUPPORTED',
      /MistralForCausalLM/,
      /Qwen3ForCausalLM, Qwen2ForCausalLM, LlamaForCausalLM/,
      /config\.json/,
    );
  });

  test('scaled RoPE is refused by option name', () => {
    const c = { ...base(), rope_parameters: { rope_type: 'llama3', rope_theta: 500000, factor: 8 } };
    expectLowbitError(() => parseConfig(write(c)), 'UNSUPPORTED', /rope_parameters\.rope_type/, /llama3/);
    const old = { ...base(), rope_scaling: { type: 'linear', factor: 2 } };
    expectLowbitError(() => parseConfig(write(old)), 'UNSUPPORTED', /rope_scaling\.rope_type/, /linear/);
  });

  test('a missing or invalid option is named', () => {
    const c = base();
    delete c.hidden_size;
    expectLowbitError(() => parseConfig(write(c)), 'BAD_CONFIG', /"hidden_size" is missing/);
    expectLowbitError(() => parseConfig(write({ ...base(), num_key_value_heads: 3 })), 'BAD_CONFIG', /num_key_value_heads/);
  });

  test('missing config.json names the path', () => {
    expectLowbitError(() => loadModel(tmp), 'FILE_NOT_FOUND', esc(path.join(tmp, 'config.json')));
  });
});

describe('checkpoint errors', () => {
  test('missing tensor names the tensor and the files searched', () => {
    const model = syntheticModel();
    delete model.tensors['model.layers.1.self_attn.v_proj.weight'];
    const dir = writeModelDir(path.join(tmp, 'm'), model);
    expectLowbitError(() => loadModel(dir), 'MISSING_TENSOR', /"model\.layers\.1\.self_attn\.v_proj\.weight"/, esc(path.join(dir, 'model.safetensors')));
  });

  test('shape mismatch names the tensor, the expected and the actual shape', () => {
    const model = syntheticModel();
    const t = model.tensors['model.layers.0.mlp.up_proj.weight'];
    t.shape = [SYNTH.hidden, SYNTH.inter]; // transposed
    const dir = writeModelDir(path.join(tmp, 'm'), model);
    expectLowbitError(
      () => loadModel(dir),
      'SHAPE_MISMATCH',
      /"model\.layers\.0\.mlp\.up_proj\.weight"/,
      new RegExp(`\\[${SYNTH.hidden}, ${SYNTH.inter}\\], config\\.json implies \\[${SYNTH.inter}, ${SYNTH.hidden}\\]`),
    );
  });

  test('missing tokenizer.json names the path', () => {
    expectLowbitError(() => loadTokenizer(tmp), 'FILE_NOT_FOUND', esc(path.join(tmp, 'tokenizer.json')));
  });

  test('no checkpoint at all', () => {
    expectLowbitError(() => openCheckpoint(tmp), 'FILE_NOT_FOUND', /model\.safetensors or model\.safetensors\.index\.json/);
  });
});

describe('sharded checkpoints', () => {
  /** Splits a synthetic model over two shards with an index, like transformers' save_pretrained. */
  function writeSharded(dir: string): Record<string, string> {
    const model = syntheticModel();
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(model.config));
    const names = Object.keys(model.tensors);
    const weightMap: Record<string, string> = {};
    const shards: Record<string, TensorToWrite>[] = [{}, {}];
    names.forEach((n, i) => {
      const s = i < names.length / 2 ? 0 : 1;
      shards[s][n] = model.tensors[n];
      weightMap[n] = `model-0000${s + 1}-of-00002.safetensors`;
    });
    shards.forEach((t, s) => writeSafetensors(path.join(dir, `model-0000${s + 1}-of-00002.safetensors`), t));
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    return weightMap;
  }

  test('loads from both shards, each opened once', () => {
    const dir = path.join(tmp, 'm');
    const weightMap = writeSharded(dir);
    const ckpt = openCheckpoint(dir);
    expect(ckpt.files.map((f) => path.basename(f))).toEqual(['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);
    expect(ckpt.names().sort()).toEqual(Object.keys(weightMap).sort());
    const m = loadModel(dir);
    expect(m.files).toEqual(ckpt.files);
    expect(m.weights.layers).toHaveLength(SYNTH.layers);
  });

  test('index pointing to a missing shard names the index and the shard', () => {
    const dir = path.join(tmp, 'm');
    writeSharded(dir);
    fs.rmSync(path.join(dir, 'model-00002-of-00002.safetensors'));
    expectLowbitError(() => loadModel(dir), 'FILE_NOT_FOUND', /model\.safetensors\.index\.json/, /model-00002-of-00002\.safetensors/);
  });

  test('index mapping a tensor to the wrong shard', () => {
    const dir = path.join(tmp, 'm');
    const weightMap = writeSharded(dir);
    weightMap['model.norm.weight'] = 'model-00001-of-00002.safetensors';
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: weightMap }));
    expectLowbitError(() => openCheckpoint(dir), 'BAD_CHECKPOINT', /"model\.norm\.weight"/, /model-00002-of-00002\.safetensors/);
  });
});

describe('safetensors writer and reader', () => {
  test('round trip of every dtype, with metadata, 8-byte aligned data and no temp file left', () => {
    const tensors: Record<string, TensorToWrite> = {
      f64: { dtype: 'F64', shape: [3], data: new Float64Array([1.5, -2, Math.PI]) },
      f32: { dtype: 'F32', shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, -6.25]) },
      f16: { dtype: 'F16', shape: [2], data: new Uint16Array([0x3c00, 0xc000]) },
      bf16: { dtype: 'BF16', shape: [3], data: toBf16(new Float32Array([1, -0.5, 3])) },
      i64: { dtype: 'I64', shape: [2], data: new BigInt64Array([-(2n ** 40n), 7n]) },
      i32: { dtype: 'I32', shape: [1, 3], data: new Int32Array([-1, 0, 2 ** 31 - 1]) },
      i16: { dtype: 'I16', shape: [1], data: new Int16Array([-300]) },
      i8: { dtype: 'I8', shape: [3], data: new Int8Array([-128, 0, 127]) },
      u8: { dtype: 'U8', shape: [2], data: new Uint8Array([0, 255]) },
      u16: { dtype: 'U16', shape: [1], data: new Uint16Array([65535]) },
      u32: { dtype: 'U32', shape: [1], data: new Uint32Array([2 ** 32 - 1]) },
      bool: { dtype: 'BOOL', shape: [3], data: new Uint8Array([1, 0, 1]) },
      scalar: { dtype: 'F32', shape: [], data: new Float32Array([42]) },
      empty: { dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
    };
    const file = path.join(tmp, 'all.safetensors');
    writeSafetensors(file, tensors, { format: 'pt', note: 'lowbit test' });
    expect(fs.readdirSync(tmp)).toEqual(['all.safetensors']);

    const bytes = fs.readFileSync(file);
    const headerLen = Number(bytes.readBigUInt64LE(0));
    expect((8 + headerLen) % 8).toBe(0);
    expect(bytes.subarray(8, 8 + headerLen).toString()).toMatch(/} *$/);

    const st = openSafetensors(file);
    expect(st.metadata).toEqual({ format: 'pt', note: 'lowbit test' });
    expect(st.names().sort()).toEqual(Object.keys(tensors).sort());
    for (const [name, t] of Object.entries(tensors)) {
      const got = st.get(name);
      expect([name, got.dtype, got.shape]).toEqual([name, t.dtype, t.shape]);
      expect(got.data.constructor).toBe(t.data.constructor);
      expect(Array.from(got.data as ArrayLike<number>)).toEqual(Array.from(t.data as ArrayLike<number>));
    }
  });

  test('overwrites atomically and rejects data that does not fit the dtype or shape', () => {
    const file = path.join(tmp, 'x.safetensors');
    writeSafetensors(file, { a: { dtype: 'F32', shape: [1], data: new Float32Array([1]) } });
    writeSafetensors(file, { b: { dtype: 'I8', shape: [2], data: new Int8Array([1, 2]) } });
    expect(openSafetensors(file).names()).toEqual(['b']);
    expectLowbitError(
      () => writeSafetensors(file, { w: { dtype: 'BF16', shape: [2], data: new Float32Array(2) } }),
      'BAD_ARGUMENT',
      /"w"/,
      /Uint16Array/,
    );
    expectLowbitError(() => writeSafetensors(file, { w: { dtype: 'F32', shape: [3], data: new Float32Array(2) } }), 'BAD_ARGUMENT', /"w"/, /\[3\]/);
    expect(openSafetensors(file).names()).toEqual(['b']);
  });

  test('a tensor at a misaligned offset is read correctly (copied)', () => {
    const file = path.join(tmp, 'odd.safetensors');
    const f = new Float32Array([1.5, -2.5]);
    const data = new Uint8Array(9);
    data.set(new Uint8Array(f.buffer), 1);
    const header = { pad: { dtype: 'U8', shape: [1], data_offsets: [0, 1] }, w: { dtype: 'F32', shape: [2], data_offsets: [1, 9] } };
    // Pad the header so the data region is 4-aligned; "w" then starts one byte into it, misaligned for F32.
    let text = JSON.stringify(header);
    while ((8 + text.length) % 4 !== 0) text += ' ';
    writeRawSafetensors(file, header, data, text);
    const w = openSafetensors(file).get('w');
    expect(Array.from(w.data as Float32Array)).toEqual([1.5, -2.5]);
    expect(w.data.buffer.byteLength).toBe(8); // its own copy, not the mapped file
  });

  describe('malformed files name the file and the tensor', () => {
    const f32 = (n: number): Uint8Array => new Uint8Array(new Float32Array(n).fill(1).buffer);
    interface BadCase {
      label: string;
      header?: unknown;
      /** The header bytes verbatim, for headers that are not JSON of an object. */
      text?: string;
      data: Uint8Array;
      patterns: RegExp[];
    }
    const cases: BadCase[] = [
      { label: 'truncated data region', header: { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, data: f32(2), patterns: [/"a"/, /run past the 8-byte data region/, /truncated/] },
      { label: 'offsets disagreeing with the shape', header: { a: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } }, data: f32(4), patterns: [/"a"/, /span 12 bytes but F32 \[2, 2\] needs 16/] },
      {
        label: 'overlapping tensors',
        header: { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } },
        data: f32(3),
        patterns: [/"b"/, /overlap/, /"a"/],
      },
      { label: 'end before begin', header: { a: { dtype: 'F32', shape: [0], data_offsets: [8, 4] } }, data: f32(2), patterns: [/"a"/, /end before they begin/] },
      { label: 'unknown dtype', header: { a: { dtype: 'F8_E4M3', shape: [2], data_offsets: [0, 2] } }, data: new Uint8Array(2), patterns: [/"a"/, /unknown dtype "F8_E4M3"/] },
      { label: 'bad shape', header: { a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } }, data: f32(1), patterns: [/"a"/, /shape/] },
      { label: 'invalid JSON', text: '{"a": {', data: f32(1), patterns: [/not valid UTF-8 JSON/] },
      { label: 'header that is not an object', text: '[1, 2]', data: f32(1), patterns: [/not a JSON object/] },
      { label: 'non-string metadata', header: { __metadata__: { n: 1 } }, data: new Uint8Array(0), patterns: [/__metadata__\["n"\]/] },
    ];
    test.each(cases)('$label', ({ header, text, data, patterns }) => {
      const file = path.join(tmp, 'bad.safetensors');
      writeRawSafetensors(file, header, data, text);
      expectLowbitError(() => openSafetensors(file), 'BAD_SAFETENSORS', esc(file), ...patterns);
    });

    test('header length beyond the file', () => {
      const file = path.join(tmp, 'bad.safetensors');
      const buf = Buffer.alloc(16);
      buf.writeBigUInt64LE(1000n);
      fs.writeFileSync(file, buf);
      expectLowbitError(() => openSafetensors(file), 'BAD_SAFETENSORS', esc(file), /header length 1000 exceeds the 8 bytes/);
    });

    test('file shorter than the length field, and a file cut short after writing', () => {
      const file = path.join(tmp, 'bad.safetensors');
      fs.writeFileSync(file, Buffer.alloc(3));
      expectLowbitError(() => openSafetensors(file), 'BAD_SAFETENSORS', esc(file), /too short/);
      writeSafetensors(file, { w: { dtype: 'F32', shape: [64], data: new Float32Array(64) } });
      fs.truncateSync(file, fs.statSync(file).size - 10);
      expectLowbitError(() => openSafetensors(file), 'BAD_SAFETENSORS', esc(file), /"w"/, /truncated/);
    });

    test('missing file', () => {
      const file = path.join(tmp, 'nope.safetensors');
      expectLowbitError(() => openSafetensors(file), 'FILE_NOT_FOUND', esc(file));
    });

    test('reading a tensor the file lacks', () => {
      const file = path.join(tmp, 'one.safetensors');
      writeSafetensors(file, { a: { dtype: 'U8', shape: [1], data: new Uint8Array(1) } });
      expectLowbitError(() => openSafetensors(file).get('b'), 'MISSING_TENSOR', esc(file), /"b"/);
    });
  });
});
