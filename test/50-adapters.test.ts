/**
 * Adapters: tensorisation rule, target matching, gradients of every method
 * against float64 finite differences (one layer, and an MLP carrying all three
 * kinds at once), merge / unmerge / disable, several adapters, shared factors
 * and workspaces, PEFT's parameter summary, and short training runs.
 */
import * as tera from '../lib';
import { autograd as ag, adapters, nn } from '../lib';
import { native } from '../lib/native/loader';
import { METHOD_CASES, type ValueOf, effectiveWeight64, f64 } from './helpers/methods';
import { gemm as gemm64, randomArray, rng } from './helpers/reference';
import { expectAllClose, expectDiffer, expectMaxAbsDiff, isClose } from './helpers/tolerance';

const next = rng(50);
type Var = tera.autograd.Var;

/** Sets every parameter of `layer`'s adapters to random values in [-1, 1). */
function randomise(params: tera.nn.Parameter[]): void {
  for (const p of params) p.data.set(randomArray(p.size, next));
}

/** The model's forward in float64: adapted or plain Linear layers with tanh between (MLP layout). */
function forward64(peft: tera.PeftModel, x: Float64Array, rows: number, value: ValueOf): Float64Array {
  const layers = peft.model.namedChildren().filter(([, m]) => !(m instanceof nn.Tanh));
  let h = x;
  layers.forEach(([, m], i) => {
    const linear = m instanceof adapters.AdapterLinear ? m.baseLayer : (m as tera.nn.Linear);
    const w = m instanceof adapters.AdapterLinear ? effectiveWeight64(peft, m, value) : value(linear.weight);
    const b = value(linear.bias!);
    const out = linear.outFeatures;
    h = gemm64(h, w, rows, out, linear.inFeatures, false, true, 1, 0, null).value.map((v, k) => v + b[k % out]);
    if (i < layers.length - 1) h = h.map(Math.tanh);
  });
  return h;
}

/**
 * Back-propagates L = sum(y * R) through the model and compares the gradient
 * of every trainable parameter and of the input with central differences of
 * the float64 reference. Also checks the forward output against it.
 */
function checkGradients(peft: tera.PeftModel, inFeatures: number, rows: number): void {
  const xData = randomArray(rows * inFeatures, next);
  const x = new ag.Var(tera.tensor(xData, [rows, inFeatures]), { requiresGrad: true });
  const y = peft.forward(x);
  const snapshot = new Map(peft.parameters().map((p) => [p, f64(p)]));
  const current = (p: tera.nn.Parameter) => snapshot.get(p)!;
  const x64 = Float64Array.from(xData);
  const expected = forward64(peft, x64, rows, current);
  expectMaxAbsDiff(y.toFloat32Array(), expected, 1e-5);

  const weights = randomArray(y.size, next);
  y.backward(tera.tensor(weights, y.shape));
  const loss = (xv: Float64Array, value: ValueOf) =>
    forward64(peft, xv, rows, value).reduce((s, v, i) => s + v * weights[i], 0);
  const h = 1e-6;
  const compare = (what: string, analytic: Float32Array, probe: (i: number, delta: number) => number) => {
    for (let i = 0; i < analytic.length; i++) {
      const fd = (probe(i, h) - probe(i, -h)) / (2 * h);
      if (!isClose(analytic[i], fd, 2e-4, 2e-4)) {
        throw new Error(`${what}[${i}]: autograd ${analytic[i]} vs finite difference ${fd}`);
      }
    }
  };
  compare('x', x.grad!.toFloat32Array(), (i, d) => {
    const shifted = x64.slice();
    shifted[i] += d;
    return loss(shifted, current);
  });
  const trainable = peft.namedParameters().filter(([, p]) => p.requiresGrad);
  expect(trainable.length).toBeGreaterThan(0);
  for (const [name, p] of trainable) {
    compare(name, p.grad!.toFloat32Array(), (i, d) => {
      const shifted = current(p).slice();
      shifted[i] += d;
      return loss(x64, (q) => (q === p ? shifted : current(q)));
    });
  }
  for (const [name, p] of peft.namedParameters()) {
    if (!p.requiresGrad) expect([name, p.grad]).toEqual([name, null]);
  }
  peft.parameters().forEach((p) => p.zeroGrad());
}

// Every adapted model is unloaded after its test, so the shared-tensor counts start at zero.
const live: tera.PeftModel[] = [];
function inject(model: tera.nn.Module, config: tera.adapters.AdapterConfig, name?: string): tera.PeftModel {
  const peft = tera.injectAdapter(model, config, name);
  live.push(peft);
  return peft;
}
afterEach(() => {
  live.splice(0).forEach((peft) => peft.unload());
  expect(adapters.sharedFactorCount()).toBe(0);
  expect(adapters.workspaceCount()).toBe(0);
});

/** A base MLP with tanh between layers; fixed seed so every test sees the same weights. */
function baseMlp(sizes: number[], seed = 5): tera.nn.MLP {
  return new nn.MLP(sizes, { seed, activation: 'tanh' });
}

describe('TeRA tensorisation', () => {
  it('factorises dimensions into the fewest balanced modes <= maxModeSize', () => {
    const withDefault: [number, number[]][] = [
      [4096, [64, 64]],
      [768, [24, 32]],
      [2304, [48, 48]],
      [784, [28, 28]],
      [11008, [86, 128]],
      [128, [128]],
      [10, [10]],
      [131, [131]],
      [1, [1]],
    ];
    for (const [d, modes] of withDefault) expect([d, adapters.factorizeDimension(d)]).toEqual([d, modes]);
    const withSixteen: [number, number[]][] = [
      [4096, [16, 16, 16]],
      [768, [8, 8, 12]],
      [1000, [10, 10, 10]],
      [11008, [16, 16, 43]],
      [1024, [8, 8, 16]],
      [256, [16, 16]],
      [12, [12]],
      [17, [17]],
    ];
    for (const [d, modes] of withSixteen) expect([d, adapters.factorizeDimension(d, 16)]).toEqual([d, modes]);
    expect(adapters.factorizeDimension(4096, 8)).toEqual([8, 8, 8, 8]);
  });

  it('derives ranks min(I_n, maxRank), honours overrides and names bad ones', () => {
    const config = new tera.TeraConfig({ targetModules: ['x'], maxRank: 30 });
    expect(adapters.teraShape(config, 768, 4096, 'x')).toEqual({
      outModes: [24, 32],
      inModes: [64, 64],
      modes: [24, 32, 64, 64],
      ranks: [24, 30, 30, 30],
    });
    const byDefault = new tera.TeraConfig({ targetModules: ['x'] });
    expect(adapters.teraShape(byDefault, 768, 4096, 'x').ranks).toEqual([24, 32, 64, 64]);
    const custom = new tera.TeraConfig({ targetModules: ['x'], outModes: [4, 6], inModes: [24], ranks: [2, 3, 4] });
    expect(adapters.teraShape(custom, 24, 24, 'x').ranks).toEqual([2, 3, 4]);
    expect(() => adapters.teraShape(custom, 25, 24, 'fc')).toThrow(
      /cannot adapt 'fc' \(\[25, 24\]\): outModes \[4, 6\] multiply to 24/,
    );
    const tiny = new tera.TeraConfig({ targetModules: ['x'], maxModeSize: 2 });
    expect(() => adapters.teraShape(tiny, 64, 64, 'fc')).toThrow(/12 modes .* exceed the kernels' limit of 8/);
    expect(() => new tera.TeraConfig({ targetModules: ['x'], ranks: [0] })).toThrow(
      /ranks\[0\] must be an integer >= 1/,
    );
  });
});

describe('configs derived from one field table', () => {
  const classes = [tera.TeraConfig, tera.VeraConfig, tera.LoraConfig];

  it('writes every field under its JSON key with its default, and reads the same config back', () => {
    for (const Config of classes) {
      const config = new Config({ targetModules: ['q'] });
      const json = config.toJson();
      const fields: [string, adapters.FieldSpec<unknown>][] = Object.entries(Config.fields);
      const stored = fields.filter(([, spec]) => spec.json !== null);
      expect(new Set(stored.map(([, spec]) => spec.json)).size).toBe(stored.length);
      for (const [name, spec] of fields) {
        const value = (config as unknown as Record<string, unknown>)[name];
        if ('default' in spec) expect([name, value]).toEqual([name, spec.default]);
        if (spec.json !== null) {
          expect([name, json[spec.json]]).toEqual([name, spec.toJson ? spec.toJson(value) : value]);
        }
        expect(spec.help.length).toBeGreaterThan(0);
      }
      expect(json.peft_type).toBe(config.peftType);
      expect((Config as typeof tera.LoraConfig).fromJson(json)).toEqual(config);
    }
  });

  it('reads non-default values back exactly', () => {
    const teraConfig = new tera.TeraConfig({
      targetModules: '.*proj',
      excludeModules: ['x'],
      maxModeSize: 8,
      maxRank: 4,
      outModes: [2, 3],
      inModes: [6],
      ranks: [2, 2, 3],
      alpha: 0.25,
      seed: 11,
      saveFactors: true,
    });
    expect(tera.TeraConfig.fromJson(teraConfig.toJson())).toEqual(teraConfig);
    const veraConfig = new tera.VeraConfig({
      targetModules: ['a'],
      r: 3,
      dInitial: 0.5,
      seed: 2,
      saveProjection: true,
    });
    expect(tera.VeraConfig.fromJson(veraConfig.toJson())).toEqual(veraConfig);
    const loraConfig = new tera.LoraConfig({
      targetModules: ['a'],
      r: 3,
      alpha: 5,
      useRslora: true,
      rankPattern: { q: 2, 'k|v': 4 },
      alphaPattern: { v: 1.5 },
      dropout: 0.1,
      initLoraWeights: 'gaussian',
    });
    expect(tera.LoraConfig.fromJson(loraConfig.toJson())).toEqual(loraConfig);
    // The seed only initialises A and B, which a saved adapter stores: it is not written.
    const seeded = new tera.LoraConfig({ targetModules: ['a'], seed: 4 });
    expect([seeded.seed, 'seed' in seeded.toJson(), tera.LoraConfig.fromJson(seeded.toJson()).seed]).toEqual([
      4,
      false,
      0,
    ]);
  });
});

describe('PEFT options', () => {
  it('refuses options a config does not have, and values only a loaded file may hold', () => {
    expect(() => new tera.LoraConfig({ targetModules: ['0'], rank: 4 } as never)).toThrow(
      /LoraConfig has no option 'rank'; its options: targetModules \(.*\); .*r \(the rank \(as PEFT\)\)/,
    );
    const model = baseMlp([6, 4, 2]);
    const names = model.namedModules().map(([n, m]) => `${n}:${m}`);
    expect(() => inject(model, new tera.LoraConfig({ targetModules: ['0'], dropout: 0.1 }))).toThrow(
      /cannot make a new adapter:\n {2}- dropout: tera-peft has no dropout/,
    );
    expect(() => inject(model, new tera.LoraConfig({ targetModules: ['0'], initLoraWeights: 'eva' }))).toThrow(
      /initLoraWeights: 'eva' initialisation is not implemented/,
    );
    expect(() => inject(model, new tera.VeraConfig({ targetModules: ['0'], initWeights: false }))).toThrow(
      /initWeights: init_weights false is not implemented/,
    );
    expect(model.namedModules().map(([n, m]) => `${n}:${m}`)).toEqual(names);
    expect(new tera.VeraConfig({ targetModules: ['0'] }).saveProjection).toBe(true); // PEFT's default
  });

  it('LoRA takes r and alpha per module from rank_pattern / alpha_pattern (first match), and alpha / sqrt(r) with rsLoRA', () => {
    const config = new tera.LoraConfig({
      targetModules: ['q_proj', 'v_proj', 'head'],
      r: 2,
      alpha: 4,
      useRslora: true,
      rankPattern: { 'decoder\\..*': 5, v_proj: 3 }, // decoder.v_proj takes 5: the first key that names it
      alphaPattern: { head: 9 },
    });
    const peft = inject(new TwoBlocks(), config);
    const got = peft.adapterLayers().map(([name, layer]) => {
      const lora = layer.adapter('default') as tera.adapters.LoraLayer;
      return [name, lora.parameters.get('lora_A.weight')!.shape[0], lora.scaling];
    });
    expect(got).toEqual([
      ['encoder.q_proj', 2, 4 / Math.sqrt(2)],
      ['encoder.v_proj', 3, 4 / Math.sqrt(3)],
      ['decoder.q_proj', 5, 4 / Math.sqrt(5)],
      ['decoder.v_proj', 5, 4 / Math.sqrt(5)],
      ['head', 2, 9 / Math.sqrt(2)],
    ]);
  });

  it("LoRA initialises as PEFT's init_lora_weights says: true, false and 'gaussian'", () => {
    const stats = (t: tera.Tensor) => {
      const v = t.toFloat32Array();
      return { maxAbs: Math.max(...v.map(Math.abs)), rms: Math.sqrt(v.reduce((s, x) => s + x * x, 0) / v.length) };
    };
    const layerOf = (init: true | false | 'gaussian') => {
      const peft = inject(
        new nn.Sequential(new nn.Linear(400, 300, { seed: 1 })),
        new tera.LoraConfig({ targetModules: ['0'], r: 16, initLoraWeights: init }),
      );
      const lora = peft.adapterLayers()[0][1].adapter('default')!;
      return {
        a: stats(lora.parameters.get('lora_A.weight')!.data),
        b: stats(lora.parameters.get('lora_B.weight')!.data),
      };
    };
    const kaiming = layerOf(true); // A ~ U(+-1/sqrt(in)), B = 0
    expect(kaiming.b.maxAbs).toBe(0);
    expect(isClose(kaiming.a.maxAbs, 1 / Math.sqrt(400), 0.01, 0)).toBe(true);
    const random = layerOf(false); // B ~ U(+-1/sqrt(r)) too: not a no-op
    expect(isClose(random.b.maxAbs, 1 / Math.sqrt(16), 0.01, 0)).toBe(true);
    const gaussian = layerOf('gaussian'); // A ~ N(0, (1/r)^2), B = 0
    expect([gaussian.b.maxAbs, isClose(gaussian.a.rms, 1 / 16, 0.03, 0)]).toEqual([0, true]);
  });

  it("VeRA's generated projections are Kaiming-uniform with PEFT's bound sqrt(6 / fan_in)", () => {
    const peft = inject(
      new nn.Sequential(new nn.Linear(96, 64, { seed: 2 })),
      new tera.VeraConfig({ targetModules: ['0'] }),
    );
    const vera = peft.adapterLayers()[0][1].adapter('default') as tera.adapters.VeraLayer;
    // A [256, 96]: fan_in 96; B [64, 256]: fan_in r = 256 (torch's fan_in of a [rows, cols] tensor is cols).
    for (const [t, fanIn] of [
      [vera.projectionA, 96],
      [vera.projectionB, 256],
    ] as const) {
      const v = t.toFloat32Array();
      const bound = Math.sqrt(6 / fanIn);
      const maxAbs = Math.max(...v.map(Math.abs));
      const meanSquare = v.reduce((s, x) => s + x * x, 0) / v.length;
      expect([
        maxAbs <= bound,
        isClose(maxAbs, bound, 0.01, 0),
        isClose(meanSquare, (bound * bound) / 3, 0.05, 0),
      ]).toEqual([true, true, true]);
    }
  });
});

class Block extends nn.Module {
  readonly q_proj = this.registerModule('q_proj', new nn.Linear(4, 4, { seed: 1 }));
  readonly v_proj = this.registerModule('v_proj', new nn.Linear(4, 4, { seed: 2 }));
  forward(x: tera.autograd.Input): Var {
    return this.v_proj.forward(ag.tanh(this.q_proj.forward(x)));
  }
}

class TwoBlocks extends nn.Module {
  readonly encoder = this.registerModule('encoder', new Block());
  readonly decoder = this.registerModule('decoder', new Block());
  readonly head = this.registerModule('head', new nn.Linear(4, 2, { seed: 3 }));
  forward(x: tera.autograd.Input): Var {
    return this.head.forward(this.decoder.forward(this.encoder.forward(x)));
  }
}

describe('target matching (PEFT rules)', () => {
  const adapted = (targetModules: tera.adapters.TargetModules, excludeModules?: tera.adapters.TargetModules) => {
    const peft = inject(new TwoBlocks(), new tera.LoraConfig({ targetModules, excludeModules, r: 2 }));
    return peft.adapterLayers().map(([name]) => name);
  };

  it('matches exact names, dotted suffixes, regex strings and RegExps, minus exclusions', () => {
    expect(adapted(['head'])).toEqual(['head']);
    expect(adapted(['q_proj'])).toEqual(['encoder.q_proj', 'decoder.q_proj']);
    expect(adapted(['encoder.v_proj', 'head'])).toEqual(['encoder.v_proj', 'head']);
    expect(adapted('.*_proj')).toEqual(['encoder.q_proj', 'encoder.v_proj', 'decoder.q_proj', 'decoder.v_proj']);
    expect(adapted(/encoder\..*|head/)).toEqual(['encoder.q_proj', 'encoder.v_proj', 'head']);
    expect(adapted(['q_proj', 'v_proj'], ['decoder.q_proj'])).toEqual([
      'encoder.q_proj',
      'encoder.v_proj',
      'decoder.v_proj',
    ]);
    expect(adapted('.*_proj', 'decoder\\..*')).toEqual(['encoder.q_proj', 'encoder.v_proj']);
  });

  it('refuses a pattern that matches nothing, listing the modules that exist', () => {
    const model = new TwoBlocks();
    const names = model.namedParameters().map(([n]) => n);
    const message =
      "target module 'k_proj' matches no module; the model has: encoder (Block), encoder.q_proj (Linear), " +
      'encoder.v_proj (Linear), decoder (Block), decoder.q_proj (Linear), decoder.v_proj (Linear), head (Linear)';
    expect(() => inject(model, new tera.LoraConfig({ targetModules: ['q_proj', 'k_proj'] }))).toThrow(message);
    // A regex must match the whole name: 'proj' alone matches nothing.
    expect(() => inject(model, new tera.TeraConfig({ targetModules: 'proj' }))).toThrow(
      /target module 'proj' matches no module/,
    );
    expect(() => inject(model, new tera.LoraConfig({ targetModules: ['encoder'] }))).toThrow(
      /'encoder' is a Block; adapters go on Linear layers only/,
    );
    expect(() => inject(model, new tera.LoraConfig({ targetModules: ['head'], excludeModules: ['head'] }))).toThrow(
      /excludeModules removes every module/,
    );
    expect(() => new tera.LoraConfig({ targetModules: /head/i })).toThrow(/RegExp flags \(\/i\) are not supported/);
    expect(() => new tera.LoraConfig({ targetModules: [] })).toThrow(/targetModules must be a non-empty list/);
    // Nothing above changed the model.
    expect(model.namedParameters().map(([n]) => n)).toEqual(names);
    expect(model.trainableParameters()).toHaveLength(names.length);
  });

  it('refuses a second adapter under a name in use, and names with dots', () => {
    const peft = inject(new TwoBlocks(), new tera.LoraConfig({ targetModules: ['head'] }));
    expect(() => peft.addAdapter('default', new tera.VeraConfig({ targetModules: ['head'] }))).toThrow(
      /already has an adapter named 'default'/,
    );
    expect(() => peft.addAdapter('a.b', new tera.VeraConfig({ targetModules: ['head'] }))).toThrow(/without dots/);
  });
});

describe('gradients against float64 finite differences', () => {
  for (const method of METHOD_CASES) {
    it(`${method.name} on one Linear: at initialisation, at random adapter values, with a trainable base`, () => {
      const peft = inject(baseMlp([6, 4]), method.config(['0']));
      checkGradients(peft, 6, 3);
      randomise(peft.trainableParameters());
      checkGradients(peft, 6, 3);
      // Base weights made trainable too (full fine-tuning plus an adapter): dW0 and db as well.
      peft.model.getSubmodule('0.base_layer').requiresGrad(true);
      checkGradients(peft, 6, 3);
    });
  }

  it.each(['merged', 'factored'] as const)(
    'an MLP carrying TeRA, VeRA and LoRA at once (chained backward, shared TeRA workspace), %s path',
    (evaluation) => {
      // Layers '2' and '4' share one TeRA signature and workspace: on the merged path the
      // backward of '2' must rebuild its effective weight after '4' overwrote the buffer; on
      // the factored path both recompute their activations (two sharers cannot keep them in
      // a workspace of 8 x 8 floats with 3 rows of 8 + 8 each).
      const peft = inject(baseMlp([6, 8, 8, 8, 4]), new tera.VeraConfig({ targetModules: ['0'], r: 3 }), 'vera');
      peft.addAdapter('tera', new tera.TeraConfig({ targetModules: ['2', '4'], alpha: 0.5, evaluation }));
      peft.addAdapter('lora', new tera.LoraConfig({ targetModules: ['6'], r: 2 }));
      peft.setAdapter(['vera', 'tera', 'lora']);
      expect(adapters.workspaceCount()).toBe(1);
      checkGradients(peft, 6, 3);
      randomise(peft.trainableParameters());
      const spy = jest.spyOn(native(), 'tuckerReconstruct');
      try {
        checkGradients(peft, 6, 3);
        // merged: two forwards, one rebuild in backward; factored: dW is never formed
        expect(spy).toHaveBeenCalledTimes(evaluation === 'merged' ? 3 : 0);
      } finally {
        spy.mockRestore();
      }
    },
  );

  it.each([
    ['merged', 3], // y = x W_eff^T, dx = dY W_eff, Z = alpha (dY K_out)^T (x K_in)
    ['factored', 4], // v = u G^T, y += x W0^T, du = dv G, dx += dY W0
  ] as const)('TeRA on the %s path costs %i GEMMs per step and no dW0 GEMM', (evaluation, gemms) => {
    const peft = inject(baseMlp([16, 16]), new tera.TeraConfig({ targetModules: ['0'], evaluation }));
    const x = new ag.Var(tera.tensor(randomArray(32, next), [2, 16]), { requiresGrad: true });
    const spy = jest.spyOn(native(), 'gemm');
    try {
      ag.sum(peft.forward(x)).backward();
      expect(spy).toHaveBeenCalledTimes(gemms);
    } finally {
      spy.mockRestore();
    }
  });
});

describe('merge, unmerge, disable', () => {
  const x = tera.tensor(randomArray(5 * 12, next), [5, 12]);

  for (const method of METHOD_CASES) {
    it(`${method.name}: starts at the base output, disables to it exactly, merges, and unmerges to W0`, () => {
      const reference = baseMlp([12, 16, 6]);
      const base = reference.forward(x).toFloat32Array();
      const peft = inject(baseMlp([12, 16, 6]), method.config(['0', '2']));
      expect(peft.forward(x).toFloat32Array()).toEqual(base); // dW = 0 exactly at initialisation

      randomise(peft.trainableParameters());
      const w0 = peft.adapterLayers().map(([, l]) => l.baseLayer.weight.toFloat32Array());
      const adapted = peft.forward(x).toFloat32Array();
      expectDiffer(adapted, base, 1e-2);
      expect(peft.disableAdapters(() => peft.forward(x).toFloat32Array())).toEqual(base);
      expect(peft.forward(x).toFloat32Array()).toEqual(adapted);
      const expectedMerged = peft.adapterLayers().map(([, l]) => effectiveWeight64(peft, l, f64));

      peft.mergeAdapter();
      expect(peft.merged).toBe(true);
      peft.adapterLayers().forEach(([, l], i) => {
        expectMaxAbsDiff(l.baseLayer.weight.toFloat32Array(), expectedMerged[i], 1e-5);
      });
      expectMaxAbsDiff(peft.forward(x).toFloat32Array(), adapted, 1e-5);

      peft.unmergeAdapter();
      peft.adapterLayers().forEach(([, l], i) => {
        expectMaxAbsDiff(l.baseLayer.weight.toFloat32Array(), w0[i], 1e-6);
      });
      expectMaxAbsDiff(peft.forward(x).toFloat32Array(), adapted, 1e-6);

      const plain = peft.mergeAndUnload();
      expect(plain.namedModules().some(([, m]) => m instanceof adapters.AdapterLinear)).toBe(false);
      expect(plain.namedParameters().map(([n]) => n)).toEqual(['0.weight', '0.bias', '2.weight', '2.bias']);
      expectMaxAbsDiff(plain.forward(x).toFloat32Array(), adapted, 1e-5);
    });
  }

  it('safe merge checks every merged weight on a copy first and merges nothing if one is not finite', () => {
    const peft = inject(baseMlp([12, 16, 6]), new tera.LoraConfig({ targetModules: ['0', '2'], r: 2 }));
    randomise(peft.trainableParameters());
    const w0 = peft.adapterLayers().map(([, l]) => l.baseLayer.weight.toFloat32Array());
    // Layer '2' is broken: its update overflows float32.
    const broken = peft.model.getSubmodule('2') as tera.adapters.AdapterLinear;
    broken
      .adapter('default')!
      .parameters.get('lora_B.weight')!
      .data.set(new Float32Array(6 * 2).fill(3e38));
    expect(() => peft.mergeAdapter(null, { safeMerge: true })).toThrow(
      /safe merge refused, nothing was merged .*\n {2}- '2': merging 'default' makes \d+ of 96 weights non-finite/,
    );
    expect(peft.merged).toBe(false);
    peft.adapterLayers().forEach(([, l], i) => expect(l.baseLayer.weight.toFloat32Array()).toEqual(w0[i]));
    expect(() => peft.mergeAndUnload({ safeMerge: true })).toThrow(/safe merge refused/);
    expect(peft.model.getSubmodule('0')).toBeInstanceOf(adapters.AdapterLinear);

    // Without the check the merge goes through, as PEFT's default does.
    peft.mergeAdapter();
    expect(broken.baseLayer.weight.toFloat32Array().every(Number.isFinite)).toBe(false);
  });

  it('unmerge restores W0 to within 2^-24 (|W0 + dW| + |W0|), the two float32 roundings docs/api-adapters.md states', () => {
    for (const config of [
      new tera.LoraConfig({ targetModules: ['0', '2'], r: 2, alpha: 2e6 }),
      new tera.TeraConfig({ targetModules: ['0', '2'], alpha: 1e6 }),
      new tera.VeraConfig({ targetModules: ['0', '2'], r: 4, dInitial: 1e3 }),
    ]) {
      const peft = inject(baseMlp([12, 16, 6]), config);
      randomise(peft.trainableParameters());
      const layers = peft.adapterLayers().map(([, l]) => l.baseLayer.weight);
      const w0 = layers.map((w) => w.toFloat32Array());
      peft.mergeAdapter();
      const merged = layers.map((w) => w.toFloat32Array());
      peft.unmergeAdapter();
      layers.forEach((w, i) => {
        const restored = w.toFloat32Array();
        const magnitude = merged[i].map((m, j) => Math.abs(m) + Math.abs(w0[i][j]));
        // 1 + 2^-20 covers |W0 + dW| vs the rounded |merged| it is measured by.
        expectAllClose(restored, w0[i], { rtol: 2 ** -24 * (1 + 2 ** -20), atol: 0, magnitude });
        expectDiffer(restored, w0[i], 0); // at this scale the roundings really show
      });
      peft.unload();
      live.splice(live.indexOf(peft), 1);
    }
  });

  it('disabling a merged adapter unmerges it first, with a warning', () => {
    const reference = baseMlp([12, 16, 6]).forward(x).toFloat32Array();
    const peft = inject(baseMlp([12, 16, 6]), new tera.LoraConfig({ targetModules: ['0'], r: 2 }));
    randomise(peft.trainableParameters());
    peft.mergeAdapter();
    const warn = jest.spyOn(process, 'emitWarning').mockImplementation(() => undefined);
    try {
      const out = peft.disableAdapters(() => peft.forward(x).toFloat32Array());
      expectMaxAbsDiff(out, reference, 1e-6);
      expect(warn).toHaveBeenCalledWith(expect.stringMatching(/unmerging merged adapters/));
    } finally {
      warn.mockRestore();
    }
    expect(peft.merged).toBe(false);
  });

  it('re-enables the adapters when the scope throws or its promise settles', async () => {
    const peft = inject(baseMlp([12, 16, 6]), new tera.LoraConfig({ targetModules: ['0'] }));
    const layer = peft.adapterLayers()[0][1];
    expect(() =>
      peft.disableAdapters(() => {
        throw new Error('boom');
      }),
    ).toThrow('boom');
    expect(layer.disabled).toBe(false);
    const pending = peft.disableAdapters(async () => layer.disabled);
    expect(layer.disabled).toBe(true);
    expect(await pending).toBe(true);
    expect(layer.disabled).toBe(false);
  });
});

describe('several adapters', () => {
  it('switches, trains only the active one, and deletes cleanly', () => {
    const x = tera.tensor(randomArray(3 * 8, next), [3, 8]);
    const peft = inject(baseMlp([8, 8, 4]), new tera.LoraConfig({ targetModules: ['0', '2'], r: 2 }), 'a');
    peft.addAdapter('b', new tera.TeraConfig({ targetModules: ['0'] }));
    expect(peft.activeAdapter).toBe('a'); // adding does not switch, as in PEFT
    expect(peft.namedParameters().map(([n]) => n)).toEqual([
      '0.lora_A.a.weight',
      '0.lora_B.a.weight',
      '0.tera_lambda_1.b',
      '0.tera_lambda_2.b',
      '0.base_layer.weight',
      '0.base_layer.bias',
      '2.lora_A.a.weight',
      '2.lora_B.a.weight',
      '2.base_layer.weight',
      '2.base_layer.bias',
    ]);
    randomise([...peft.parameters().filter((p) => p.requiresGrad)]);
    const outA = peft.forward(x).toFloat32Array();
    peft.setAdapter('b');
    expect(peft.trainableParameters().map((p) => p.size)).toEqual([8, 8]);
    randomise(peft.trainableParameters());
    const outB = peft.forward(x).toFloat32Array();
    expectDiffer(outA, outB, 1e-3);
    expect(() => peft.setAdapter(['a', 'b'])).toThrow(/adapters 'a' and 'b' are both active on '0'/);
    expect(() => peft.setAdapter('c')).toThrow(/no adapter named 'c'; adapters: a, b/);
    peft.setAdapter('a');
    expect(peft.forward(x).toFloat32Array()).toEqual(outA);

    peft.deleteAdapter('a');
    expect(peft.activeAdapter).toBe('b');
    expect(peft.model.getSubmodule('2')).toBeInstanceOf(nn.Linear); // no adapter left there
    expect(peft.forward(x).toFloat32Array()).toEqual(outB);
    peft.deleteAdapter('b');
    expect(peft.activeAdapter).toBeNull();
    expect(peft.model.getSubmodule('0')).toBeInstanceOf(nn.Linear);
    expect(adapters.sharedFactorCount()).toBe(0);
  });
});

describe('shared TeRA factors', () => {
  it('gives every layer of one signature the same native storage, freed with the last user', () => {
    const peft = inject(baseMlp([16, 16, 16, 8]), new tera.TeraConfig({ targetModules: ['0', '2', '4'] }));
    const layers = peft.adapterLayers().map(([, l]) => l.adapter('default') as tera.adapters.TeraLayer);
    expect(layers[0].shared.core.storage).toBe(layers[1].shared.core.storage);
    expect(layers[0].shared.factors[1].storage).toBe(layers[1].shared.factors[1].storage);
    expect(layers[2].shared).not.toBe(layers[0].shared); // [8, 16] has another signature
    expect(adapters.sharedFactorCount()).toBe(2);
    expect(adapters.workspaceCount()).toBe(2); // one per layer size, not per layer
    // Per layer, only the vectors are owned: sum of R_n floats.
    expect(layers.map((l) => [...l.parameters.values()].reduce((n, p) => n + p.size, 0))).toEqual([32, 32, 24]);

    peft.addAdapter('again', new tera.TeraConfig({ targetModules: ['0'] }));
    expect(adapters.sharedFactorCount()).toBe(2); // same seed and signature: shared again
    peft.addAdapter('other', new tera.TeraConfig({ targetModules: ['0'], seed: 9 }));
    expect(adapters.sharedFactorCount()).toBe(3);
    peft.deleteAdapter('other');
    peft.deleteAdapter('default');
    expect(adapters.sharedFactorCount()).toBe(1);
    expect(layers[0].shared.core.disposed).toBe(false); // 'again' still uses it
    peft.deleteAdapter('again');
    expect(adapters.sharedFactorCount()).toBe(0);
    expect(layers[0].shared.core.disposed).toBe(true);
  });

  it('generates G ~ N(0, 1/d_in) and A_n ~ N(0, 1/R_n), reproducibly from the seed', () => {
    const make = (seed: number) =>
      inject(baseMlp([64, 64]), new tera.TeraConfig({ targetModules: ['0'], seed }))
        .adapterLayers()[0][1]
        .adapter('default') as tera.adapters.TeraLayer;
    const layer = make(4);
    const core = layer.shared.core.toFloat32Array();
    const std = Math.sqrt(core.reduce((s, v) => s + v * v, 0) / core.length);
    expect(layer.shared.shape.ranks).toEqual([64, 64]);
    expect(Math.abs(std - 1 / 8)).toBeLessThan(0.01);
    const a1 = layer.shared.factors[0].toFloat32Array();
    expect(Math.abs(Math.sqrt(a1.reduce((s, v) => s + v * v, 0) / a1.length) - Math.sqrt(1 / 64))).toBeLessThan(0.01);
    expect(
      layer.lambdas.map((l) => Array.from(l.toFloat32Array()).every((v) => v === (l === layer.lambdas[0] ? 0 : 1))),
    ).toEqual([true, true]);
    expect(make(4).shared).toBe(layer.shared);
    expect(Array.from(make(5).shared.core.toFloat32Array().subarray(0, 4))).not.toEqual(
      Array.from(core.subarray(0, 4)),
    );
  });
});

describe('printTrainableParameters', () => {
  it("prints PEFT's line with the counts", () => {
    const log = jest.spyOn(console, 'log').mockImplementation(() => undefined);
    try {
      const peft = inject(baseMlp([1024, 1024]), new tera.TeraConfig({ targetModules: ['0'] }));
      // 1024 = 32 x 32 per side: sum R_n = 2 * 64 = 128 trainable; 1024 * 1024 + 1024 base.
      const line = peft.printTrainableParameters();
      expect(line).toBe('trainable params: 128 || all params: 1,049,728 || trainable%: 0.0122');
      expect(log).toHaveBeenCalledWith(line);
      expect(peft.getNbTrainableParameters()).toEqual([128, 1049728]);
    } finally {
      log.mockRestore();
    }
  });
});

describe('training', () => {
  // A frozen base MLP and targets from another (teacher) network: the base is far
  // off, and only the adapter can close the gap.
  const rows = 64;
  const x = tera.tensor(randomArray(rows * 8, next), [rows, 8]);
  const teacher = baseMlp([8, 16, 4], 99);
  const labels = (() => {
    const logits = teacher.forward(x).toFloat32Array();
    return Array.from({ length: rows }, (_, r) => {
      const row = Array.from(logits.subarray(r * 4, r * 4 + 4));
      return row.indexOf(Math.max(...row));
    });
  })();

  for (const method of METHOD_CASES) {
    it(`${method.name} lowers the loss of a frozen MLP on a shifted task`, () => {
      const peft = inject(baseMlp([8, 16, 4]), method.config(['0', '2']));
      const frozen = peft.parameters().filter((p) => !p.requiresGrad);
      const frozenBefore = frozen.map((p) => Array.from(p.toFloat32Array()));
      const opt = new tera.AdamW(peft.trainableParameters(), { lr: method.lr, weightDecay: 0 });
      const losses: number[] = [];
      for (let step = 0; step < 60; step++) {
        losses.push(
          ag.tidy(() => {
            const loss = ag.softmaxCrossEntropy(peft.forward(x), labels);
            loss.backward();
            return loss.item();
          }),
        );
        opt.step();
        opt.zeroGrad();
      }
      expect(losses[0]).toBeGreaterThan(1);
      expect(losses[59]).toBeLessThan(0.7 * losses[0]);
      expect(frozen.map((p) => Array.from(p.toFloat32Array()))).toEqual(frozenBefore);
      opt.dispose();
    });
  }
});
