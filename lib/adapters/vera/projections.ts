/**
 * VeRA's frozen, shared projections: A [r, maxIn] and B [maxOut, r], made once
 * per (device, seed, r, largest targeted shape) and held in the shared registry,
 * so every layer of an adapter (and every adapter with the same key) uses the
 * same pair. Each layer uses the top-left slice A[:, :in], B[:out, :]; slices
 * are copied once per distinct size and shared too.
 */
import { kaimingUniform } from '../../nn/init';
import type { Device } from '../../tensor/device';
import { type Tensor, tensor } from '../../tensor/tensor';
import { randomStream } from '../config';
import { type Shared, SharedRegistry } from '../registry';

export const VERA_A_KEY = 'base_model.vera_A';
export const VERA_B_KEY = 'base_model.vera_B';

export class VeraProjections {
  readonly r: number;
  readonly a: Tensor;
  readonly b: Tensor;
  readonly #slicesA = new Map<number, Tensor>();
  readonly #slicesB = new Map<number, Tensor>();

  constructor(seed: number, r: number, maxIn: number, maxOut: number, device: Device) {
    this.r = r;
    const seedBig = BigInt(seed);
    this.a = kaimingUniform([r, maxIn], maxIn, { seed: seedBig, stream: randomStream('vera/A') }, device);
    this.b = kaimingUniform([maxOut, r], r, { seed: seedBig, stream: randomStream('vera/B') }, device);
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

  /** The stored tensors, by file key. */
  tensors(): Record<string, Tensor> {
    return { [VERA_A_KEY]: this.a, [VERA_B_KEY]: this.b };
  }

  dispose(): void {
    this.a.dispose();
    this.b.dispose();
    for (const t of [...this.#slicesA.values(), ...this.#slicesB.values()]) t.dispose();
  }
}

const veraProjections = new SharedRegistry<VeraProjections>();

/** The projections for layers up to [maxOut, maxIn] (made on first use); the caller must release() them. */
export function acquireProjections(
  seed: number,
  r: number,
  maxIn: number,
  maxOut: number,
  device: Device,
): Shared<VeraProjections> {
  return veraProjections.acquire(`${device}|${seed}|r${r}|${maxOut}x${maxIn}`, () => {
    return new VeraProjections(seed, r, maxIn, maxOut, device);
  });
}
