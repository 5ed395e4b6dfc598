/**
 * Parameter initialisation from the counter-based generator. Every tensor is
 * keyed by (seed, stream): modules given no seed draw successive streams of
 * the global seed (manualSeed), so a script that builds the same modules in
 * the same order gets the same weights on any device and thread count.
 */
import type { Parameter } from '../autograd/var';
import type { DeviceRequest } from '../tensor/device';
import type { Tensor } from '../tensor/tensor';
import { uniform } from '../random';

/** How a module will use a parameter it asks a ParameterFactory for. */
export interface ParameterRequest {
  /** The layer keeps [out, in] in memory but checkpoints store [in, out] (transformers' Conv1D). */
  storedTransposed?: boolean;
}

/**
 * Makes the tensor of a module's parameter in place of its own initialisation:
 * (the parameter's dotted name below the module it was given to, its shape) ->
 * a tensor of that shape, which the module takes over, or a Parameter, which
 * the module shares as it is (tied weights). Language models built for a
 * checkpoint pass one that allocates each tensor for the loader to fill, so
 * nothing is initialised twice.
 */
export type ParameterFactory = (
  name: string,
  shape: readonly number[],
  request?: ParameterRequest,
) => Tensor | Parameter;

/** The factory of the child `prefix` of the module given `factory` (undefined stays undefined). */
export function childFactory(factory: ParameterFactory | undefined, prefix: string): ParameterFactory | undefined {
  if (factory === undefined) return undefined;
  return (name, shape, request) => factory(`${prefix}.${name}`, shape, request);
}

let globalSeed = 0n;
let nextStream = 0n;

/** Resets the global initialisation seed (like torch.manual_seed). */
export function manualSeed(seed: number | bigint): void {
  const value = BigInt(seed);
  if (value < 0n || value >= 1n << 64n) throw new Error(`manualSeed: seed must fit in 64 unsigned bits, got ${seed}`);
  globalSeed = value;
  nextStream = 0n;
}

export interface InitKey {
  seed: bigint;
  stream: bigint;
}

/** The key for the next tensor: (seed, stream) if a seed is given, else the next global stream. */
export function initKey(seed: number | bigint | undefined, stream: number): InitKey {
  if (seed === undefined) return { seed: globalSeed, stream: nextStream++ };
  return { seed: BigInt(seed), stream: BigInt(stream) };
}

/**
 * torch.nn.init.kaiming_uniform_ with negative slope `a` (fan-in mode, leaky
 * ReLU gain sqrt(2 / (1 + a^2))): Uniform(-bound, bound) with
 * bound = sqrt(6 / ((1 + a^2) fanIn)). The default a = sqrt(5) is PyTorch's
 * default for Linear weights and biases, bound 1 / sqrt(fanIn); a = 0 gives
 * sqrt(6 / fanIn) (PEFT's VeRA projections).
 */
export function kaimingUniform(
  shape: readonly number[],
  fanIn: number,
  key: InitKey,
  device?: DeviceRequest,
  a = Math.sqrt(5),
): Tensor {
  const bound = Math.sqrt(6 / ((1 + a * a) * fanIn));
  return uniform(shape, { seed: key.seed, key: key.stream, low: -bound, high: bound, device });
}
