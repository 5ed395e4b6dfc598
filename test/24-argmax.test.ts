/**
 * kernels.argmax: the row-wise argmax over the native kernel, against a
 * reference written here (first maximum; NaN counts as the largest value, as
 * torch.argmax), with its argument checks.
 */
import type { NativeStorage } from '../binding';
import * as tera from '../lib';
import { randomArray, rng } from './helpers/reference';

const { kernels } = tera;

/** torch.argmax(x, 1): the first index of the maximum, a NaN being larger than any number. */
function referenceArgmax(values: Float32Array, rows: number, cols: number): number[] {
  return Array.from({ length: rows }, (_, i) => {
    let best = 0;
    for (let j = 0; j < cols; j++) {
      const v = values[i * cols + j];
      if (Number.isNaN(v)) return j;
      if (v > values[i * cols + best]) best = j;
    }
    return best;
  });
}

describe('kernels.argmax', () => {
  it('matches the reference on random rows, ties, infinities and NaN (enough rows to use every thread)', () => {
    const [rows, cols] = [3001, 10];
    const values = randomArray(rows * cols, rng(5)).map((v) => Math.round(v * 4) / 2);
    values[7 * cols + 3] = NaN;
    values[8 * cols] = NaN;
    values[9 * cols + 9] = Infinity;
    values.fill(-Infinity, 10 * cols, 11 * cols);
    const got = kernels.argmax(tera.tensor(values, [rows, cols]));
    expect(got.shape).toEqual([rows]);
    expect(Array.from(got.toFloat32Array())).toEqual(referenceArgmax(values, rows, cols));
  });

  it('writes into out when given, and returns it', () => {
    const x = tera.tensor(Float32Array.of(1, 9, 3, 7, 2, 8), [2, 3]);
    const out = tera.full([2], NaN);
    expect(kernels.argmax(x, { out })).toBe(out);
    expect(Array.from(out.toFloat32Array())).toEqual([1, 2]);
  });

  it('refuses what is not a matrix, out of the wrong shape or sharing memory, and rows too wide for float32 indices', () => {
    const x = tera.tensor(Float32Array.of(1, 2, 3, 4), [2, 2]);
    expect(() => kernels.argmax(tera.zeros([4]))).toThrow('argmax: x has shape [4] but must be a matrix [rows, cols]');
    expect(() => kernels.argmax(x, { out: tera.zeros([3]) })).toThrow(
      'argmax: out has shape [3] but the result is [2]',
    );
    const column = tera.tensor(Float32Array.of(5, 6), [2, 1]);
    expect(() => kernels.argmax(column, { out: column.reshape([2]) })).toThrow(
      'argmax: out must not share memory with x',
    );
    expect(Array.from(column.toFloat32Array())).toEqual([5, 6]);
    const wide = new tera.Tensor({ length: 2 ** 25, device: 'cpu', disposed: false } as unknown as NativeStorage, [
      1,
      2 ** 25,
    ]);
    expect(() => kernels.argmax(wide)).toThrow(
      'argmax: rows of 33554432 values have indices past 2^24, which float32 cannot hold exactly',
    );
    x.dispose();
    expect(() => kernels.argmax(x)).toThrow('argmax: x [2, 2] has been disposed');
  });
});
