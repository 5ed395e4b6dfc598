/**
 * TeRA's method descriptor and the registry of frozen factors. The core G and
 * factors A_n exist once per (device, seed, outModes, inModes, ranks): every
 * layer (of any adapter) with that signature holds the same tensors, counted
 * by reference, and the last layer to go frees them.
 *
 * Generation (docs/math.md): element k of each tensor is Philox4x32-10 of
 * counter k under key `seed`, on stream FNV-1a-64("tera/<signature>/<id>")
 * with id "G" or "A<n>" (n from 1): G ~ N(0, 1/d_in), A_n ~ N(0, 1/R_n).
 */
import type { Linear } from '../../nn/layers';
import { normal } from '../../random';
import type { Device } from '../../tensor/device';
import type { Tensor } from '../../tensor/tensor';
import { randomStream } from '../config';
import { type AdapterMethod, type LayerPlan, type MethodLayer, type TensorSpec, createAll } from '../method';
import { TeraConfig, type TeraShape, teraShape } from './config';
import { TeraLayer } from './layer';

/** Names a (modes, ranks) signature in keys and file names: "16x16x16_16x16x16_r16x16x16x16x16x16". */
export function signatureName(shape: TeraShape): string {
  return `${shape.outModes.join('x')}_${shape.inModes.join('x')}_r${shape.ranks.join('x')}`;
}

/** File keys of the frozen tensors of a signature (used when saveFactors is set). */
export function factorKeys(shape: TeraShape): { core: string; factors: string[] } {
  const name = signatureName(shape);
  return {
    core: `base_model.tera_core.${name}`,
    factors: shape.modes.map((_, n) => `base_model.tera_factor_${n + 1}.${name}`),
  };
}

export class TeraFactors {
  readonly shape: TeraShape;
  readonly core: Tensor;
  readonly factors: Tensor[];
  readonly #key: string;
  #users = 0;

  constructor(key: string, seed: number, shape: TeraShape, device: Device) {
    this.#key = key;
    this.shape = shape;
    const name = signatureName(shape);
    const dIn = shape.inModes.reduce((a, b) => a * b, 1);
    const seedBig = BigInt(seed);
    this.core = normal(shape.ranks, {
      seed: seedBig,
      key: randomStream(`tera/${name}/G`),
      std: 1 / Math.sqrt(dIn),
      device,
    });
    this.factors = [];
    try {
      shape.modes.forEach((mode, n) => {
        const stream = randomStream(`tera/${name}/A${n + 1}`);
        const std = 1 / Math.sqrt(shape.ranks[n]);
        this.factors.push(normal([mode, shape.ranks[n]], { seed: seedBig, key: stream, std, device }));
      });
    } catch (error) {
      this.#free();
      throw error;
    }
  }

  /** Drops one user; the last one frees the tensors and removes the entry. */
  release(): void {
    if (--this.#users > 0) return;
    if (registry.get(this.#key)?.deref() === this) registry.delete(this.#key);
    this.#free();
  }

  #free(): void {
    this.core.dispose();
    this.factors.forEach((f) => f.dispose());
  }

  /** @internal */
  addUser(): this {
    this.#users++;
    return this;
  }
}

// Held weakly, so that a model dropped without unload() does not pin its factors.
const registry = new Map<string, WeakRef<TeraFactors>>();

/** The shared factors of a signature (made on first use); the caller must release() them. */
export function acquireFactors(seed: number, shape: TeraShape, device: Device): TeraFactors {
  const key = `${device}|${seed}|${signatureName(shape)}`;
  let entry = registry.get(key)?.deref();
  if (entry === undefined) {
    entry = new TeraFactors(key, seed, shape, device);
    registry.set(key, new WeakRef(entry));
  }
  return entry.addUser();
}

/** How many factor sets are alive now (one per signature in use). */
export function sharedFactorCount(): number {
  for (const [key, ref] of registry) if (ref.deref() === undefined) registry.delete(key);
  return registry.size;
}

function shapeOf(config: TeraConfig, base: Linear, moduleName: string): TeraShape {
  return teraShape(config, base.outFeatures, base.inFeatures, moduleName);
}

export const teraMethod: AdapterMethod<TeraConfig> = {
  peftType: 'TERA',

  layerTensors(config: TeraConfig, base: Linear, moduleName: string): TensorSpec[] {
    return shapeOf(config, base, moduleName).ranks.map((r, n) => [`tera_lambda_${n + 1}`, [r]]);
  },

  savedSharedShapes(config: TeraConfig, plans: readonly LayerPlan[]): Record<string, number[]> {
    const out: Record<string, number[]> = {};
    if (!config.saveFactors) return out;
    for (const plan of plans) {
      const shape = shapeOf(config, plan.base, plan.moduleName);
      const keys = factorKeys(shape);
      out[keys.core] = [...shape.ranks];
      keys.factors.forEach((key, n) => (out[key] = [shape.modes[n], shape.ranks[n]]));
    }
    return out;
  },

  createLayers(config: TeraConfig, plans: readonly LayerPlan[]): MethodLayer[] {
    return createAll(plans, ({ base, moduleName }) => new TeraLayer(config, shapeOf(config, base, moduleName), base));
  },

  configFromJson: (json) => TeraConfig.fromJson(json),
};
