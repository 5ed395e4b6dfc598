/**
 * Counter-based random tensors (Philox4x32-10). Element k of a fill depends only
 * on (seed, key, k), so results are identical on CPU and GPU and for any thread
 * count, and a frozen tensor can be regenerated from its seed instead of stored.
 */
import type { DistributionName } from '../binding';
import { native } from './native/loader';
import type { DeviceRequest } from './tensor/device';
import { Tensor, uninitialized } from './tensor/tensor';

export interface RandomOptions {
  /** The Philox key: an unsigned 64-bit integer. */
  seed: number | bigint;
  /** The stream (upper counter words): separates tensors made from one seed. Default 0. */
  key?: number | bigint;
  device?: DeviceRequest;
}

function uint64(value: number | bigint | undefined, what: string): bigint {
  const v = value ?? 0;
  if (typeof v === 'bigint') {
    if (v < 0n || v >= 1n << 64n) throw new Error(`${what} must be an unsigned 64-bit integer, got ${v}`);
    return v;
  }
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new Error(`${what} must be a non-negative safe integer or a BigInt, got ${String(v)}`);
  }
  return BigInt(v);
}

/** Largest finite float32: the fills compute in float32, so parameters beyond it would be infinite. */
const FLOAT32_MAX = 3.4028234663852886e38;

function float32Finite(value: unknown): value is number {
  return typeof value === 'number' && Math.abs(value) <= FLOAT32_MAX;
}

/** Refuses parameters that would not give the distribution asked for (checked before allocating). */
function checkParameters(kind: DistributionName, a: number, b: number): void {
  if (kind === 'normal') {
    if (!float32Finite(a)) throw new Error(`random.normal: mean must be a finite float32 number, got ${String(a)}`);
    if (!float32Finite(b) || b < 0) {
      throw new Error(`random.normal: std must be a finite float32 number >= 0, got ${String(b)}`);
    }
    return;
  }
  if (!float32Finite(a) || !float32Finite(b)) {
    throw new Error(`random.uniform: low and high must be finite float32 numbers, got ${String(a)} and ${String(b)}`);
  }
  if (a > b) throw new Error(`random.uniform: low (${a}) must not exceed high (${b})`);
  if (!(b - a <= FLOAT32_MAX)) throw new Error(`random.uniform: high - low (${b - a}) overflows float32`);
}

function filled(
  shape: readonly number[],
  options: RandomOptions,
  kind: DistributionName,
  a: number,
  b: number,
): Tensor {
  if (options === null || typeof options !== 'object') throw new Error('random: options with a seed are required');
  const seed = uint64(options.seed, 'seed');
  const key = uint64(options.key, 'key');
  checkParameters(kind, a, b);
  const out = uninitialized(shape, { device: options.device });
  native().randomFill(out.storage, kind, seed, key, a, b);
  return out;
}

export interface NormalOptions extends RandomOptions {
  mean?: number;
  std?: number;
}

export interface UniformOptions extends RandomOptions {
  low?: number;
  high?: number;
}

/** Normal(mean, std^2) by Box-Muller from each element's Philox block; std >= 0. */
export function normal(shape: readonly number[], options: NormalOptions): Tensor {
  return filled(shape, options, 'normal', options?.mean ?? 0, options?.std ?? 1);
}

/** Uniform on [low, high), low <= high (low == high gives low everywhere). */
export function uniform(shape: readonly number[], options: UniformOptions): Tensor {
  return filled(shape, options, 'uniform', options?.low ?? 0, options?.high ?? 1);
}

/**
 * A permutation of 0..n-1 ordered by Philox uniforms under (seed, key): the same
 * on every machine and in every process, so the ranks of a distributed job agree
 * on an epoch's order without communicating.
 */
export function permutation(n: number, options: RandomOptions): Uint32Array {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`permutation: n must be a non-negative integer, got ${n}`);
  if (n === 0) return new Uint32Array(0);
  const keys = uniform([n], { ...options, device: 'cpu' });
  const values = keys.toFloat32Array();
  keys.dispose();
  return Uint32Array.from({ length: n }, (_, i) => i).sort((a, b) => values[a] - values[b] || a - b);
}

/** One raw Philox4x32-10 block (for known-answer checks). */
export function philox4x32(counter: readonly number[], key: readonly number[]): number[] {
  return native().philox4x32([...counter], [...key]);
}
