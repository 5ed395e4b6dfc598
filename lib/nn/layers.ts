/**
 * The standard layers: Linear (PyTorch layout and initialisation), the
 * activations, Sequential and MLP.
 */
import type { ActivationName } from '../../binding';
import { type Input, gelu, linear, relu, tanh } from '../autograd/ops';
import { Parameter, type Var } from '../autograd/var';
import type { DeviceRequest } from '../tensor/device';
import { formatShape, sameShape } from '../shape';
import { type ParameterFactory, type ParameterRequest, initKey, kaimingUniform } from './init';
import { Module } from './module';

export interface LinearOptions {
  /** Add a learnable bias (default true). */
  bias?: boolean;
  device?: DeviceRequest;
  /** Initialisation seed; without one the next stream of the global seed (manualSeed) is used. */
  seed?: number | bigint;
  /** Makes 'weight' ([outFeatures, inFeatures]) and 'bias' instead of PyTorch's initialisation (device and seed unused). */
  init?: ParameterFactory;
}

function checkFeatures(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 1)
    throw new Error(`Linear: ${what} must be a positive integer, got ${value}`);
}

/** The parameter `init` makes for `name`, checked to have the shape asked for. */
export function madeParameter(
  init: ParameterFactory,
  name: string,
  shape: readonly number[],
  request?: ParameterRequest,
): Parameter {
  const made = init(name, shape, request);
  if (!sameShape(made.shape, shape)) {
    if (!(made instanceof Parameter)) made.dispose();
    throw new Error(`init('${name}') made a tensor ${formatShape(made.shape)}, expected ${formatShape(shape)}`);
  }
  return made instanceof Parameter ? made : new Parameter(made);
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
    const { init } = options;
    const weight =
      init === undefined
        ? new Parameter(kaimingUniform([outFeatures, inFeatures], inFeatures, initKey(options.seed, 0), options.device))
        : madeParameter(init, 'weight', [outFeatures, inFeatures], { storedTransposed: this.storedTransposed });
    this.weight = this.registerParameter('weight', weight);
    this.bias = null;
    if (options.bias ?? true) {
      const bias =
        init === undefined
          ? new Parameter(kaimingUniform([outFeatures], inFeatures, initKey(options.seed, 1), this.weight.device))
          : madeParameter(init, 'bias', [outFeatures]);
      this.bias = this.registerParameter('bias', bias);
    }
  }

  /** Whether checkpoints store the weight [in, out] (Conv1D) rather than [out, in]. */
  get storedTransposed(): boolean {
    return false;
  }

  forward(input: Input): Var {
    return linear(input, this.weight, this.bias);
  }

  protected override describe(): string {
    return `Linear(inFeatures=${this.inFeatures}, outFeatures=${this.outFeatures}, bias=${this.bias !== null})`;
  }
}

/**
 * transformers' Conv1D (GPT-2's projections): Conv1D(nf=outFeatures,
 * nx=inFeatures) computes y = x W + b with W stored [in, out] in checkpoints.
 * Here it is a Linear, its weight [out, in] in memory like every Linear, so
 * every adapter method applies to it unchanged; the checkpoint reader and
 * writer transpose it (lib/models), and adapter files mark it with PEFT's
 * fan_in_fan_out, as PEFT does for Conv1D targets.
 */
export class Conv1D extends Linear {
  override get storedTransposed(): boolean {
    return true;
  }

  protected override describe(): string {
    return `Conv1D(nf=${this.outFeatures}, nx=${this.inFeatures})`;
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

/**
 * Holds modules under the names '0', '1', ... (torch.nn.ModuleList): the
 * transformer layers of a model ('h.0', 'layers.3'). It has no forward pass of
 * its own; the owner runs the layers.
 */
export class ModuleList extends Module {
  constructor(modules: readonly Module[] = []) {
    super();
    modules.forEach((module, i) => this.registerModule(String(i), module));
  }

  get length(): number {
    return this.namedChildren().length;
  }

  /** The i-th module as it is now (after any adapter injection replaced parts of it). */
  at(index: number): Module {
    return this.getSubmodule(String(index));
  }

  forward(): Var {
    throw new Error('ModuleList has no forward pass: run its modules (at(i)) in order');
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
