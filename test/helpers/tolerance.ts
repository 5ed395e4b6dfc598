/**
 * The one place where tests decide whether numbers are close enough. Every
 * check is written as `!(error <= bound)`, so a NaN or an infinity on either
 * side fails it instead of slipping through a `>` comparison.
 */

/** True when |got - want| <= rtol * |want| + atol; false for NaN or infinities. */
export function isClose(got: number, want: number, rtol: number, atol: number): boolean {
  return Math.abs(got - want) <= rtol * Math.abs(want) + atol;
}

export interface Tolerance {
  /** Relative part, times |want| (or times `magnitude[i]` when given). */
  rtol?: number;
  /** Absolute part. */
  atol?: number;
  /** Per-element scale for the relative part instead of |want|, e.g. the sum of |terms|. */
  magnitude?: ArrayLike<number>;
  /** Names the compared quantity in the failure message. */
  what?: string;
}

/**
 * Index of the first element that is not close (or whose counterpart is
 * missing), or -1. Lengths must match: a short result is a failure.
 */
export function firstMismatch(got: ArrayLike<number>, want: ArrayLike<number>, tol: Tolerance = {}): number {
  const { rtol = 1e-6, atol = 1e-6, magnitude } = tol;
  const n = Math.max(got.length, want.length);
  for (let i = 0; i < n; i++) {
    if (i >= got.length || i >= want.length) return i;
    const scale = magnitude ? magnitude[i] : Math.abs(want[i]);
    if (!(Math.abs(got[i] - want[i]) <= rtol * scale + atol)) return i;
  }
  return -1;
}

/** Fails with the first offending index and both values; NaN anywhere fails. */
export function expectAllClose(got: ArrayLike<number>, want: ArrayLike<number>, tol: Tolerance = {}): void {
  const i = firstMismatch(got, want, tol);
  if (i >= 0) {
    const { rtol = 1e-6, atol = 1e-6, what = 'values' } = tol;
    throw new Error(
      `${what}: element ${i} is ${got[i]}, expected ${want[i]} ` +
        `(rtol ${rtol}, atol ${atol}, lengths ${got.length} and ${want.length})`,
    );
  }
}

/** Largest |a - b| over both arrays; NaN when any pair involves a NaN (so `<=` checks on it fail). */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return NaN;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= worst)) worst = Number.isNaN(d) ? NaN : d;
    if (Number.isNaN(worst)) return NaN;
  }
  return worst;
}

/** Expects max |got - want| <= bound, failing on NaN. */
export function expectMaxAbsDiff(got: ArrayLike<number>, want: ArrayLike<number>, bound: number): void {
  const d = maxAbsDiff(got, want);
  if (!(d <= bound)) throw new Error(`max |difference| is ${d}, above the bound ${bound}`);
}

/** Expects max |got - want| > bound (the two really differ), failing on NaN. */
export function expectDiffer(got: ArrayLike<number>, want: ArrayLike<number>, bound: number): void {
  const d = maxAbsDiff(got, want);
  if (!(d > bound)) throw new Error(`max |difference| is ${d}, expected above ${bound}`);
}
