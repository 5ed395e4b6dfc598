/**
 * The shared tolerance helper must fail on NaN, infinities and short results,
 * or every numerical test built on it could pass without checking.
 */
import { expectAllClose, expectDiffer, expectMaxAbsDiff, isClose } from './helpers/tolerance';

describe('tolerance helper', () => {
  it('accepts values within rtol * |want| + atol', () => {
    expect(isClose(1.0000005, 1, 1e-6, 0)).toBe(true);
    expect(() => expectAllClose([1, 2.000001], [1, 2], { rtol: 1e-6, atol: 1e-6 })).not.toThrow();
  });

  it('fails on NaN or infinity on either side', () => {
    expect(isClose(NaN, 1, 1, 1)).toBe(false);
    expect(isClose(1, NaN, 1, 1)).toBe(false);
    expect(isClose(Infinity, Infinity, 1, 1)).toBe(false);
    expect(() => expectAllClose([1, NaN], [1, 2])).toThrow(/element 1 is NaN/);
    expect(() => expectMaxAbsDiff([NaN], [0], 1)).toThrow(/NaN/);
    expect(() => expectDiffer([NaN], [0], 1)).toThrow(/NaN/);
  });

  it('fails on a result of the wrong length', () => {
    expect(() => expectAllClose([1], [1, 2])).toThrow(/lengths 1 and 2/);
    expect(() => expectMaxAbsDiff([1], [1, 2], 1)).toThrow();
  });

  it('scales the relative part by a given magnitude', () => {
    expect(() => expectAllClose([0.1], [0], { rtol: 1e-5, atol: 0, magnitude: [1e5] })).not.toThrow();
    expect(() => expectAllClose([0.1], [0], { rtol: 1e-5, atol: 0, magnitude: [1] })).toThrow();
  });
});
