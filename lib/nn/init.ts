/**
 * Parameter initialisation from the counter-based generator. Every tensor is
 * keyed by (seed, stream): modules given no seed draw successive streams of
 * the global seed (manualSeed), so a script that builds the same modules in
 * the same order gets the same weights on any device and thread count.
 */
import type { DeviceRequest } from '../tensor/device';
import type { Tensor } from '../tensor/tensor';
import { uniform } from '../random';

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
