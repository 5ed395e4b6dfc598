import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { SCRATCH_BYTES, encodeSafetensors, openSafetensors } from '../lib/io/safetensors';
import { openCheckpoint, readCheckpoint, writeCheckpoint } from '../lib/models/checkpoint';
import { expectedParameters, modelConfigToJson, parseModelConfig } from '../lib/models/config';
import type { Gpt2Config, LlamaConfig } from '../lib/models/config';
import { tensor, zeros } from '../lib/tensor/tensor';
import type { Tensor } from '../lib/tensor/tensor';
import { type TinyCheckpoint, writeSafetensorsFixture, writeTinyGpt2, writeTinyLlama } from './helpers/checkpoints';
import { expectAllClose } from './helpers/tolerance';

let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-ckpt-'));
});

afterEach(() => {
  jest.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** Every file under `folder` with a hash of its bytes: "nothing changed on disk" compares these. */
function snapshot(folder: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const name of fs.readdirSync(d).sort()) {
      const full = path.join(d, name);
      if (fs.statSync(full).isDirectory()) walk(full);
      else out[path.relative(folder, full)] = crypto.createHash('sha256').update(fs.readFileSync(full)).digest('hex');
    }
  };
  walk(folder);
  return out;
}

/** Loaded tensors equal the fixture's float64 values exactly. */
function expectWeights(tensors: Map<string, Tensor>, fixture: TinyCheckpoint): void {
  expect([...tensors.keys()].sort()).toEqual([...fixture.weights.keys()].sort());
  for (const [name, { shape, values }] of fixture.weights) {
    const loaded = tensors.get(name)!;
    expect(loaded.shape).toEqual(shape);
    expectAllClose(loaded.toFloat32Array(), values, { rtol: 0, atol: 0, what: name });
  }
}

function gpt2(json: Record<string, unknown> = {}): Gpt2Config {
  return parseModelConfig({ model_type: 'gpt2', ...json }) as Gpt2Config;
}

function llama(json: Record<string, unknown> = {}): LlamaConfig {
  return parseModelConfig({ model_type: 'llama', ...json }) as LlamaConfig;
}

describe('model configs', () => {
  test("absent fields take transformers' GPT2Config defaults", () => {
    const c = gpt2();
    expect(c).toMatchObject({
      vocabSize: 50257,
      maxPositions: 1024,
      hiddenSize: 768,
      numLayers: 12,
      numHeads: 12,
      headDim: 64,
      intermediateSize: 3072,
      activation: 'gelu_tanh',
      layerNormEps: 1e-5,
      tieWordEmbeddings: true,
    });
    expect(c.attentionScale).toBeCloseTo(1 / 8, 15);
    expect(gpt2({ scale_attn_weights: false }).attentionScale).toBe(1);
    expect(gpt2({ n_inner: 100 }).intermediateSize).toBe(100);
    expect(gpt2({ activation_function: 'gelu_pytorch_tanh' }).activation).toBe('gelu_tanh');
  });

  test("absent fields take LlamaConfig's and MistralConfig's defaults", () => {
    expect(llama()).toMatchObject({
      vocabSize: 32000,
      hiddenSize: 4096,
      intermediateSize: 11008,
      numLayers: 32,
      numHeads: 32,
      numKeyValueHeads: 32,
      headDim: 128,
      maxPositions: 2048,
      rmsNormEps: 1e-6,
      ropeTheta: 10000,
      attentionBias: false,
      mlpBias: false,
      tieWordEmbeddings: false,
      activation: 'silu',
    });
    expect(llama({ num_key_value_heads: null }).numKeyValueHeads).toBe(32);
    expect(llama({ head_dim: 64 }).headDim).toBe(64);
    const mistral = parseModelConfig({ model_type: 'mistral', sliding_window: null });
    expect(mistral).toMatchObject({ intermediateSize: 14336, numKeyValueHeads: 8, maxPositions: 131072 });
  });

  test('both rope forms give the same base; conflicting values are refused', () => {
    expect(llama({ rope_theta: 500000, rope_scaling: null }).ropeTheta).toBe(500000);
    expect(llama({ rope_parameters: { rope_type: 'default', rope_theta: 500000 } }).ropeTheta).toBe(500000);
    expect(llama({ rope_scaling: { type: 'default' }, rope_theta: 7 }).ropeTheta).toBe(7);
    expect(() => llama({ rope_theta: 1, rope_parameters: { rope_type: 'default', rope_theta: 2 } })).toThrow(
      'disagrees with rope_theta',
    );
  });

  test('round trip: config -> config.json -> config is identity, in the form transformers writes', () => {
    const cases = [
      gpt2({ architectures: ['GPT2LMHeadModel'], torch_dtype: 'float32', bos_token_id: 50256, n_ctx: 1024 }),
      llama({ rope_parameters: { rope_type: 'default', rope_theta: 500000 }, head_dim: 64, use_cache: true }),
      llama({ rope_theta: 20, rope_scaling: null, num_key_value_heads: 8, pad_token_id: null }),
      parseModelConfig({ model_type: 'mistral', sliding_window: null, eos_token_id: [2, 3] }),
    ];
    for (const c of cases) {
      const text = modelConfigToJson(c);
      expect(parseModelConfig(JSON.parse(text))).toEqual(c);
      // Kept fields stay; every honoured field is written out; keys sorted, 2-space indent.
      const json = JSON.parse(text) as Record<string, unknown>;
      expect(Object.keys(json)).toEqual(Object.keys(json).sort());
      expect(text.endsWith('}\n')).toBe(true);
      expect(text.split('\n')[1]).toMatch(/^ {2}"/);
    }
    const g = JSON.parse(modelConfigToJson(cases[0])) as Record<string, unknown>;
    expect(g).toMatchObject({ architectures: ['GPT2LMHeadModel'], torch_dtype: 'float32', n_ctx: 1024 });
    expect(g).toMatchObject({
      vocab_size: 50257,
      n_inner: null,
      activation_function: 'gelu_new',
      tie_word_embeddings: true,
    });
    const l = JSON.parse(modelConfigToJson(cases[1])) as Record<string, unknown>;
    // Both rope forms, so transformers 4 (rope_theta) and 5 (rope_parameters) read the same base.
    expect(l).toMatchObject({ rope_theta: 500000, rope_parameters: { rope_type: 'default', rope_theta: 500000 } });
    expect(l.num_key_value_heads).toBe(32);
  });

  test.each([
    [{ model_type: 'bert' }, 'model_type "bert" is not supported'],
    [{}, 'model_type nothing is not supported'],
    [
      { model_type: 'gpt2', scale_attn_by_inverse_layer_idx: true },
      'scale_attn_by_inverse_layer_idx true is not supported',
    ],
    [{ model_type: 'gpt2', add_cross_attention: true }, 'add_cross_attention true is not supported'],
    [{ model_type: 'gpt2', activation_function: 'relu' }, 'activation_function "relu" is not supported'],
    [{ model_type: 'gpt2', n_embd: 10, n_head: 3 }, 'n_embd (10) must be divisible by n_head (3)'],
    [{ model_type: 'gpt2', vocab_size: -3 }, 'vocab_size must be an integer >= 1, got -3'],
    [{ model_type: 'gpt2', vocab_size: null }, 'vocab_size must be an integer >= 1, got null'],
    [{ model_type: 'llama', hidden_act: 'gelu' }, 'hidden_act "gelu" is not supported'],
    [{ model_type: 'llama', rope_scaling: { rope_type: 'llama3', factor: 8 } }, 'rope type "llama3"; only \'default\''],
    [{ model_type: 'llama', rope_scaling: { type: 'linear', factor: 2 } }, 'rope type "linear"'],
    [
      { model_type: 'llama', rope_parameters: { rope_type: 'yarn', factor: 4 } },
      'rope_parameters has rope type "yarn"',
    ],
    [{ model_type: 'llama', partial_rotary_factor: 0.5 }, 'partial_rotary_factor 0.5 is not supported'],
    [
      { model_type: 'llama', num_attention_heads: 6, num_key_value_heads: 4, hidden_size: 48 },
      'multiple of num_key_value_heads',
    ],
    [{ model_type: 'llama', hidden_size: 30, num_attention_heads: 4 }, 'must be divisible by num_attention_heads'],
    [{ model_type: 'llama', head_dim: 5 }, 'must be even'],
    [{ model_type: 'llama', rope_theta: -1 }, 'rope_theta must be a finite number > 0'],
    [{ model_type: 'mistral' }, 'sliding_window 4096 is not supported'],
    [{ model_type: 'mistral', sliding_window: null, attention_bias: true }, 'attention_bias is not a Mistral option'],
  ])('refused: %j', (json, message) => {
    expect(() => parseModelConfig(json)).toThrow(message);
  });

  test('one error lists every problem', () => {
    expect(() =>
      parseModelConfig({ model_type: 'llama', hidden_act: 'relu', rope_scaling: { type: 'dynamic' }, vocab_size: 0 }),
    ).toThrow(/vocab_size .*; hidden_act .*; rope_scaling has rope type "dynamic"/);
  });

  test('a config is frozen', () => {
    const c = gpt2();
    expect(Object.isFrozen(c) && Object.isFrozen(c.json)).toBe(true);
  });
});

describe('expected parameters', () => {
  test('GPT-2: names in state-dict order, Conv1D weights [in, out], lm_head only when untied', () => {
    const c = gpt2({ n_layer: 2, n_embd: 8, n_head: 2, vocab_size: 11, n_positions: 5 });
    const list = expectedParameters(c);
    expect(list).toHaveLength(2 + 12 * 2 + 2);
    expect(list.slice(0, 6)).toEqual([
      { name: 'transformer.wte.weight', shape: [11, 8] },
      { name: 'transformer.wpe.weight', shape: [5, 8] },
      { name: 'transformer.h.0.ln_1.weight', shape: [8] },
      { name: 'transformer.h.0.ln_1.bias', shape: [8] },
      { name: 'transformer.h.0.attn.c_attn.weight', shape: [8, 24] },
      { name: 'transformer.h.0.attn.c_attn.bias', shape: [24] },
    ]);
    expect(list.find((p) => p.name === 'transformer.h.1.mlp.c_fc.weight')!.shape).toEqual([8, 32]);
    expect(list.find((p) => p.name === 'transformer.h.1.mlp.c_proj.weight')!.shape).toEqual([32, 8]);
    expect(list.at(-1)!.name).toBe('transformer.ln_f.bias');
    const untied = expectedParameters(
      gpt2({ n_layer: 1, tie_word_embeddings: false, vocab_size: 11, n_embd: 8, n_head: 2 }),
    );
    expect(untied.at(-1)).toEqual({ name: 'lm_head.weight', shape: [11, 8] });
  });

  test('LLaMA: GQA shapes, explicit head_dim, biases when asked, lm_head unless tied', () => {
    const c = llama({
      vocab_size: 10,
      hidden_size: 16,
      intermediate_size: 24,
      num_hidden_layers: 1,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      head_dim: 6,
    });
    expect(expectedParameters(c)).toEqual([
      { name: 'model.embed_tokens.weight', shape: [10, 16] },
      { name: 'model.layers.0.self_attn.q_proj.weight', shape: [24, 16] },
      { name: 'model.layers.0.self_attn.k_proj.weight', shape: [12, 16] },
      { name: 'model.layers.0.self_attn.v_proj.weight', shape: [12, 16] },
      { name: 'model.layers.0.self_attn.o_proj.weight', shape: [16, 24] },
      { name: 'model.layers.0.mlp.gate_proj.weight', shape: [24, 16] },
      { name: 'model.layers.0.mlp.up_proj.weight', shape: [24, 16] },
      { name: 'model.layers.0.mlp.down_proj.weight', shape: [16, 24] },
      { name: 'model.layers.0.input_layernorm.weight', shape: [16] },
      { name: 'model.layers.0.post_attention_layernorm.weight', shape: [16] },
      { name: 'model.norm.weight', shape: [16] },
      { name: 'lm_head.weight', shape: [10, 16] },
    ]);
    const biased = expectedParameters(
      llama({ ...c.json, attention_bias: true, mlp_bias: true, tie_word_embeddings: true }),
    );
    expect(biased.map((p) => p.name)).toContain('model.layers.0.self_attn.o_proj.bias');
    expect(biased.find((p) => p.name === 'model.layers.0.self_attn.k_proj.bias')!.shape).toEqual([12]);
    expect(biased.find((p) => p.name === 'model.layers.0.mlp.down_proj.bias')!.shape).toEqual([16]);
    expect(biased.map((p) => p.name)).not.toContain('lm_head.weight');
  });
});

describe('reading checkpoints', () => {
  test.each([
    ['GPT-2, F32', () => writeTinyGpt2(path.join(dir, 'm'))],
    ['GPT-2, BF16', () => writeTinyGpt2(path.join(dir, 'm'), { dtype: 'BF16' })],
    ['GPT-2, F16, sharded in 3', () => writeTinyGpt2(path.join(dir, 'm'), { dtype: 'F16', shards: 3 })],
    [
      'GPT-2 without transformer. and with mask buffers',
      () => writeTinyGpt2(path.join(dir, 'm'), { prefix: false, maskBuffers: true }),
    ],
    ['GPT-2, untied lm_head', () => writeTinyGpt2(path.join(dir, 'm'), { config: { tie_word_embeddings: false } })],
    ['LLaMA, GQA, legacy rope form', () => writeTinyLlama(path.join(dir, 'm'))],
    [
      'LLaMA, rope_parameters form, BF16, sharded',
      () => writeTinyLlama(path.join(dir, 'm'), { ropeForm: 'parameters', dtype: 'BF16', shards: 2 }),
    ],
    [
      'LLaMA, tied, biases, inv_freq buffers',
      () =>
        writeTinyLlama(path.join(dir, 'm'), {
          config: { tie_word_embeddings: true, attention_bias: true, mlp_bias: true },
          invFreqBuffers: true,
        }),
    ],
    ['LLaMA, no rope fields, F16', () => writeTinyLlama(path.join(dir, 'm'), { ropeForm: 'absent', dtype: 'F16' })],
  ])('%s: every tensor equals the written values', (_, make) => {
    const fixture = make();
    const { config, tensors } = readCheckpoint(fixture.dir, { device: 'cpu' });
    expect(config.json).toMatchObject(fixture.config);
    expectWeights(tensors, fixture);
    for (const t of tensors.values()) t.dispose();
  });

  test('buffers are skipped and listed; stored dtypes and keys are reported', () => {
    const fixture = writeTinyGpt2(path.join(dir, 'm'), { prefix: false, maskBuffers: true, dtype: 'BF16' });
    const checkpoint = openCheckpoint(fixture.dir);
    try {
      expect([...checkpoint.skipped].sort()).toEqual([
        'h.0.attn.bias',
        'h.0.attn.masked_bias',
        'h.1.attn.bias',
        'h.1.attn.masked_bias',
      ]);
      expect(checkpoint.tensors.map((t) => t.name)).toEqual(expectedParameters(checkpoint.config).map((p) => p.name));
      expect(checkpoint.tensors[0]).toMatchObject({ name: 'transformer.wte.weight', key: 'wte.weight', dtype: 'BF16' });
    } finally {
      checkpoint.close();
    }
    const llamaFixture = writeTinyLlama(path.join(dir, 'l'), { invFreqBuffers: true });
    const l = openCheckpoint(llamaFixture.dir);
    expect(l.skipped).toEqual([
      'model.layers.0.self_attn.rotary_emb.inv_freq',
      'model.layers.1.self_attn.rotary_emb.inv_freq',
    ]);
    l.close();
  });

  test('loadInto fills given tensors; a wrong destination changes none of them', () => {
    const fixture = writeTinyGpt2(path.join(dir, 'm'));
    const checkpoint = openCheckpoint(fixture.dir);
    try {
      const destinations = new Map(checkpoint.tensors.map((t) => [t.name, zeros(t.shape, { device: 'cpu' })]));
      const wrong = new Map(destinations);
      wrong.set('transformer.wpe.weight', zeros([3, 3], { device: 'cpu' }));
      wrong.delete('transformer.ln_f.bias');
      wrong.set('transformer.extra', zeros([1], { device: 'cpu' }));
      expect(() => checkpoint.loadInto(wrong)).toThrow(
        /"transformer.wpe.weight" is \[3, 3\], the checkpoint's is \[12, 8\]; no tensor in the checkpoint for destination "transformer.extra"; no destination for transformer.ln_f.bias/,
      );
      for (const t of destinations.values()) expect(t.toFloat32Array().every((x) => x === 0)).toBe(true);
      checkpoint.loadInto(destinations);
      expectWeights(destinations, fixture);
    } finally {
      checkpoint.close();
    }
  });

  test('tensors are read in bounded positional chunks, never as a whole file', () => {
    // One tensor of 1.5x the scratch size: the reads must split it.
    const size = (SCRATCH_BYTES / 4) * 1.5;
    const values = Float64Array.from({ length: size }, (_, i) => ((i % 255) - 127) / 128);
    const file = path.join(dir, 'big.safetensors');
    writeSafetensorsFixture(file, [{ key: 'big', dtype: 'F32', shape: [size], values }]);
    // The library reads fs functions at call time, so spies on the real module reach it.
    const realFs = jest.requireActual<typeof fs>('node:fs');
    const readFileSync = jest.spyOn(realFs, 'readFileSync');
    const readSync = jest.spyOn(realFs, 'readSync');
    const reader = openSafetensors(file);
    const out = reader.read('big');
    reader.close();
    expect(readFileSync).not.toHaveBeenCalled();
    const lengths = readSync.mock.calls.map((call) => (call as unknown[])[3] as number);
    expect(Math.max(...lengths)).toBeLessThanOrEqual(SCRATCH_BYTES);
    expect(lengths.filter((n) => n > 1024)).toHaveLength(2);
    expectAllClose(out, values, { rtol: 0, atol: 0 });
  });
});

/** Round half to even of a float64 to `mantissaBits` stored bits, as an independent reference. */
function roundToFormat(v: number, mantissaBits: number, minExponent: number, maxFinite: number): number {
  if (!Number.isFinite(v) || v === 0) return v;
  const exponent = Math.max(Math.floor(Math.log2(Math.abs(v))), minExponent);
  const quantum = 2 ** (exponent - mantissaBits);
  const q = v / quantum;
  const floor = Math.floor(q);
  const rounded = q - floor > 0.5 || (q - floor === 0.5 && floor % 2 !== 0) ? floor + 1 : floor;
  const out = rounded * quantum;
  // Underflow keeps the sign (-0), overflow gives a signed infinity.
  return Math.abs(out) > maxFinite ? Math.sign(v) * Infinity : out === 0 ? Math.sign(v) * 0 : out;
}

describe('safetensors half-precision writing and lazy reading', () => {
  test('F16 and BF16 round to nearest even, with overflow, subnormals, signed zero and NaN', () => {
    const random = (() => {
      let x = 12345;
      return () => (x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    })();
    const special = [
      1 + 2 ** -8,
      1 + 3 * 2 ** -8,
      1 + 2 ** -11,
      1 + 3 * 2 ** -11,
      65504,
      65519,
      65520,
      1e6,
      -1e6,
      2 ** -25,
      3 * 2 ** -26,
      2 ** -24,
      2 ** -14 * (1 - 2 ** -11),
      1e-30,
      -0,
      0,
      Infinity,
      -Infinity,
      3.3895e38,
      3.4e38,
    ];
    const randomValues = Array.from({ length: 2000 }, () => (random() - 0.5) * 2 ** Math.floor(random() * 60 - 30));
    const values = Float32Array.from([...special, ...randomValues]);
    for (const [dtype, bits, minExponent, maxFinite] of [
      ['F16', 10, -14, 65504],
      ['BF16', 7, -126, 3.3895313892515355e38],
    ] as const) {
      const file = path.join(dir, `${dtype}.safetensors`);
      const chunks: Buffer[] = [];
      encodeSafetensors([{ name: 'x', shape: [values.length], dtype, values: () => values }]).write((bytes) =>
        chunks.push(Buffer.from(bytes)),
      );
      fs.writeFileSync(file, Buffer.concat(chunks));
      const reader = openSafetensors(file);
      const back = reader.read('x');
      reader.close();
      const want = Array.from(values, (v) => roundToFormat(v, bits, minExponent, maxFinite));
      // Bit for bit: infinities and -0 included.
      expect(Array.from(new Uint32Array(back.buffer))).toEqual(
        Array.from(new Uint32Array(Float32Array.from(want).buffer)),
      );
      expect(Object.is(back[special.indexOf(-0)], -0)).toBe(true);
      expect(back[special.indexOf(65520)]).toBe(dtype === 'F16' ? Infinity : 65536);
    }
    const nan = path.join(dir, 'nan.safetensors');
    const chunks: Buffer[] = [];
    encodeSafetensors([{ name: 'x', shape: [1], dtype: 'BF16', values: () => new Float32Array([NaN]) }]).write((b) =>
      chunks.push(Buffer.from(b)),
    );
    fs.writeFileSync(nan, Buffer.concat(chunks));
    const reader = openSafetensors(nan);
    expect(Number.isNaN(reader.read('x')[0])).toBe(true);
    reader.close();
  });

  test('a file truncated after opening fails the read with a clear error; a closed reader refuses', () => {
    const file = path.join(dir, 'a.safetensors');
    writeSafetensorsFixture(file, [{ key: 'a', dtype: 'F32', shape: [4], values: new Float64Array([1, 2, 3, 4]) }]);
    const reader = openSafetensors(file);
    fs.truncateSync(file, fs.statSync(file).size - 4);
    expect(() => reader.read('a')).toThrow(/the file ends at byte \d+, before the 16 bytes .*truncated or replaced/);
    expect(() => reader.readInto('a', new Float32Array(3))).toThrow('the target must be a Float32Array of that length');
    expect(() => reader.read('b')).toThrow('no tensor "b" in the file');
    reader.close();
    reader.close();
    expect(() => reader.read('a')).toThrow('the file has been closed');
  });
});

describe('bad checkpoints are refused before anything is read, naming every problem', () => {
  test('missing, unexpected and mis-shaped tensors in one error', () => {
    const fixture = writeTinyGpt2(path.join(dir, 'm'));
    const stored = fixture.stored
      .filter((t) => t.key !== 'transformer.h.1.ln_2.bias' && t.key !== 'transformer.wpe.weight')
      .map((t) => (t.key === 'transformer.h.0.attn.c_proj.weight' ? { ...t, shape: [4, 16] } : t));
    stored.push({ key: 'transformer.h.0.attn.extra', dtype: 'F32', shape: [2], values: new Float64Array(2) });
    stored.push({ key: 'lm_head.weight', dtype: 'F32', shape: [23, 8], values: new Float64Array(23 * 8) });
    writeSafetensorsFixture(path.join(fixture.dir, 'model.safetensors'), stored);
    const before = snapshot(dir);
    let message = '';
    try {
      openCheckpoint(fixture.dir);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain('missing tensors (2): transformer.wpe.weight, transformer.h.1.ln_2.bias');
    expect(message).toContain('mis-shaped tensors (1): transformer.h.0.attn.c_proj.weight is [4, 16], expected [8, 8]');
    expect(message).toContain(
      'unexpected tensors (2): transformer.h.0.attn.extra, lm_head.weight (config.json ties lm_head',
    );
    expect(snapshot(dir)).toEqual(before);
  });

  test('shard problems: a missing shard, an entry absent from its shard, a tensor in two shards, one the index misplaces', () => {
    const fixture = writeTinyLlama(path.join(dir, 'm'), { shards: 3 });
    const indexFile = path.join(fixture.dir, 'model.safetensors.index.json');
    const index = JSON.parse(fs.readFileSync(indexFile, 'utf8')) as { weight_map: Record<string, string> };
    const [first, second, third] = fixture.files.filter((f) => f.startsWith('model-'));
    // Shard 2: drop one tensor it is indexed for, and add a copy of one of shard 1's.
    const inSecond = fixture.stored.filter((t) => index.weight_map[t.key] === second);
    const fromFirst = fixture.stored.find((t) => index.weight_map[t.key] === first)!;
    writeSafetensorsFixture(path.join(fixture.dir, second), [...inSecond.slice(1), fromFirst]);
    fs.rmSync(path.join(fixture.dir, third));
    let message = '';
    try {
      openCheckpoint(fixture.dir);
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toContain(`missing shards (1): ${third}`);
    expect(message).toContain(`tensors stored in two shards (1): ${fromFirst.key} (${first} and ${second})`);
    expect(message).toContain(
      `tensors listed in the index but absent from their shard (1): ${inSecond[0].key} (${second})`,
    );
    expect(message).toMatch(/missing tensors \(\d+\): .*model.norm.weight/);
  });

  test('a tensor the index does not list is refused', () => {
    const fixture = writeTinyLlama(path.join(dir, 'm'), { shards: 2 });
    const indexFile = path.join(fixture.dir, 'model.safetensors.index.json');
    const index = JSON.parse(fs.readFileSync(indexFile, 'utf8')) as { weight_map: Record<string, string> };
    delete index.weight_map['model.norm.weight'];
    fs.writeFileSync(indexFile, JSON.stringify(index));
    expect(() => openCheckpoint(fixture.dir)).toThrow(
      /tensors the index does not place in their shard \(1\): model.norm.weight \(in model-00002-of-00002.safetensors, index: not listed\)/,
    );
  });

  test('a truncated shard and a header lying about its offsets name the file', () => {
    const fixture = writeTinyLlama(path.join(dir, 'm'), { shards: 2 });
    const second = path.join(fixture.dir, 'model-00002-of-00002.safetensors');
    fs.truncateSync(second, fs.statSync(second).size - 10);
    expect(() => openCheckpoint(fixture.dir)).toThrow(
      /unreadable shards \(1\): model-00002-of-00002.safetensors \(openSafetensors\(.*\): tensor ".*" has data_offsets .* beyond the/,
    );
    const lying = path.join(dir, 'lying');
    const f2 = writeTinyGpt2(lying);
    writeSafetensorsFixture(path.join(lying, 'model.safetensors'), f2.stored, { format: 'pt' }, (header) => {
      (header['transformer.wpe.weight'] as { data_offsets: number[] }).data_offsets = [0, 4];
    });
    expect(() => openCheckpoint(lying)).toThrow(/model.safetensors \(openSafetensors.*transformer.wpe.weight/);
  });

  test('unknown model_type, unsupported config values, ambiguous and path-escaping layouts', () => {
    const fixture = writeTinyGpt2(path.join(dir, 'm'));
    const configFile = path.join(fixture.dir, 'config.json');
    fs.writeFileSync(configFile, JSON.stringify({ ...fixture.config, model_type: 'gpt_neox' }));
    expect(() => openCheckpoint(fixture.dir)).toThrow(`${configFile}: model_type "gpt_neox" is not supported`);
    fs.writeFileSync(configFile, JSON.stringify({ ...fixture.config, scale_attn_by_inverse_layer_idx: true }));
    expect(() => openCheckpoint(fixture.dir)).toThrow('scale_attn_by_inverse_layer_idx true is not supported');
    fs.writeFileSync(configFile, '{"model_type": "gpt2",');
    expect(() => openCheckpoint(fixture.dir)).toThrow(`${configFile}: not valid JSON`);

    const sharded = writeTinyLlama(path.join(dir, 's'), { shards: 2 });
    fs.copyFileSync(
      path.join(sharded.dir, 'model-00001-of-00002.safetensors'),
      path.join(sharded.dir, 'model.safetensors'),
    );
    expect(() => openCheckpoint(sharded.dir)).toThrow('has both model.safetensors and model.safetensors.index.json');
    fs.rmSync(path.join(sharded.dir, 'model.safetensors'));
    const indexFile = path.join(sharded.dir, 'model.safetensors.index.json');
    const index = JSON.parse(fs.readFileSync(indexFile, 'utf8')) as { weight_map: Record<string, string> };
    index.weight_map['model.norm.weight'] = '../m/model.safetensors';
    fs.writeFileSync(indexFile, JSON.stringify(index));
    expect(() => openCheckpoint(sharded.dir)).toThrow(
      'weight_map["model.norm.weight"] must be a file name in the folder',
    );
    expect(() => openCheckpoint(path.join(dir, 'nowhere'))).toThrow('cannot read the model config');
  });
});

describe('writing checkpoints', () => {
  function loaded(fixture: TinyCheckpoint): Map<string, Tensor> {
    return readCheckpoint(fixture.dir, { device: 'cpu' }).tensors;
  }

  test('single file, F32: config.json and model.safetensors read back exactly; metadata format pt', () => {
    const fixture = writeTinyGpt2(path.join(dir, 'src'), { prefix: false, maskBuffers: true });
    const { config, tensors } = readCheckpoint(fixture.dir, { device: 'cpu' });
    const out = path.join(dir, 'out');
    const result = writeCheckpoint(out, config, tensors);
    expect(result.files).toEqual(['config.json', 'model.safetensors']);
    expect(fs.readdirSync(out).sort()).toEqual(['config.json', 'model.safetensors']);
    const reader = openSafetensors(path.join(out, 'model.safetensors'));
    expect(reader.metadata).toEqual({ format: 'pt' });
    // Saved with the prefix and without buffers or the tied lm_head, as save_pretrained does.
    expect([...reader.entries.keys()].sort()).toEqual(
      expectedParameters(config)
        .map((p) => p.name)
        .sort(),
    );
    reader.close();
    const written = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    expect(written).toMatchObject({ ...fixture.config, torch_dtype: 'float32' });
    expectWeights(loaded({ ...fixture, dir: out }), fixture);
  });

  test.each(['BF16', 'F16'] as const)('%s: values exact in the dtype survive; torch_dtype follows', (dtype) => {
    const fixture = writeTinyLlama(path.join(dir, 'src'));
    const { config, tensors } = readCheckpoint(fixture.dir, { device: 'cpu' });
    const out = path.join(dir, 'out');
    writeCheckpoint(out, config, tensors, { dtype });
    const reopened = openCheckpoint(out);
    expect(reopened.tensors.every((t) => t.dtype === dtype)).toBe(true);
    expect(reopened.config.json.torch_dtype).toBe(dtype === 'BF16' ? 'bfloat16' : 'float16');
    reopened.close();
    expectWeights(loaded({ ...fixture, dir: out }), fixture);
  });

  test('sharded like huggingface_hub: in order, greedy, an oversized tensor alone; index as transformers writes it', () => {
    const fixture = writeTinyLlama(path.join(dir, 'src'));
    const { config, tensors } = readCheckpoint(fixture.dir, { device: 'cpu' });
    const out = path.join(dir, 'out');
    const maxShardSize = 2000; // bytes: the 29x16 F32 embedding (1856 B) nearly fills one; lm_head too
    const result = writeCheckpoint(out, config, tensors, { maxShardSize });
    const index = fs.readFileSync(path.join(out, 'model.safetensors.index.json'), 'utf8');
    const parsed = JSON.parse(index) as { metadata: { total_size: number }; weight_map: Record<string, string> };
    const order = expectedParameters(config);
    const bytes = (name: string) => order.find((p) => p.name === name)!.shape.reduce((a, b) => a * b, 1) * 4;
    expect(parsed.metadata.total_size).toBe(order.reduce((sum, p) => sum + bytes(p.name), 0));
    expect(result.totalSize).toBe(parsed.metadata.total_size);
    // json.dumps(indent=2, sort_keys=True) + "\n"
    expect(index).toBe(
      `${JSON.stringify({ metadata: parsed.metadata, weight_map: Object.fromEntries(Object.entries(parsed.weight_map).sort(([a], [b]) => (a < b ? -1 : 1))) }, null, 2)}\n`,
    );
    const shards = [...new Set(order.map((p) => parsed.weight_map[p.name]))];
    const n = shards.length;
    expect(n).toBeGreaterThan(2);
    expect(shards).toEqual(
      shards.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`),
    );
    // Shards hold consecutive runs of the state-dict order; each stays within the limit, and
    // the next tensor would not have fitted.
    const runs = shards.map((s) => order.filter((p) => parsed.weight_map[p.name] === s).map((p) => p.name));
    expect(runs.flat()).toEqual(order.map((p) => p.name));
    expect(runs[0]).toEqual(['model.embed_tokens.weight']);
    runs.forEach((run, i) => {
      const size = run.reduce((sum, name) => sum + bytes(name), 0);
      expect(size <= maxShardSize || run.length === 1).toBe(true);
      if (i + 1 < runs.length) expect(size + bytes(runs[i + 1][0])).toBeGreaterThan(maxShardSize);
      const reader = openSafetensors(path.join(out, shards[i]));
      expect([...reader.entries.keys()].sort()).toEqual([...run].sort());
      expect(reader.metadata).toEqual({ format: 'pt' });
      reader.close();
    });
    expectWeights(loaded({ ...fixture, dir: out }), fixture);
    expect(() => writeCheckpoint(out, config, tensors, { maxShardSize: '2 parsecs' })).toThrow('maxShardSize');
    // 1 KiB: the embedding and lm_head (1856 B each) are larger, so each gets a shard of its own,
    // made as soon as it is met: lm_head's comes before the shard still being filled (the last norms).
    const small = path.join(dir, 'small');
    writeCheckpoint(small, config, tensors, { maxShardSize: '1KiB' });
    const smallMap = (
      JSON.parse(fs.readFileSync(path.join(small, 'model.safetensors.index.json'), 'utf8')) as typeof parsed
    ).weight_map;
    const count = new Set(Object.values(smallMap)).size;
    const holders = (file: string) => Object.keys(smallMap).filter((k) => smallMap[k] === file);
    const nth = (i: number) => `model-${String(i).padStart(5, '0')}-of-${String(count).padStart(5, '0')}.safetensors`;
    expect(holders(nth(1))).toEqual(['model.embed_tokens.weight']);
    expect(holders(nth(count - 1))).toEqual(['lm_head.weight']);
    expect(holders(nth(count))).toEqual([
      'model.layers.1.input_layernorm.weight',
      'model.layers.1.post_attention_layernorm.weight',
      'model.norm.weight',
    ]);
  });

  test('rewriting a folder replaces the old checkpoint files, keeps other files, leaves no temporaries', () => {
    const fixture = writeTinyLlama(path.join(dir, 'src'));
    const { config, tensors } = readCheckpoint(fixture.dir, { device: 'cpu' });
    const out = path.join(dir, 'out');
    writeCheckpoint(out, config, tensors, { maxShardSize: 2000 });
    fs.writeFileSync(path.join(out, 'tokenizer.json'), '{"keep": true}');
    fs.mkdirSync(path.join(out, 'notes'));
    fs.writeFileSync(path.join(out, 'notes', 'a.txt'), 'a');
    writeCheckpoint(out, config, tensors);
    expect(fs.readdirSync(out).sort()).toEqual(['config.json', 'model.safetensors', 'notes', 'tokenizer.json']);
    expect(fs.readFileSync(path.join(out, 'tokenizer.json'), 'utf8')).toBe('{"keep": true}');
    expect(fs.readFileSync(path.join(out, 'notes', 'a.txt'), 'utf8')).toBe('a');
    expect(fs.readdirSync(dir).sort()).toEqual(['out', 'src']);
    expectWeights(loaded({ ...fixture, dir: out }), fixture);
  });

  test('a failure while writing leaves the previous checkpoint as it was', () => {
    const fixture = writeTinyGpt2(path.join(dir, 'src'));
    const { config, tensors } = readCheckpoint(fixture.dir, { device: 'cpu' });
    const out = path.join(dir, 'out');
    writeCheckpoint(out, config, tensors, { maxShardSize: 1000 });
    const before = snapshot(out);
    const realFs = jest.requireActual<typeof fs>('node:fs');
    const realWrite = realFs.writeSync;
    let calls = 0;
    jest.spyOn(realFs, 'writeSync').mockImplementation(((...args: Parameters<typeof fs.writeSync>) => {
      if (++calls === 5) throw new Error('ENOSPC: no space left on device');
      return (realWrite as (...a: unknown[]) => number)(...args);
    }) as typeof fs.writeSync);
    expect(() => writeCheckpoint(out, config, tensors, { dtype: 'BF16' })).toThrow(`could not write ${out}: ENOSPC`);
    jest.restoreAllMocks();
    expect(snapshot(out)).toEqual(before);
    expect(fs.readdirSync(dir).sort()).toEqual(['out', 'src']);
  });

  test('wrong tensors are refused, all named, and nothing is written', () => {
    const fixture = writeTinyGpt2(path.join(dir, 'src'));
    const { config, tensors } = readCheckpoint(fixture.dir, { device: 'cpu' });
    tensors.delete('transformer.h.0.ln_1.bias');
    tensors.set('transformer.wpe.weight', tensor(new Float32Array(6), [2, 3], { device: 'cpu' }));
    tensors.set('lm_head.weight', zeros([23, 8], { device: 'cpu' }));
    const out = path.join(dir, 'out');
    expect(() => writeCheckpoint(out, config, tensors)).toThrow(
      /mis-shaped tensors \(1\): transformer.wpe.weight is \[2, 3\], expected \[12, 8\][\s\S]*missing tensors \(1\): transformer.h.0.ln_1.bias[\s\S]*unexpected tensors \(1\): lm_head.weight/,
    );
    expect(() => writeCheckpoint(out, config, tensors, { dtype: 'F64' as never })).toThrow(
      'dtype must be F32, F16 or BF16',
    );
    expect(fs.existsSync(out)).toBe(false);
  });
});
