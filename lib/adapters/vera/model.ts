/**
 * VeRA's method descriptor and its shared projections: A [r, maxIn] and
 * B [maxOut, r] are generated once per adapter at the largest targeted shape
 * (Kaiming-uniform, as PEFT) and each layer uses the top-left slice
 * A[:, :in], B[:out, :]. Slices are copied once per distinct size and shared.
 */
import type { Linear } from '../../nn/layers';
import { kaimingUniform } from '../../nn/init';
import type { Device } from '../../tensor/device';
import { type Tensor, tensor } from '../../tensor/tensor';
import { randomStream } from '../config';
import { type AdapterMethod, type LayerPlan, type MethodLayer, type TensorSpec, createAll } from '../method';
import { VeraConfig } from './config';
import { VeraLayer } from './layer';

export const VERA_A_KEY = 'base_model.vera_A';
export const VERA_B_KEY = 'base_model.vera_B';

function largest(plans: readonly LayerPlan[]): { maxIn: number; maxOut: number } {
  return {
    maxIn: Math.max(...plans.map((p) => p.base.inFeatures)),
    maxOut: Math.max(...plans.map((p) => p.base.outFeatures)),
  };
}

/** The frozen A and B of one VeRA adapter, freed when the last layer using them is. */
export class VeraProjections {
  readonly r: number;
  readonly a: Tensor;
  readonly b: Tensor;
  readonly #saveProjection: boolean;
  readonly #slicesA = new Map<number, Tensor>();
  readonly #slicesB = new Map<number, Tensor>();
  #users = 0;

  constructor(config: VeraConfig, maxIn: number, maxOut: number, device: Device) {
    this.r = config.r;
    const seed = BigInt(config.seed);
    this.a = kaimingUniform([config.r, maxIn], maxIn, { seed, stream: randomStream('vera/A') }, device);
    this.b = kaimingUniform([maxOut, config.r], config.r, { seed, stream: randomStream('vera/B') }, device);
    this.#saveProjection = config.saveProjection;
  }

  /** Counts a user (a layer); the tensors are freed when the last one releases them. */
  acquire(): void {
    this.#users++;
  }

  release(): void {
    if (--this.#users > 0) return;
    this.a.dispose();
    this.b.dispose();
    for (const t of [...this.#slicesA.values(), ...this.#slicesB.values()]) t.dispose();
  }

  /** A[:, :inFeatures] (A itself at the full width). */
  sliceA(inFeatures: number): Tensor {
    const [r, maxIn] = this.a.shape;
    if (inFeatures === maxIn) return this.a;
    return this.#cached(this.#slicesA, inFeatures, () => {
      const all = this.a.toFloat32Array();
      const out = new Float32Array(r * inFeatures);
      for (let row = 0; row < r; row++) out.set(all.subarray(row * maxIn, row * maxIn + inFeatures), row * inFeatures);
      return tensor(out, [r, inFeatures], { device: this.a.device });
    });
  }

  /** B[:outFeatures, :] (contiguous rows). */
  sliceB(outFeatures: number): Tensor {
    const [maxOut, r] = this.b.shape;
    if (outFeatures === maxOut) return this.b;
    return this.#cached(this.#slicesB, outFeatures, () =>
      tensor(this.b.toFloat32Array().subarray(0, outFeatures * r), [outFeatures, r], { device: this.b.device }),
    );
  }

  #cached(cache: Map<number, Tensor>, size: number, make: () => Tensor): Tensor {
    let slice = cache.get(size);
    if (slice === undefined) {
      slice = make();
      cache.set(size, slice);
    }
    return slice;
  }

  /** The full A and B, by file key. */
  frozen(): Record<string, Tensor> {
    return { [VERA_A_KEY]: this.a, [VERA_B_KEY]: this.b };
  }

  /** The tensors a file stores when saveProjection is set. */
  saved(): Record<string, Tensor> {
    return this.#saveProjection ? this.frozen() : {};
  }
}

export const veraMethod: AdapterMethod<VeraConfig> = {
  peftType: 'VERA',

  layerTensors(config: VeraConfig, base: Linear): TensorSpec[] {
    return [
      ['vera_lambda_b', [base.outFeatures]],
      ['vera_lambda_d', [config.r]],
    ];
  },

  savedSharedShapes(config: VeraConfig, plans: readonly LayerPlan[]): Record<string, number[]> {
    if (!config.saveProjection) return {};
    const { maxIn, maxOut } = largest(plans);
    return { [VERA_A_KEY]: [config.r, maxIn], [VERA_B_KEY]: [maxOut, config.r] };
  },

  createLayers(config: VeraConfig, plans: readonly LayerPlan[]): MethodLayer[] {
    const device = plans[0].base.weight.device;
    const elsewhere = plans.find((p) => p.base.weight.device !== device);
    if (elsewhere !== undefined) {
      throw new Error(
        `VeRA shares one A and B between its layers, but '${elsewhere.moduleName}' is on ${elsewhere.base.weight.device} ` +
          `and '${plans[0].moduleName}' on ${device}; move the model to one device first`,
      );
    }
    const { maxIn, maxOut } = largest(plans);
    const projections = new VeraProjections(config, maxIn, maxOut, device);
    projections.acquire(); // held while the layers are built, so a failure frees everything
    try {
      return createAll(plans, ({ base }) => new VeraLayer(projections, base, config.dInitial));
    } finally {
      projections.release();
    }
  },

  configFromJson: (json) => VeraConfig.fromJson(json),
};
