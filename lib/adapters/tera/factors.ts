/**
 * TeRA's frozen, shared tensors: the core G and the factors A_n exist once per
 * (device, seed, outModes, inModes, ranks). Every layer (of any adapter) with
 * that signature holds the same tensors through the shared registry, and the
 * last layer to go frees them.
 *
 * Generation (docs/math.md): element k of each tensor is Philox4x32-10 of
 * counter k under key `seed`, on stream FNV-1a-64("tera/<signature>/<id>")
 * with id "G" or "A<n>" (n from 1): G ~ N(0, 1/d_in), A_n ~ N(0, 1/R_n).
 */
import { normal } from '../../random';
import type { Device } from '../../tensor/device';
import type { Tensor } from '../../tensor/tensor';
import { randomStream } from '../config';
import { type Shared, SharedRegistry } from '../registry';
import type { TeraShape } from './config';

/** Names a (modes, ranks) signature in keys and file names: "64x64_64x64_r64x64x64x64". */
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
  readonly factors: Tensor[] = [];

  constructor(seed: number, shape: TeraShape, device: Device) {
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
    try {
      shape.modes.forEach((mode, n) => {
        const stream = randomStream(`tera/${name}/A${n + 1}`);
        const std = 1 / Math.sqrt(shape.ranks[n]);
        this.factors.push(normal([mode, shape.ranks[n]], { seed: seedBig, key: stream, std, device }));
      });
    } catch (error) {
      this.dispose();
      throw error;
    }
  }

  /** The stored tensors, by file key. */
  tensors(): Record<string, Tensor> {
    const keys = factorKeys(this.shape);
    return {
      [keys.core]: this.core,
      ...Object.fromEntries(keys.factors.map((key, n) => [key, this.factors[n]])),
    };
  }

  dispose(): void {
    this.core.dispose();
    this.factors.forEach((f) => f.dispose());
  }
}

const teraFactors = new SharedRegistry<TeraFactors>();

/** The shared factors of a signature (made on first use); the caller must release() them. */
export function acquireFactors(seed: number, shape: TeraShape, device: Device): Shared<TeraFactors> {
  return teraFactors.acquire(`${device}|${seed}|${signatureName(shape)}`, () => new TeraFactors(seed, shape, device));
}

/**
 * How many TeRA factor sets are alive now: one per (device, seed, signature)
 * in use, 0 once every TeRA adapter is deleted or unloaded.
 */
export function sharedFactorCount(): number {
  return teraFactors.size;
}
