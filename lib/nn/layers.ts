/**
 * The standard layers: Linear (PyTorch layout and initialisation), the
 * activations, Sequential and MLP.
 */
import type { ActivationName } from '../../binding';
import { type Input, gelu, linear, relu, tanh } from '../autograd/ops';
import { Parameter, type Var } from '../autograd/var';
import type { DeviceRequest } from '../tensor/device';
import { initKey, kaimingUniform } from './init';
import { Module } from './module';

export interface LinearOptions {
  /** Add a learnable bias (default true). */
  bias?: boolean;
  device?: DeviceRequest;
  /** Initialisation seed; without one the next stream of the global seed (manualSeed) is used. */
  seed?: number | bigint;
}

function checkFeatures(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 1)
    throw new Error(`Linear: ${what} must be a positive integer, got ${value}`);
}

/** y = x W^T + b with W [outFeatures, inFeatures], initialised as PyTorch does. */
export class Linear extends Module {
  readonly inFeatures: number;
  readonly outFeatures: number;
  readonly weight: Parameter;
  readonly bias: Parameter | null;

  constructor(inFeatures: number, outFeatures: number, options: LinearOptions = {}) {
    super();
    checkFeatures(inFeatures, 'inFeatures');
    checkFeatures(outFeatures, 'outFeatures');
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    const weightKey = initKey(options.seed, 0);
    this.weight = this.registerParameter(
      'weight',
      new Parameter(kaimingUniform([outFeatures, inFeatures], inFeatures, weightKey, options.device)),
    );
    this.bias = null;
    if (options.bias ?? true) {
      const biasKey = initKey(options.seed, 1);
      this.bias = this.registerParameter(
        'bias',
        new Parameter(kaimingUniform([outFeatures], inFeatures, biasKey, this.weight.device)),
      );
    }
  }

  forward(input: Input): Var {
    return linear(input, this.weight, this.bias);
  }

  protected override describe(): string {
    return `Linear(inFeatures=${this.inFeatures}, outFeatures=${this.outFeatures}, bias=${this.bias !== null})`;
  }
}

export class ReLU extends Module {
  forward(input: Input): Var {
    return relu(input);
  }
}

/** The exact (erf) GELU. */
export class GELU extends Module {
  forward(input: Input): Var {
    return gelu(input);
  }
}

export class Tanh extends Module {
  forward(input: Input): Var {
    return tanh(input);
  }
}

/** Runs its children in order; they are named '0', '1', ... as in PyTorch. */
export class Sequential extends Module {
  constructor(...layers: Module[]) {
    super();
    layers.forEach((layer) => this.append(layer));
  }

  append(layer: Module): this {
    this.registerModule(String(this.length), layer);
    return this;
  }

  get length(): number {
    return this.namedChildren().length;
  }

  /** The i-th layer as it is now (after any adapter injection replaced it). */
  at(index: number): Module {
    return this.getSubmodule(String(index));
  }

  forward(input: Input): Var {
    const layers = this.namedChildren();
    if (layers.length === 0) throw new Error('Sequential: no layers to run');
    let x = input;
    for (const [, layer] of layers) x = layer.forward(x);
    return x as Var;
  }
}

// The activations MLP can place between its layers (those with a module here).
export type ActivationKind = Extract<ActivationName, 'relu' | 'gelu' | 'tanh'>;

export interface MLPOptions {
  /** Between hidden layers (default 'relu'); none after the last Linear. */
  activation?: ActivationKind;
  bias?: boolean;
  device?: DeviceRequest;
  /** Layer i is seeded with (seed + i) when given. */
  seed?: number;
}

const ACTIVATIONS: Record<ActivationKind, () => Module> = {
  relu: () => new ReLU(),
  gelu: () => new GELU(),
  tanh: () => new Tanh(),
};

/**
 * Linear layers of the given sizes with an activation between them:
 * new MLP([784, 128, 10]) is Sequential(Linear(784, 128), ReLU, Linear(128, 10)),
 * so its Linear layers are named '0', '2', ...
 */
export class MLP extends Sequential {
  constructor(sizes: readonly number[], options: MLPOptions = {}) {
    super();
    if (!Array.isArray(sizes) || sizes.length < 2) {
      throw new Error(`MLP: sizes must list at least an input and an output size, got ${JSON.stringify(sizes)}`);
    }
    const activation = options.activation ?? 'relu';
    if (!(activation in ACTIVATIONS)) {
      throw new Error(`MLP: unknown activation '${activation}'; use relu, gelu or tanh`);
    }
    for (let i = 0; i + 1 < sizes.length; i++) {
      if (i > 0) this.append(ACTIVATIONS[activation]());
      const seed = options.seed === undefined ? undefined : options.seed + i;
      this.append(new Linear(sizes[i], sizes[i + 1], { bias: options.bias, device: options.device, seed }));
    }
  }
}
