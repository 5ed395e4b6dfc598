/**
 * TeRA, VeRA and LoRA on the language models: targets by transformers' names
 * ('q_proj', 'c_attn', regexes, 'all-linear' without lm_head), GPT-2's Conv1D
 * with PEFT's fan_in_fan_out, adapter files keyed as PEFT keys them (and a
 * file written as PEFT writes one for GPT-2 loads), training lowers the loss,
 * save -> load gives identical logits, gradients through the whole model match
 * finite differences of the float64 reference, only adapter parameters get
 * gradients, and TeRA's default modes work on 768x2304 and 4096x11008 layers.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import * as tera from '../lib';
import { readSafetensors } from '../lib/io/safetensors';
import {
  type TinyCheckpoint,
  seededRandom,
  writeSafetensorsFixture,
  writeTinyGpt2,
  writeTinyLlama,
} from './helpers/checkpoints';
import { METHOD_CASES, effectiveWeight64, f64 } from './helpers/methods';
import { type ReferenceWeights, referenceLogits, referenceLoss, withWeight } from './helpers/reference-lm';
import { expectAllClose } from './helpers/tolerance';

type CausalLM = tera.models.CausalLM;
type Parameter = tera.nn.Parameter;
const { fromPretrained } = tera.models;

let dir: string;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-lm-adapters-'));
});

afterEach(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

const MODELS: { name: string; make: (folder: string) => TinyCheckpoint; targets: tera.adapters.TargetModules }[] = [
  { name: 'GPT-2 on c_attn', make: (f) => writeTinyGpt2(f), targets: ['c_attn'] },
  { name: 'LLaMA on q_proj, v_proj', make: (f) => writeTinyLlama(f), targets: ['q_proj', 'v_proj'] },
  { name: 'GPT-2 on all-linear', make: (f) => writeTinyGpt2(f), targets: 'all-linear' },
  { name: 'LLaMA on all-linear', make: (f) => writeTinyLlama(f), targets: 'all-linear' },
];

function adaptedNames(peft: tera.PeftModel): string[] {
  return peft.adapterLayers().map(([name]) => name);
}

describe("targets by transformers' names", () => {
  test('lists, suffixes, regexes and all-linear select the layers PEFT selects', () => {
    const gpt2 = fromPretrained(writeTinyGpt2(path.join(dir, 'g')).dir);
    const llama = fromPretrained(writeTinyLlama(path.join(dir, 'l')).dir);
    const select = (model: CausalLM, targets: tera.adapters.TargetModules) => {
      const peft = tera.injectAdapter(model, new tera.LoraConfig({ targetModules: targets }));
      const names = adaptedNames(peft);
      peft.unload();
      return names;
    };
    expect(select(gpt2, ['c_attn'])).toEqual(['transformer.h.0.attn.c_attn', 'transformer.h.1.attn.c_attn']);
    expect(select(llama, ['q_proj', 'v_proj'])).toEqual([
      'model.layers.0.self_attn.q_proj',
      'model.layers.0.self_attn.v_proj',
      'model.layers.1.self_attn.q_proj',
      'model.layers.1.self_attn.v_proj',
    ]);
    expect(select(llama, '.*\\.1\\.self_attn\\.(k|o)_proj')).toEqual([
      'model.layers.1.self_attn.k_proj',
      'model.layers.1.self_attn.o_proj',
    ]);
    // all-linear: every Linear and Conv1D but the output embeddings (lm_head), tied or not.
    const perGpt2Block = ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'];
    expect(select(gpt2, 'all-linear')).toEqual(
      [0, 1].flatMap((i) => perGpt2Block.map((n) => `transformer.h.${i}.${n}`)),
    );
    const perLlamaLayer = ['q_proj', 'k_proj', 'v_proj', 'o_proj'].map((n) => `self_attn.${n}`);
    perLlamaLayer.push('mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj');
    expect(select(llama, 'ALL-LINEAR')).toEqual(
      [0, 1].flatMap((i) => perLlamaLayer.map((n) => `model.layers.${i}.${n}`)),
    );
    // An untied lm_head can be adapted when asked for by name; a tied one is refused (merging would change wte).
    expect(select(llama, ['lm_head'])).toEqual(['lm_head']);
    expect(() => tera.injectAdapter(gpt2, new tera.LoraConfig({ targetModules: ['lm_head'] }))).toThrow(
      /'lm_head' shares its weight with 'transformer\.wte\.weight' \(tied weights\)/,
    );
    expect(gpt2.namedModules().some(([, m]) => m instanceof tera.adapters.AdapterLinear)).toBe(false);
    expect(() => tera.injectAdapter(gpt2, new tera.LoraConfig({ targetModules: ['q_proj'] }))).toThrow(
      /target module 'q_proj' matches no module; the model has: transformer \(GPT2Model\), .*transformer\.h\.0\.attn\.c_attn \(Conv1D\)/,
    );
    gpt2.dispose();
    llama.dispose();
  });
});

describe('adapter files keyed as PEFT keys them', () => {
  test.each([
    [
      'LoRA',
      () => new tera.LoraConfig({ targetModules: ['c_attn'], r: 2 }),
      ['lora_A.weight', 'lora_B.weight'],
      [
        [2, 8],
        [24, 2],
      ],
    ],
    [
      'VeRA',
      () => new tera.VeraConfig({ targetModules: ['c_attn'], r: 4 }),
      ['vera_lambda_b', 'vera_lambda_d'],
      [[24], [4]],
    ],
    ['TeRA', () => new tera.TeraConfig({ targetModules: ['c_attn'] }), ['tera_lambda_1', 'tera_lambda_2'], [[24], [8]]],
  ])(
    '%s on GPT-2 c_attn: base_model.model.transformer.h.N.attn.c_attn.* and fan_in_fan_out',
    (method, config, suffixes, shapes) => {
      const model = fromPretrained(writeTinyGpt2(path.join(dir, 'g')).dir);
      const peft = tera.injectAdapter(model, config());
      const { configPath, weightsPath } = tera.saveAdapter(peft, path.join(dir, 'adapter'));
      const { tensors } = readSafetensors(weightsPath);
      const expected = [0, 1].flatMap((layer) =>
        suffixes.map((suffix, i) => [`base_model.model.transformer.h.${layer}.attn.c_attn.${suffix}`, shapes[i]]),
      );
      if (method === 'VeRA') expected.push(['base_model.vera_A', [4, 8]], ['base_model.vera_B', [24, 4]]);
      expect(
        Object.entries(tensors)
          .map(([key, t]) => [key, t.shape])
          .sort(),
      ).toEqual(expected.sort());
      const json = JSON.parse(fs.readFileSync(configPath, 'utf8'));
      expect(json.target_modules).toEqual(['c_attn']);
      // PEFT marks Conv1D targets with fan_in_fan_out; TeRA's own format has no such field.
      expect(json.fan_in_fan_out).toBe(method === 'TeRA' ? undefined : true);
      model.dispose();
    },
  );

  test('fan_in_fan_out is false for Linear targets', () => {
    const model = fromPretrained(writeTinyLlama(path.join(dir, 'l')).dir);
    const { configPath } = tera.saveAdapter(
      tera.injectAdapter(model, new tera.LoraConfig({ targetModules: ['q_proj'] })),
      path.join(dir, 'a'),
    );
    expect(JSON.parse(fs.readFileSync(configPath, 'utf8')).fan_in_fan_out).toBe(false);
    model.dispose();
  });

  test('a LoRA adapter as PEFT saves it for GPT-2 (fan_in_fan_out, CAUSAL_LM) loads and computes W + s B A on Conv1D', () => {
    const fixture = writeTinyGpt2(path.join(dir, 'g'));
    const model = fromPretrained(fixture.dir);
    const adapter = path.join(dir, 'peft-adapter');
    fs.mkdirSync(adapter);
    // The fields PEFT 0.17's LoraConfig writes for get_peft_model(gpt2, LoraConfig(task_type='CAUSAL_LM', r=2, lora_alpha=4, target_modules=['c_attn'])).
    const peftConfig = {
      alpha_pattern: {},
      auto_mapping: null,
      base_model_name_or_path: 'gpt2',
      bias: 'none',
      corda_config: null,
      eva_config: null,
      exclude_modules: null,
      fan_in_fan_out: true,
      inference_mode: true,
      init_lora_weights: true,
      layer_replication: null,
      layers_pattern: null,
      layers_to_transform: null,
      loftq_config: {},
      lora_alpha: 4,
      lora_bias: false,
      lora_dropout: 0.0,
      megatron_config: null,
      megatron_core: 'megatron.core',
      modules_to_save: null,
      peft_type: 'LORA',
      qalora_group_size: 16,
      r: 2,
      rank_pattern: {},
      revision: null,
      target_modules: ['c_attn'],
      target_parameters: null,
      task_type: 'CAUSAL_LM',
      trainable_token_indices: null,
      use_dora: false,
      use_qalora: false,
      use_rslora: false,
    };
    fs.writeFileSync(path.join(adapter, 'adapter_config.json'), JSON.stringify(peftConfig, null, 2));
    const random = seededRandom(4);
    const values = (n: number) => Float64Array.from({ length: n }, () => Math.round((random() - 0.5) * 64) / 128);
    const lora = [0, 1].flatMap((layer) => [
      {
        key: `base_model.model.transformer.h.${layer}.attn.c_attn.lora_A.weight`,
        dtype: 'F32' as const,
        shape: [2, 8],
        values: values(16),
      },
      {
        key: `base_model.model.transformer.h.${layer}.attn.c_attn.lora_B.weight`,
        dtype: 'F32' as const,
        shape: [24, 2],
        values: values(48),
      },
    ]);
    writeSafetensorsFixture(path.join(adapter, 'adapter_model.safetensors'), lora);
    const peft = tera.loadAdapter(model, adapter);
    // The reference: Conv1D weights [in, out] plus (s B A)^T, s = lora_alpha / r = 2.
    let weights: ReferenceWeights = fixture.weights;
    for (const layer of [0, 1]) {
      const name = `transformer.h.${layer}.attn.c_attn.weight`;
      const [a, b] = [lora[2 * layer].values, lora[2 * layer + 1].values];
      const stored = fixture.weights.get(name)!.values;
      const outIn = new Float64Array(24 * 8);
      for (let o = 0; o < 24; o++) {
        for (let i = 0; i < 8; i++) {
          outIn[o * 8 + i] = stored[i * 24 + o] + 2 * (b[o * 2] * a[i] + b[o * 2 + 1] * a[8 + i]);
        }
      }
      weights = withWeight(weights, name, outIn, true);
    }
    const ids = [[3, 1, 4, 1, 5, 9, 2]];
    const got = tera.autograd.noGrad(() =>
      peft.forward(ids, { attentionMask: [[1, 1, 1, 1, 1, 1, 1]] }).toFloat32Array(),
    );
    expectAllClose(got, referenceLogits(fixture.config, weights, { ids }), { rtol: 2e-4, atol: 2e-5, what: 'logits' });
    model.dispose();
  });
});

/** Each adapted layer's W0 + dW in float64 ([out, in]), reading parameters through `value`. */
function effectiveWeights(
  peft: tera.PeftModel,
  value: (p: Parameter) => Float64Array = f64,
): Map<string, Float64Array> {
  return new Map(peft.adapterLayers().map(([name, layer]) => [name, effectiveWeight64(peft, layer, value)]));
}

/** The float64 reference weights of an adapted model: each adapted layer's W0 + dW, in the checkpoint's layout. */
function adaptedWeights(
  fixture: TinyCheckpoint,
  peft: tera.PeftModel,
  effective = effectiveWeights(peft),
): ReferenceWeights {
  let weights: ReferenceWeights = fixture.weights;
  for (const [name, layer] of peft.adapterLayers()) {
    weights = withWeight(weights, `${name}.weight`, effective.get(name)!, layer.baseLayer instanceof tera.nn.Conv1D);
  }
  return weights;
}

/** Rows of a tiny repetitive corpus: a model can learn it in a few steps. */
function corpus(vocab: number): number[][] {
  return [0, 1, 2, 3].map((row) => Array.from({ length: 8 }, (_, t) => (3 * row + 5 * t + 1) % vocab));
}

describe.each(MODELS)('$name', ({ make, targets }) => {
  test.each(METHOD_CASES.map((c) => [c.name, c] as const))(
    '%s: trains, saves and loads to identical logits',
    (_, method) => {
      const fixture = make(path.join(dir, 'model'));
      const model = fromPretrained(fixture.dir);
      const peft = tera.injectAdapter(model, method.config(targets));
      const ids = corpus(fixture.config.vocab_size as number);
      const optimizer = new tera.AdamW(peft.trainableParameters(), { lr: method.lr, weightDecay: 0 });
      const losses: number[] = [];
      for (let step = 0; step < 8; step++) {
        losses.push(
          tera.autograd.tidy(() => {
            const loss = model.loss(ids);
            loss.backward();
            return loss.item();
          }),
        );
        // Only adapter parameters get gradients; the frozen base none.
        if (step === 0) {
          const adapterParams = new Set(peft.adapterLayers().flatMap(([, layer]) => layer.adapterParameters()));
          for (const [name, p] of model.namedParameters()) {
            expect([name, p.grad !== null]).toEqual([name, adapterParams.has(p)]);
          }
        }
        optimizer.step();
        optimizer.zeroGrad();
      }
      console.log(method.name, JSON.stringify(losses.map((l) => l.toFixed(3))));
      // Every step lowers the loss, by 0.5% of it at least over the 8 steps (1-25% is typical here).
      losses.slice(1).forEach((loss, i) => expect(loss).toBeLessThan(losses[i]));
      expect(losses[7]).toBeLessThan(0.995 * losses[0]);
      const saved = path.join(dir, 'adapter');
      tera.saveAdapter(peft, saved);
      const before = tera.autograd.noGrad(() => model.forward(ids).toFloat32Array());
      const fresh = fromPretrained(fixture.dir);
      const loaded = tera.loadAdapter(fresh, saved);
      const after = tera.autograd.noGrad(() => loaded.model.forward(ids).toFloat32Array());
      expectAllClose(after, before, { rtol: 0, atol: 0, what: 'logits after save and load' });
      // And the adapted model is what the float64 reference computes with W0 + dW.
      expectAllClose(before, referenceLogits(fixture.config, adaptedWeights(fixture, peft), { ids }), {
        rtol: 5e-4,
        atol: 5e-5,
        what: 'adapted logits',
      });
      model.dispose();
      fresh.dispose();
    },
  );

  test.each(METHOD_CASES.filter((c) => !/saved/.test(c.name)).map((c) => [c.name, c] as const))(
    '%s: gradients through the whole model match finite differences of the float64 reference',
    (_, method) => {
      const fixture = make(path.join(dir, 'model'));
      const model = fromPretrained(fixture.dir);
      const peft = tera.injectAdapter(model, method.config(targets));
      // Move every adapter parameter off its initial value (LoRA's B = 0 would hide A's gradient).
      const random = seededRandom(11);
      for (const p of peft.trainableParameters()) {
        p.data.set(Float32Array.from({ length: p.size }, () => (random() - 0.5) * 0.5));
      }
      const vocab = fixture.config.vocab_size as number;
      const ids = corpus(vocab).slice(0, 2);
      const mask = [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1, 1, 1],
      ];
      const labels = ids.map((row, b) => row.map((id, t) => (mask[b][t] === 1 ? id : -100)));
      tera.autograd.tidy(() => model.loss(ids, null, { attentionMask: mask }).backward());
      const layers = peft.adapterLayers();
      const unperturbed = effectiveWeights(peft);
      const referenceAt = (target: Parameter, index: number, delta: number) => {
        const value = (p: Parameter) => {
          const v = f64(p);
          if (p === target) v[index] += delta;
          return v;
        };
        // Only the layer that owns `target` changes.
        const [name, layer] = layers.find(([, l]) => l.adapterParameters().includes(target))!;
        const effective = new Map(unperturbed).set(name, effectiveWeight64(peft, layer, value));
        const logits = referenceLogits(fixture.config, adaptedWeights(fixture, peft, effective), {
          ids,
          attentionMask: mask,
        });
        return referenceLoss(logits, labels, vocab);
      };
      const checked = [layers[0], layers[layers.length - 1]].flatMap(([, layer]) => layer.adapterParameters());
      const h = 1e-4;
      for (const p of checked) {
        const grad = p.grad!.toFloat32Array();
        for (const index of [0, Math.floor(p.size / 2), p.size - 1]) {
          const numeric = (referenceAt(p, index, h) - referenceAt(p, index, -h)) / (2 * h);
          expectAllClose([grad[index]], [numeric], { rtol: 2e-3, atol: 2e-5, what: `d loss / d ${p}[${index}]` });
        }
      }
      model.dispose();
    },
  );
});

/**
 * Row `row` of TeRA's dW in float64 from the shared core and factors: the
 * out modes' factor rows contract the core first (its size), then the in modes
 * expand what is left, so a row of a 4096 x 11008 update is cheap.
 */
interface Tucker64 {
  core: Float64Array;
  factors: Float64Array[];
  shape: tera.adapters.TeraShape;
  alpha: number;
}

function tucker64(layer: tera.adapters.TeraLayer): Tucker64 {
  const { core, factors, shape } = layer.shared;
  return { core: f64(core), factors: factors.map(f64), shape, alpha: layer.alpha };
}

function teraRow64({ core, factors, shape, alpha }: Tucker64, lambdas: Float64Array[], row: number): Float64Array {
  const { outModes, inModes, ranks } = shape;
  const P = outModes.length;
  let t = core;
  let trailing = t.length;
  // Out mode n: contract rank r_n with A_n[j_n, :] * l_n.
  let rest = row;
  const index = outModes.map(() => 0);
  for (let n = P - 1; n >= 0; n--) {
    index[n] = rest % outModes[n];
    rest = Math.floor(rest / outModes[n]);
  }
  for (let n = 0; n < P; n++) {
    const a = factors[n];
    const r = ranks[n];
    trailing /= r;
    const next = new Float64Array(trailing);
    for (let k = 0; k < r; k++) {
      const w = a[index[n] * r + k] * lambdas[n][k];
      for (let j = 0; j < trailing; j++) next[j] += w * t[k * trailing + j];
    }
    t = next;
  }
  // In modes: mode products with A_n diag(l_n), one mode at a time (leading dims already expanded).
  let leading = 1;
  let dims = ranks.slice(P);
  for (let q = 0; q < inModes.length; q++) {
    const n = P + q;
    const a = factors[n];
    const [I, r] = [inModes[q], ranks[n]];
    const after = dims.slice(1).reduce((x, y) => x * y, 1);
    const next = new Float64Array(leading * I * after);
    for (let lead = 0; lead < leading; lead++) {
      for (let i = 0; i < I; i++) {
        for (let k = 0; k < r; k++) {
          const w = a[i * r + k] * lambdas[n][k];
          const src = (lead * r + k) * after;
          const dst = (lead * I + i) * after;
          for (let j = 0; j < after; j++) next[dst + j] += w * t[src + j];
        }
      }
    }
    t = next;
    leading *= I;
    dims = dims.slice(1);
  }
  return t.map((v) => v * alpha);
}

describe("TeRA's default modes on LLM-sized non-square layers", () => {
  test('teraShape: 768x2304 (c_attn), 4096x11008 and 11008x4096 (LLaMA-7B MLP)', () => {
    const config = new tera.TeraConfig({ targetModules: ['x'] });
    expect(tera.adapters.teraShape(config, 2304, 768, 'c_attn')).toMatchObject({
      outModes: [48, 48],
      inModes: [24, 32],
    });
    expect(tera.adapters.teraShape(config, 11008, 4096, 'up_proj')).toMatchObject({
      outModes: [86, 128],
      inModes: [64, 64],
      ranks: [86, 128, 64, 64],
    });
    expect(tera.adapters.teraShape(config, 4096, 11008, 'down_proj')).toMatchObject({
      outModes: [64, 64],
      inModes: [86, 128],
    });
    const sixteen = new tera.TeraConfig({ targetModules: ['x'], maxModeSize: 16, maxRank: 16 });
    expect(tera.adapters.teraShape(sixteen, 11008, 4096, 'up_proj')).toMatchObject({
      outModes: [16, 16, 43],
      inModes: [16, 16, 16],
      ranks: [16, 16, 16, 16, 16, 16],
    });
  });

  test.each([
    ['GPT-2-small c_attn (Conv1D 768 -> 2304)', 768, 2304, true],
    ['LLaMA-7B up_proj (4096 -> 11008)', 4096, 11008, false],
  ])('%s: forward, lambda gradients and the merged weight match float64 rows', (_, inF, outF, conv) => {
    const layer = conv ? new tera.nn.Conv1D(inF, outF, { seed: 1 }) : new tera.nn.Linear(inF, outF, { seed: 1 });
    const model = new tera.nn.Sequential(layer);
    const peft = tera.injectAdapter(model, new tera.TeraConfig({ targetModules: ['0'], alpha: 0.5, seed: 2 }));
    const adapted = peft.adapterLayers()[0][1];
    const tlayer = adapted.adapter('default') as tera.adapters.TeraLayer;
    const random = seededRandom(3);
    tlayer.lambdas.forEach((l) => l.data.set(Float32Array.from({ length: l.size }, () => 0.5 + random())));
    const lambdas = tlayer.lambdas.map((l) => f64(l));
    const x = Float32Array.from({ length: inF }, () => random() - 0.5);
    const rows = [0, 1237, outF - 1];
    // loss = sum over the checked outputs of y_j, so dl_n = sum_j alpha x . d(dW[j, :]) / d l_n.
    const selector = new Float32Array(outF);
    rows.forEach((j) => (selector[j] = 1));
    const y = tera.autograd.tidy(() => {
      const out = peft.forward(tera.tensor(x, [1, inF]));
      tera.autograd.sum(tera.autograd.mul(out, tera.tensor(selector, [1, outF]))).backward();
      return out.toFloat32Array();
    });
    const w0 = layer.weight.toFloat32Array();
    const shared = tucker64(tlayer);
    const row64 = (j: number, ls: Float64Array[]) => teraRow64(shared, ls, j).map((d, i) => d + w0[j * inF + i]);
    const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((s, v, i) => s + v * b[i], 0);
    const bias = f64(layer.bias!);
    expectAllClose(
      rows.map((j) => y[j]),
      rows.map((j) => dot(row64(j, lambdas), x) + bias[j]),
      { rtol: 1e-4, atol: 1e-4, what: 'outputs' },
    );
    // d loss / d l_n[k]: dW is linear in each l_n[k], so the derivative is dW with l_n replaced by e_k.
    for (const [n, k] of [
      [0, 3],
      [2, 15],
      [lambdas.length - 1, 7],
    ]) {
      const unit = lambdas.map((l, m) => (m === n ? l.map((_, i) => (i === k ? 1 : 0)) : l));
      const numeric = rows.reduce((s, j) => s + dot(teraRow64(shared, unit, j), x), 0);
      expectAllClose([tlayer.lambdas[n].grad!.toFloat32Array()[k]], [numeric], {
        rtol: 1e-3,
        atol: 1e-4,
        what: `dl_${n + 1}[${k}]`,
      });
    }
    peft.mergeAdapter();
    const merged = layer.weight.toFloat32Array();
    for (const j of rows) {
      expectAllClose(merged.subarray(j * inF, (j + 1) * inF), row64(j, lambdas), {
        rtol: 1e-4,
        atol: 1e-5,
        what: `merged row ${j}`,
      });
    }
    peft.unload().dispose();
  });
});
