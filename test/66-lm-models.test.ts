/**
 * GPT-2 and LLaMA models loaded from tiny checkpoints in Hugging Face's layout
 * (test/helpers/checkpoints.ts) against the float64 implementation written in
 * the tests (test/helpers/reference-lm.ts): logits and the loss, with left
 * padding and explicit attention masks, grouped-query attention, both rope
 * config forms, tied and untied heads, BF16 and sharded files. Also: module
 * names are transformers', savePretrained round trips, the KV-cache hook gives
 * the same logits as a full pass, the frozen base gets no weight gradients,
 * and bad input is refused with nothing changed.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import * as tera from '../lib';
import type { Input } from '../lib/autograd/ops';
import { concat } from '../lib/autograd/transformer';
import type { Var } from '../lib/autograd/var';
import type { KeyValueCache } from '../lib/nn/attention';
import { ParameterBank } from '../lib/models/parameters';
import { type TinyCheckpoint, writeSafetensorsFixture, writeTinyGpt2, writeTinyLlama } from './helpers/checkpoints';
import { type ReferenceInput, referenceLogits, referenceLoss } from './helpers/reference-lm';
import { expectAllClose } from './helpers/tolerance';

const { fromPretrained, positionsFromMask, expectedParameters } = tera.models;
type CausalLM = tera.models.CausalLM;

let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-lm-'));
});

afterEach(() => {
  jest.restoreAllMocks();
  fs.rmSync(dir, { recursive: true, force: true });
});

const LOGIT_TOL = { rtol: 2e-4, atol: 2e-5 };

function vocabOf(fixture: TinyCheckpoint): number {
  return fixture.config.vocab_size as number;
}

/** A batch of `rows` sequences of `tokens` ids, each row left-padded by `pads[b]` (pad id 0, mask 0). */
function leftPadded(
  fixture: TinyCheckpoint,
  tokens: number,
  pads: number[],
  seed = 1,
): Required<Omit<ReferenceInput, 'positions'>> {
  const vocab = vocabOf(fixture);
  let state = seed;
  const next = () => (state = (state * 1103515245 + 12345) % 2 ** 31) % vocab;
  const ids = pads.map((pad) => Array.from({ length: tokens }, (_, t) => (t < pad ? 0 : next())));
  const attentionMask = pads.map((pad) => Array.from({ length: tokens }, (_, t) => (t < pad ? 0 : 1)));
  return { ids, attentionMask };
}

/** Logits [B*T*V] of the model, without recording a graph. */
function logitsOf(model: CausalLM, input: ReferenceInput): Float32Array {
  return tera.autograd.noGrad(() => {
    const out = model.forward(input.ids, { attentionMask: input.attentionMask, positions: input.positions });
    try {
      return out.toFloat32Array();
    } finally {
      out.dispose();
    }
  });
}

/** The logits of tokens whose mask is 1 (padded positions' logits mean nothing). */
function validRows(logits: ArrayLike<number>, input: ReferenceInput, vocab: number): number[] {
  const out: number[] = [];
  input.ids.forEach((row, b) =>
    row.forEach((_, t) => {
      if ((input.attentionMask?.[b][t] ?? 1) !== 1) return;
      const base = (b * row.length + t) * vocab;
      for (let c = 0; c < vocab; c++) out.push(logits[base + c]);
    }),
  );
  return out;
}

function expectMatchesReference(model: CausalLM, fixture: TinyCheckpoint, input: ReferenceInput): void {
  const vocab = vocabOf(fixture);
  const got = validRows(logitsOf(model, input), input, vocab);
  const want = validRows(referenceLogits(fixture.config, fixture.weights, input), input, vocab);
  expect(got.length).toBeGreaterThan(0);
  expectAllClose(got, want, { ...LOGIT_TOL, what: 'logits' });
}

const FIXTURES: [string, (folder: string) => TinyCheckpoint][] = [
  ['GPT-2, F32, tied', (f) => writeTinyGpt2(f)],
  [
    'GPT-2 without the transformer. prefix, mask buffers, untied',
    (f) => writeTinyGpt2(f, { prefix: false, maskBuffers: true, config: { tie_word_embeddings: false } }),
  ],
  ['GPT-2, BF16, 3 shards', (f) => writeTinyGpt2(f, { dtype: 'BF16', shards: 3 })],
  ['LLaMA, GQA (4 heads, 2 kv), legacy rope_theta, untied', (f) => writeTinyLlama(f)],
  [
    'LLaMA, rope_parameters form (theta 500000), tied, biases',
    (f) =>
      writeTinyLlama(f, {
        ropeForm: 'parameters',
        config: {
          rope_parameters: { rope_type: 'default', rope_theta: 500000 },
          tie_word_embeddings: true,
          attention_bias: true,
          mlp_bias: true,
        },
      }),
  ],
  [
    'LLaMA, BF16, 2 shards, explicit head_dim, inv_freq buffers',
    (f) => writeTinyLlama(f, { dtype: 'BF16', shards: 2, invFreqBuffers: true, config: { head_dim: 8 } }),
  ],
  [
    'Mistral, multi-head (kv = heads), no sliding window',
    (f) => writeTinyLlama(f, { config: { model_type: 'mistral', num_key_value_heads: 4, sliding_window: null } }),
  ],
];

describe('loaded models match the float64 reference', () => {
  test.each(FIXTURES)('%s: logits with left padding, its positions, and an explicit mask', (_, make) => {
    const fixture = make(path.join(dir, 'model'));
    const model = fromPretrained(fixture.dir, { device: 'cpu' });
    try {
      const padded = leftPadded(fixture, 7, [0, 2, 4]);
      // Left padding with positions counted from each row's first token: each row computes what it would alone.
      expectMatchesReference(model, fixture, { ...padded, positions: positionsFromMask(padded.attentionMask) });
      // An explicit mask with transformers' default positions 0..T-1, holes in the middle included.
      const holes = {
        ids: padded.ids,
        attentionMask: [
          [1, 1, 0, 1, 1, 0, 1],
          [0, 0, 1, 1, 1, 1, 1],
          [1, 1, 1, 1, 1, 1, 1],
        ],
      };
      expectMatchesReference(model, fixture, holes);
      // No mask at all.
      expectMatchesReference(model, fixture, { ids: padded.ids });
    } finally {
      model.dispose();
    }
  });

  test.each(FIXTURES.slice(0, 5))('%s: the loss, with labels from the ids and explicit labels', (_, make) => {
    const fixture = make(path.join(dir, 'model'));
    const model = fromPretrained(fixture.dir);
    const vocab = vocabOf(fixture);
    try {
      const padded = leftPadded(fixture, 6, [0, 3], 5);
      const positions = positionsFromMask(padded.attentionMask);
      const input = { ...padded, positions };
      const logits = referenceLogits(fixture.config, fixture.weights, input);
      // Labels from the ids: padding is left out.
      const fromIds = padded.ids.map((row, b) => row.map((id, t) => (padded.attentionMask[b][t] === 1 ? id : -100)));
      const got = tera.autograd.noGrad(() =>
        model.loss(padded.ids, null, { attentionMask: padded.attentionMask, positions }),
      );
      expectAllClose([got.item()], [referenceLoss(logits, fromIds, vocab)], { rtol: 1e-5, atol: 1e-6, what: 'loss' });
      // Explicit labels: a prompt left out with -100.
      const labels = padded.ids.map((row) => row.map((id, t) => (t < 4 ? -100 : (id + 1) % vocab)));
      const explicit = tera.autograd.noGrad(() =>
        model.loss(padded.ids, labels, { attentionMask: padded.attentionMask, positions }),
      );
      expectAllClose([explicit.item()], [referenceLoss(logits, labels, vocab)], {
        rtol: 1e-5,
        atol: 1e-6,
        what: 'loss',
      });
    } finally {
      model.dispose();
    }
  });

  test('a left-padded row computes what it computes alone (so the mask and positions are used)', () => {
    const fixture = writeTinyLlama(path.join(dir, 'model'));
    const model = fromPretrained(fixture.dir);
    const padded = leftPadded(fixture, 6, [3]);
    const alone = logitsOf(model, { ids: [padded.ids[0].slice(3)] });
    const inBatch = logitsOf(model, { ...padded, positions: positionsFromMask(padded.attentionMask) });
    expectAllClose(inBatch.subarray(3 * vocabOf(fixture)), alone, { ...LOGIT_TOL, what: 'padded row' });
    // Without the mask the padding is attended to and the logits differ.
    const unmasked = logitsOf(model, { ids: padded.ids, positions: positionsFromMask(padded.attentionMask) });
    expect(Math.max(...unmasked.subarray(3 * vocabOf(fixture)).map((v, i) => Math.abs(v - alone[i])))).toBeGreaterThan(
      1e-3,
    );
    model.dispose();
  });
});

describe('module trees', () => {
  test("parameter names and order are transformers' (expectedParameters), Conv1D weights [out, in] in memory", () => {
    for (const fixture of [
      writeTinyGpt2(path.join(dir, 'g'), { config: { tie_word_embeddings: false } }),
      writeTinyGpt2(path.join(dir, 't')),
      writeTinyLlama(path.join(dir, 'l')),
    ]) {
      const model = fromPretrained(fixture.dir);
      const names = model.namedParameters().map(([name, p]) => [name, [...p.shape]]);
      const expected = expectedParameters(model.config).map(({ name, shape }) => [
        name,
        /c_(attn|proj|fc)\.weight$/.test(name) ? [...shape].reverse() : [...shape],
      ]);
      expect(names).toEqual(expected);
      model.dispose();
    }
  });

  test('tied embeddings share one Parameter; lm_head is listed only under the embedding', () => {
    const gpt2 = fromPretrained(writeTinyGpt2(path.join(dir, 'g')).dir) as tera.models.GPT2LMHeadModel;
    const wte = gpt2.getSubmodule('transformer.wte') as tera.nn.Embedding;
    expect((gpt2.getSubmodule('lm_head') as tera.nn.Linear).weight).toBe(wte.weight);
    expect(
      gpt2
        .namedParameters('', { removeDuplicate: false })
        .filter(([, p]) => p === wte.weight)
        .map(([n]) => n),
    ).toEqual(['transformer.wte.weight', 'lm_head.weight']);
    const llama = fromPretrained(writeTinyLlama(path.join(dir, 'l')).dir) as tera.models.LlamaForCausalLM;
    expect((llama.getSubmodule('lm_head') as tera.nn.Linear).weight).not.toBe(
      (llama.getSubmodule('model.embed_tokens') as tera.nn.Embedding).weight,
    );
    expect(String(gpt2.getSubmodule('transformer.h.0.attn.c_attn'))).toBe('Conv1D(nf=24, nx=8)');
    gpt2.dispose();
    llama.dispose();
  });

  test('a model built from a config is initialised as transformers does, reproducibly from a seed', () => {
    const config = tera.models.parseModelConfig({
      model_type: 'gpt2',
      vocab_size: 50,
      n_positions: 16,
      n_embd: 32,
      n_layer: 2,
      n_head: 4,
    });
    const a = tera.models.fromConfig(config, { seed: 7 });
    const b = tera.models.fromConfig(config.json as Record<string, unknown>, { seed: 7 });
    const state = a.stateDict();
    for (const [name, t] of Object.entries(b.stateDict())) {
      expectAllClose(t.toFloat32Array(), state[name].toFloat32Array(), { rtol: 0, atol: 0, what: name });
    }
    const values = (name: string) => Array.from(state[name].toFloat32Array());
    const std = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length);
    expect(values('transformer.h.0.ln_1.weight').every((v) => v === 1)).toBe(true);
    expect(values('transformer.h.0.attn.c_attn.bias').every((v) => v === 0)).toBe(true);
    expect(std(values('transformer.h.0.mlp.c_fc.weight'))).toBeCloseTo(0.02, 2);
    // c_proj weights: 0.02 / sqrt(2 n_layer).
    expect(std(values('transformer.h.1.mlp.c_proj.weight'))).toBeCloseTo(0.01, 2);
    a.dispose();
    b.dispose();
  });
});

describe('nn modules on their own', () => {
  test('Embedding, LayerNorm, RMSNorm: PyTorch initialisation, ids checked, the init hook checked', () => {
    const table = new tera.nn.Embedding(10, 4, { seed: 3 });
    const again = new tera.nn.Embedding(10, 4, { seed: 3 });
    expectAllClose(again.weight.toFloat32Array(), table.weight.toFloat32Array(), { rtol: 0, atol: 0, what: 'seeded' });
    const rows = tera.autograd.noGrad(() => table.forward([7, 2], [1, 2]));
    expect(rows.shape).toEqual([1, 2, 4]);
    const all = table.weight.toFloat32Array();
    expectAllClose(rows.toFloat32Array(), [...all.subarray(28, 32), ...all.subarray(8, 12)], { rtol: 0, atol: 0 });
    expect(() => table.forward([10])).toThrow(/token id 10 at position 0 is not a token index in \[0, 10\)/);
    expect(() => table.forward(rows)).toThrow(/ids must be integers .*not a Var/);
    const norms = [new tera.nn.LayerNorm(6), new tera.nn.RMSNorm(6)];
    expect(norms.map((n) => n.namedParameters().map(([name, p]) => [name, Array.from(p.toFloat32Array())]))).toEqual([
      [
        ['weight', [1, 1, 1, 1, 1, 1]],
        ['bias', [0, 0, 0, 0, 0, 0]],
      ],
      [['weight', [1, 1, 1, 1, 1, 1]]],
    ]);
    expect(norms.map((n) => n.eps)).toEqual([1e-5, 1e-6]);
    expect(() => new tera.nn.Linear(3, 2, { init: () => tera.zeros([3, 2]) })).toThrow(
      /init\('weight'\) made a tensor \[3, 2\], expected \[2, 3\]/,
    );
  });

  test('a block without a context is a plain causal pass', () => {
    const config = tera.models.parseModelConfig({
      model_type: 'llama',
      hidden_size: 8,
      intermediate_size: 12,
      num_attention_heads: 2,
      num_key_value_heads: 1,
    }) as tera.models.LlamaConfig;
    tera.nn.manualSeed(5);
    const block = new tera.nn.LlamaDecoderLayer(config, 0);
    const x = tera.random.normal([2, 3, 8], { seed: 1 });
    const plain = tera.autograd.noGrad(() => block.forward(x).toFloat32Array());
    const explicit = tera.autograd.noGrad(() => block.forward(x, tera.nn.plainContext(2, 3)).toFloat32Array());
    expectAllClose(plain, explicit, { rtol: 0, atol: 0 });
    // Causal: the first token's output does not depend on the later ones.
    const first = tera.autograd.noGrad(() => block.forward(tera.tensor(x.toFloat32Array().slice(0, 8), [1, 1, 8])));
    expectAllClose(first.toFloat32Array(), plain.subarray(0, 8), { rtol: 1e-5, atol: 1e-6 });
    expect(() => block.forward(tera.zeros([2, 3, 7]))).toThrow(
      /rmsNorm: weight has shape \[8\], expected \[7\] for x \[2, 3, 7\]/,
    );
  });
});

describe('savePretrained', () => {
  test.each<[string, () => TinyCheckpoint, tera.models.SavePretrainedOptions]>([
    ['GPT-2 (Conv1D transposed back), F32', () => writeTinyGpt2(path.join(dir, 'in')), {}],
    [
      'GPT-2 untied, BF16, sharded',
      () => writeTinyGpt2(path.join(dir, 'in'), { config: { tie_word_embeddings: false } }),
      { dtype: 'BF16', maxShardSize: 2000 },
    ],
    ['LLaMA, sharded', () => writeTinyLlama(path.join(dir, 'in')), { maxShardSize: '4kB' }],
  ])('%s: the saved checkpoint holds the same tensors and loads to the same logits', (_, make, options) => {
    const fixture = make();
    const model = fromPretrained(fixture.dir);
    const out = path.join(dir, 'out');
    const { files } = model.savePretrained(out, options);
    if (options.maxShardSize !== undefined) expect(files).toContain('model.safetensors.index.json');
    // Every tensor in the checkpoint's own layout ([in, out] for Conv1D), exactly (the fixture values are exact in BF16).
    const { tensors } = tera.models.readCheckpoint(out);
    for (const [name, { values }] of fixture.weights) {
      expectAllClose(tensors.get(name)!.toFloat32Array(), values, { rtol: 0, atol: 0, what: name });
    }
    const reloaded = fromPretrained(out);
    const input = { ids: [[1, 2, 3, 4, 5]] };
    expectAllClose(logitsOf(reloaded, input), logitsOf(model, input), { rtol: 0, atol: 0, what: 'logits' });
    for (const t of tensors.values()) t.dispose();
    model.dispose();
    reloaded.dispose();
  });
});

/** A KV cache for the test: keeps each layer's keys and values, concatenated along the tokens. */
class ConcatCache implements KeyValueCache {
  length = 0;
  readonly #keys: Var[] = [];
  readonly #values: Var[] = [];

  update(layer: number, keys: Var, values: Var): { keys: Input; values: Input } {
    const grow = (store: Var[], added: Var) =>
      (store[layer] = store[layer] === undefined ? added : concat([store[layer], added], 2));
    return { keys: grow(this.#keys, keys), values: grow(this.#values, values) };
  }
}

describe('KV-cache hook', () => {
  test.each([
    ['GPT-2', (f: string) => writeTinyGpt2(f)],
    ['LLaMA with GQA', (f: string) => writeTinyLlama(f)],
  ])("%s: a prompt then one token at a time gives the full pass's logits, with left padding", (_, make) => {
    const fixture = make(path.join(dir, 'model'));
    const model = fromPretrained(fixture.dir);
    const vocab = vocabOf(fixture);
    const { ids, attentionMask } = leftPadded(fixture, 8, [0, 3], 9);
    const positions = positionsFromMask(attentionMask);
    const full = logitsOf(model, { ids, attentionMask, positions });
    const cache = new ConcatCache();
    const prompt = 5;
    tera.autograd.noGrad(() => {
      for (let start = 0; start < 8;) {
        const end = start === 0 ? prompt : start + 1;
        const step = model.forward(
          ids.map((row) => row.slice(start, end)),
          {
            attentionMask: attentionMask.map((row) => row.slice(0, end)),
            positions: positions.map((row) => row.slice(start, end)),
            cache,
          },
        );
        const got = step.toFloat32Array();
        for (let b = 0; b < 2; b++) {
          for (let t = start; t < end; t++) {
            if (attentionMask[b][t] === 0) continue;
            const at = (b * (end - start) + (t - start)) * vocab;
            const want = (b * 8 + t) * vocab;
            expectAllClose(got.subarray(at, at + vocab), full.subarray(want, want + vocab), {
              ...LOGIT_TOL,
              what: `[${b}, ${t}]`,
            });
          }
        }
        cache.length = end;
        start = end;
      }
    });
    // The cache counts against the model's positions.
    cache.length = model.config.maxPositions;
    expect(() => model.forward([[1], [1]], { cache })).toThrow(
      /1 tokens exceed the model's \d+ positions|cached and 1 tokens exceed/,
    );
    model.dispose();
  });
});

describe('memory: the frozen base computes input gradients only', () => {
  test('a frozen model with one trainable parameter gives only that parameter a gradient', () => {
    const fixture = writeTinyLlama(path.join(dir, 'model'));
    const model = fromPretrained(fixture.dir);
    model.requiresGrad(false);
    const norm = (model.getSubmodule('model.layers.0.input_layernorm') as tera.nn.RMSNorm).weight;
    norm.requiresGrad = true;
    tera.autograd.tidy(() => model.loss([[1, 2, 3, 4, 5, 6]]).backward());
    expect(norm.grad).not.toBeNull();
    const withGrad = model
      .namedParameters()
      .filter(([, p]) => p.grad !== null)
      .map(([n]) => n);
    expect(withGrad).toEqual(['model.layers.0.input_layernorm.weight']);
    model.dispose();
  });
});

function digest(folder: string): string {
  const hash = crypto.createHash('sha256');
  for (const name of fs.readdirSync(folder).sort()) hash.update(name).update(fs.readFileSync(path.join(folder, name)));
  return hash.digest('hex');
}

describe('bad input is refused, naming the problem, with nothing changed', () => {
  test('a checkpoint with missing, extra and mis-shaped tensors: one error, no model built', () => {
    const fixture = writeTinyGpt2(path.join(dir, 'model'));
    const file = path.join(fixture.dir, 'model.safetensors');
    const stored = fixture.stored
      .filter((t) => t.key !== 'transformer.h.1.ln_2.bias')
      .map((t) => (t.key === 'transformer.h.0.attn.c_attn.weight' ? { ...t, shape: [24, 8] } : t));
    stored.push({ ...stored[0], key: 'transformer.h.2.ln_1.weight', shape: [8], values: new Float64Array(8) });
    fs.rmSync(file);
    writeSafetensorsFixture(file, stored);
    const before = digest(fixture.dir);
    const forLoading = jest.spyOn(ParameterBank, 'forLoading');
    let message = '';
    try {
      fromPretrained(fixture.dir);
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/missing tensors \(1\): transformer\.h\.1\.ln_2\.bias/);
    expect(message).toMatch(/unexpected tensors \(1\): transformer\.h\.2\.ln_1\.weight/);
    expect(message).toMatch(
      /mis-shaped tensors \(1\): transformer\.h\.0\.attn\.c_attn\.weight is \[24, 8\], expected \[8, 24\]/,
    );
    expect(forLoading).not.toHaveBeenCalled();
    expect(digest(fixture.dir)).toBe(before);
  });

  test('an unknown model_type and an unsupported config value', () => {
    const fixture = writeTinyLlama(path.join(dir, 'model'), { config: { model_type: 'falcon' } });
    expect(() => fromPretrained(fixture.dir)).toThrow(
      /model_type "falcon" is not supported \(supported: gpt2, llama, mistral\)/,
    );
    const scaled = writeTinyLlama(path.join(dir, 'scaled'), {
      config: { rope_scaling: { rope_type: 'linear', factor: 2 } },
    });
    expect(() => fromPretrained(scaled.dir)).toThrow(/rope_scaling has rope type "linear"/);
    expect(() => fromPretrained(path.join(dir, 'nowhere'))).toThrow(/cannot read the model config/);
    expect(() => fromPretrained(fixture.dir, { device: 'cpu', dtype: 'F16' } as never)).toThrow(/unknown option dtype/);
  });

  test('token ids outside the vocabulary, too long sequences, bad masks, positions and labels', () => {
    const fixture = writeTinyGpt2(path.join(dir, 'model'));
    const model = fromPretrained(fixture.dir);
    const state = model.stateDict();
    const before = Object.fromEntries(Object.entries(state).map(([n, t]) => [n, t.toFloat32Array()]));
    expect(() => model.forward([[1, 2, 23]])).toThrow(
      /token id 23 at \[0, 2\] is outside the vocabulary \(ids 0\.\.22\)/,
    );
    expect(() => model.forward([[1, -1]])).toThrow(/token id -1 at \[0, 1\]/);
    expect(() => model.forward([[1, 2.5]])).toThrow(/ids: entry \[0, 1\] is 2\.5, not an integer/);
    expect(() => model.forward([[1, 2], [3]])).toThrow(/row 1 has 1 entries but row 0 has 2/);
    expect(() => model.forward([1, 2] as never)).toThrow(/ids must be rows of integers/);
    expect(() => model.forward([Array.from({ length: 13 }, () => 1)])).toThrow(
      /13 tokens exceed the model's 12 positions \(n_positions\)/,
    );
    expect(() => model.forward([[1, 2]], { attentionMask: [[1, 2]] })).toThrow(
      /attentionMask \[0, 1\] is 2, not 0 or 1/,
    );
    expect(() => model.forward([[1, 2]], { attentionMask: [[1, 1, 1]] })).toThrow(
      /attentionMask is \[1, 3\], expected \[1, 2\]/,
    );
    expect(() => model.forward([[1, 2]], { positions: [[0, 12]] })).toThrow(
      /position 12 at \[0, 1\] is outside the model's positions 0\.\.11/,
    );
    expect(() => model.forward([[1, 2]], { position: [[0, 1]] } as never)).toThrow(/unknown option 'position'/);
    expect(() => model.loss([[1, 2]], [[1, 99]])).toThrow(
      /label 99 at \[0, 1\] is neither a vocabulary id \(0\.\.22\) nor -100/,
    );
    expect(() => model.loss([[1, 2]], [[1, -100]])).toThrow(/no token has a label to predict/);
    expect(() => model.loss([[1, 2, 3]], null, { attentionMask: [[1, 0, 0]] })).toThrow(
      /no token has a label to predict/,
    );
    const llama = fromPretrained(writeTinyLlama(path.join(dir, 'llama')).dir);
    expect(() => llama.forward([Array.from({ length: 17 }, () => 1)])).toThrow(
      /17 tokens exceed the model's 16 positions \(max_position_embeddings\)/,
    );
    for (const [name, values] of Object.entries(before)) {
      expectAllClose(state[name].toFloat32Array(), values, { rtol: 0, atol: 0, what: name });
    }
    model.dispose();
    llama.dispose();
  });

  test('savePretrained refuses a model with adapters and writes nothing', () => {
    const fixture = writeTinyLlama(path.join(dir, 'model'));
    const model = fromPretrained(fixture.dir);
    tera.injectAdapter(model, new tera.LoraConfig({ targetModules: ['q_proj'] }));
    const out = path.join(dir, 'out');
    expect(() => model.savePretrained(out)).toThrow(
      /the model has adapters on model\.layers\.0\.self_attn\.q_proj, model\.layers\.1\.self_attn\.q_proj: save them with saveAdapter\(\), or merge them/,
    );
    expect(fs.existsSync(out)).toBe(false);
    model.dispose();
  });
});
