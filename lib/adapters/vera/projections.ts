/**
 * VeRA's frozen, shared projections: A [r, maxIn] and B [maxOut, r], one pair
 * per key in the shared registry, so every layer of an adapter (and every
 * adapter with the same key) uses the same tensors. Each layer uses the
 * top-left slice A[:, :in], B[:out, :], as PEFT; slices are copied once per
 * distinct size and shared too.
 *
 * Generated pairs are Kaiming-uniform with PEFT's bound, sqrt(6 / fan_in)
 * (fan_in = maxIn for A, r for B), but not PEFT's values: PEFT draws A then B
 * from one torch CPU generator (mt19937) seeded with projection_prng_key; we
 * draw each from its own Philox4x32-10 stream under the same seed (streams
 * FNV-1a-64("vera/A") and "vera/B"), identical on every device and thread
 * count. Pairs stored in a file (PEFT's or ours) are used as they are.
 */
import { createHash } from 'node:crypto';

import type { LoadedTensor } from '../../io/safetensors';
import { kaimingUniform } from '../../nn/init';
import type { Device } from '../../tensor/device';
import { type Tensor, tensor } from '../../tensor/tensor';
import { randomStream } from '../config';
import { type Shared, SharedRegistry } from '../registry';

export const VERA_A_KEY = 'base_model.vera_A';
export const VERA_B_KEY = 'base_model.vera_B';

export class VeraProjections {
  readonly r: number;
  readonly #slicesA = new Map<number, Tensor>();
  readonly #slicesB = new Map<number, Tensor>();

  /** Takes ownership of A [r, maxIn] and B [maxOut, r]. */
  constructor(
    readonly a: Tensor,
    readonly b: Tensor,
  ) {
    this.r = a.shape[0];
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

/** The generated projections for layers up to [maxOut, maxIn] (made on first use); the caller must release() them. */
export function acquireProjections(
  seed: number,
  r: number,
  maxIn: number,
  maxOut: number,
  device: Device,
): Shared<VeraProjections> {
  return veraProjections.acquire(`${device}|${seed}|r${r}|${maxOut}x${maxIn}`, () => {
    const key = (name: string) => ({ seed: BigInt(seed), stream: randomStream(`vera/${name}`) });
    const a = kaimingUniform([r, maxIn], maxIn, key('A'), device, 0);
    try {
      return new VeraProjections(a, kaimingUniform([maxOut, r], r, key('B'), device, 0));
    } catch (error) {
      a.dispose();
      throw error;
    }
  });
}

/** Projections read from a file, shared by content; the caller must release() them. */
export function acquireStoredProjections(a: LoadedTensor, b: LoadedTensor, device: Device): Shared<VeraProjections> {
  const digest = createHash('sha256');
  for (const t of [a, b]) digest.update(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  const shapes = `${a.shape.join('x')}_${b.shape.join('x')}`;
  return veraProjections.acquire(`${device}|stored|${shapes}|${digest.digest('hex')}`, () => {
    const storedA = tensor(a.data, a.shape, { device });
    try {
      return new VeraProjections(storedA, tensor(b.data, b.shape, { device }));
    } catch (error) {
      storedA.dispose();
      throw error;
    }
  });
}
