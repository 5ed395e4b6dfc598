/**
 * Kernels and random fills that allocate their result check everything that
 * could make them fail first: sizes beyond BLAS's 32-bit indices or the Tucker
 * kernels' intermediates, and distribution parameters that would not give the
 * distribution asked for. Nothing is allocated for a refused call.
 */
import type { NativeStorage } from '../binding';
import { Tensor, kernels, random } from '../lib';
import { native } from '../lib/native/loader';

/** Counts storages the library creates while `body` runs. */
function allocationsDuring(body: () => void): number {
  const binding = native();
  const Original = binding.Storage;
  let count = 0;
  binding.Storage = new Proxy(Original, {
    construct(target, args: ConstructorParameters<typeof Original>) {
      count++;
      return Reflect.construct(target, args) as NativeStorage;
    },
  });
  try {
    body();
  } finally {
    binding.Storage = Original;
  }
  return count;
}

/** A tensor of any shape without its memory: only its shape is read before the checks refuse it. */
function shapeOnly(shape: number[]): Tensor {
  const size = shape.reduce((p, d) => p * d, 1);
  const storage = { length: size, device: 'cpu', disposed: false } as unknown as NativeStorage;
  return new Tensor(storage, shape);
}

describe('sizes are checked before the output is allocated', () => {
  it('gemm refuses a dimension beyond the BLAS 32-bit index', () => {
    const a = shapeOnly([2 ** 31, 1]);
    const b = shapeOnly([1, 2]);
    const count = allocationsDuring(() => {
      expect(() => kernels.gemm(a, b)).toThrow('gemm: m = 2147483648 exceeds the BLAS 32-bit index limit (2^31 - 1)');
      expect(() => kernels.gemm(b, a, { transA: true, transB: true })).toThrow(
        'gemm: n = 2147483648 exceeds the BLAS 32-bit index limit (2^31 - 1)',
      );
    });
    expect(count).toBe(0);
  });

  it('the native gemm refuses it too, for callers of the binding', () => {
    const b = native();
    const empty = new b.Storage(0, 'cpu');
    expect(() => b.gemm(false, false, 2 ** 31, 1, 1, 1, empty, empty, 0, empty)).toThrow(
      'gemm: m = 2147483648 exceeds the BLAS 32-bit index limit (2^31 - 1)',
    );
  });

  it('tuckerReconstruct refuses modes and ranks whose intermediate exceeds 2^48 elements', () => {
    const core = shapeOnly([1, 2 ** 25]);
    const factors = [shapeOnly([2 ** 25, 1]), shapeOnly([1, 2 ** 25])];
    const count = allocationsDuring(() =>
      expect(() => kernels.tuckerReconstruct(core, factors)).toThrow(
        'tuckerReconstruct: modes [33554432, 1] with ranks [1, 33554432] need an intermediate of more than 2^48 elements',
      ),
    );
    expect(count).toBe(0);
  });
});

describe('distribution parameters are checked before the tensor is allocated', () => {
  it.each([
    ['normal', { std: -1 }, 'random.normal: std must be a finite float32 number >= 0, got -1'],
    ['normal', { std: NaN }, 'random.normal: std must be a finite float32 number >= 0, got NaN'],
    ['normal', { std: Infinity }, 'random.normal: std must be a finite float32 number >= 0, got Infinity'],
    ['normal', { std: 1e39 }, 'random.normal: std must be a finite float32 number >= 0, got 1e+39'],
    ['normal', { mean: -Infinity }, 'random.normal: mean must be a finite float32 number, got -Infinity'],
    ['uniform', { low: 5, high: 1 }, 'random.uniform: low (5) must not exceed high (1)'],
    ['uniform', { low: NaN }, 'random.uniform: low and high must be finite float32 numbers, got NaN and 1'],
    ['uniform', { high: Infinity }, 'random.uniform: low and high must be finite float32 numbers, got 0 and Infinity'],
    ['uniform', { low: -3e38, high: 3e38 }, 'random.uniform: high - low (6e+38) overflows float32'],
  ] as const)('%s with %p is refused', (kind, parameters, message) => {
    const count = allocationsDuring(() =>
      expect(() => random[kind]([1024], { seed: 1, ...parameters })).toThrow(message),
    );
    expect(count).toBe(0);
  });

  it('the edge cases that are valid give what they say: std 0 is the mean, low == high is low', () => {
    expect(Array.from(random.normal([3], { seed: 1, mean: 2.5, std: 0 }).toFloat32Array())).toEqual([2.5, 2.5, 2.5]);
    expect(Array.from(random.uniform([3], { seed: 1, low: -4, high: -4 }).toFloat32Array())).toEqual([-4, -4, -4]);
  });

  it('the native randomFill refuses the same parameters, for callers of the binding', () => {
    const b = native();
    const out = new b.Storage(4, 'cpu');
    expect(() => b.randomFill(out, 'normal', 1n, 0n, 0, -1)).toThrow(
      'randomFill: the standard deviation must be >= 0, got -1',
    );
    expect(() => b.randomFill(out, 'uniform', 1n, 0n, 5, 1)).toThrow(
      'randomFill: uniform needs low <= high with high - low finite in float32',
    );
    expect(() => b.randomFill(out, 'normal', 1n, 0n, NaN, 1)).toThrow(
      'randomFill: parameters must be finite float32 numbers',
    );
    expect(Array.from(out.read())).toEqual([0, 0, 0, 0]);
  });
});
