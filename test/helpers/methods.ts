/**
 * The method matrix, as PEFT's tests/test_custom_models.py: one row per
 * (method, setting) that every adapter test and adapter-file test iterates,
 * so a new method is one row here (and its float64 update in DELTA_64).
 */
import * as tera from '../../lib';
import { gemm as gemm64, reconstruct } from './reference';

type Parameter = tera.nn.Parameter;
type AdapterConfig = tera.adapters.AdapterConfig;

export interface MethodCase {
  /** Names the row in test titles. */
  name: string;
  /** The row's config for the given targets. */
  config(targetModules: tera.adapters.TargetModules): AdapterConfig;
  /** AdamW learning rate for the short training runs. */
  lr: number;
}

export const METHOD_CASES: readonly MethodCase[] = [
  { name: 'TeRA', config: (t) => new tera.TeraConfig({ targetModules: t, alpha: 0.7, seed: 3 }), lr: 0.05 },
  {
    name: 'TeRA on the merged path, modes of at most 8 (more modes per dimension)',
    config: (t) =>
      new tera.TeraConfig({ targetModules: t, alpha: 0.7, seed: 3, maxModeSize: 8, maxRank: 8, evaluation: 'merged' }),
    lr: 0.05,
  },
  {
    name: 'TeRA on the factored path, ranks below the modes, modes of at most 16',
    config: (t) =>
      new tera.TeraConfig({
        targetModules: t,
        alpha: 0.7,
        seed: 4,
        maxModeSize: 16,
        maxRank: 2,
        evaluation: 'factored',
      }),
    lr: 0.05,
  },
  {
    name: 'TeRA with saved factors',
    config: (t) => new tera.TeraConfig({ targetModules: t, saveFactors: true }),
    lr: 0.05,
  },
  { name: 'VeRA', config: (t) => new tera.VeraConfig({ targetModules: t, r: 8, seed: 3 }), lr: 0.05 },
  {
    name: 'VeRA with saved projections',
    config: (t) => new tera.VeraConfig({ targetModules: t, r: 16, saveProjection: true }),
    lr: 0.05,
  },
  { name: 'LoRA', config: (t) => new tera.LoraConfig({ targetModules: t, r: 4, alpha: 3 }), lr: 0.02 },
];

/** Reads a parameter's value, so finite differences can substitute perturbed ones. */
export type ValueOf = (p: Parameter) => Float64Array;

export function f64(t: tera.Tensor | tera.autograd.Var): Float64Array {
  return Float64Array.from(t.toFloat32Array());
}

/** dW [out, in] of one adapter layer in float64, straight from each method's definition (docs/math.md, PEFT). */
export const DELTA_64: Record<
  tera.adapters.PeftType,
  (adapter: tera.adapters.MethodLayer, out: number, inp: number, value: ValueOf) => Float64Array
> = {
  TERA: (adapter, _out, _inp, value) => {
    const layer = adapter as tera.adapters.TeraLayer;
    const { core, factors, shape } = layer.shared;
    const scales = layer.lambdas.map((l) => value(l));
    return reconstruct(f64(core), shape.modes, shape.ranks, factors.map(f64), scales, layer.alpha).value;
  },
  VERA: (adapter, out, inp, value) => {
    const layer = adapter as tera.adapters.VeraLayer;
    const a = f64(layer.projectionA);
    const b = f64(layer.projectionB);
    const lb = value(layer.parameters.get('vera_lambda_b')!);
    const ld = value(layer.parameters.get('vera_lambda_d')!);
    const r = ld.length;
    const bScaled = b.map((v, i) => v * lb[Math.floor(i / r)] * ld[i % r]);
    return gemm64(bScaled, a, out, inp, r, false, false, 1, 0, null).value;
  },
  LORA: (adapter, out, inp, value) => {
    const layer = adapter as tera.adapters.LoraLayer;
    const a = value(layer.parameters.get('lora_A.weight')!);
    const b = value(layer.parameters.get('lora_B.weight')!);
    return gemm64(b, a, out, inp, a.length / inp, false, false, layer.scaling, 0, null).value;
  },
};

/** W0 + dW of an adapted layer (its active, unmerged adapter) in float64, reading parameters through `value`. */
export function effectiveWeight64(
  peft: tera.PeftModel,
  layer: tera.adapters.AdapterLinear,
  value: ValueOf,
): Float64Array {
  const w = value(layer.baseLayer.weight).slice();
  const name = layer.activeAdapters.find((n) => !layer.mergedAdapters.includes(n));
  if (name === undefined) return w;
  const delta = DELTA_64[peft.peftConfig[name].peftType];
  const dW = delta(layer.adapter(name)!, layer.outFeatures, layer.inFeatures, value);
  return w.map((v, i) => v + dW[i]);
}
