/**
 * Independent float64 references for the kernels, written as plain loops over
 * the definitions in docs/math.md (no blocking, no reuse of library code).
 */

/** Small deterministic PRNG (mulberry32) so failures reproduce. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Values uniform in [-1, 1), rounded to float32 so both sides see the same inputs. */
export function randomArray(n: number, next: () => number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = next() * 2 - 1;
  return out;
}

/** erf in float64 from its Maclaurin series (Abramowitz-Stegun 7.1.26 is too coarse for finite differences). */
export function erf(x: number): number {
  let sum = 0;
  let term = x;
  for (let n = 0; n < 80; n++) {
    sum += term / (2 * n + 1);
    term *= (-x * x) / (n + 1);
  }
  return (2 / Math.sqrt(Math.PI)) * sum;
}

export function product(dims: readonly number[]): number {
  return dims.reduce((a, b) => a * b, 1);
}

/** The row-major multi-index of a flat index into `dims`. */
export function unravel(index: number, dims: readonly number[]): number[] {
  const out = new Array<number>(dims.length);
  for (let n = dims.length - 1; n >= 0; n--) {
    out[n] = index % dims[n];
    index = Math.floor(index / dims[n]);
  }
  return out;
}

/**
 * A float64 result with, per element, the sum of |terms| it came from: float32
 * accumulation of n terms errs by at most about n * 2^-24 * magnitude, so
 * rtol = 1e-5 of the magnitude leaves room for sums of ~100 terms.
 */
export interface Reconstruction {
  value: Float64Array;
  magnitude: Float64Array;
}

/** X[j] = alpha sum_r G[r] prod_n A_n[j_n, r_n] l_n[r_n], straight from the definition. */
export function reconstruct(
  core: ArrayLike<number>,
  modes: readonly number[],
  ranks: readonly number[],
  factors: readonly ArrayLike<number>[],
  scales: readonly (ArrayLike<number> | null)[],
  alpha = 1,
): Reconstruction {
  const full = product(modes);
  const coreSize = product(ranks);
  const coreIndex = Array.from({ length: coreSize }, (_, c) => unravel(c, ranks));
  const value = new Float64Array(full);
  const magnitude = new Float64Array(full);
  for (let x = 0; x < full; x++) {
    const j = unravel(x, modes);
    let acc = 0;
    let abs = 0;
    for (let c = 0; c < coreSize; c++) {
      let term = core[c];
      coreIndex[c].forEach((r, n) => {
        term *= factors[n][j[n] * ranks[n] + r] * (scales[n] ? scales[n]![r] : 1);
      });
      acc += term;
      abs += Math.abs(term);
    }
    value[x] = alpha * acc;
    magnitude[x] = Math.abs(alpha) * abs;
  }
  return { value, magnitude };
}

/** Y = X x_mode (M diag(s)), M is [J, K]. */
export function modeProduct(
  x: ArrayLike<number>,
  shape: readonly number[],
  mode: number,
  matrix: ArrayLike<number>,
  rows: number,
  scale: ArrayLike<number> | null,
): Reconstruction {
  const outShape = [...shape];
  outShape[mode] = rows;
  const K = shape[mode];
  const value = new Float64Array(product(outShape));
  const magnitude = new Float64Array(value.length);
  for (let o = 0; o < value.length; o++) {
    const idx = unravel(o, outShape);
    const j = idx[mode];
    let acc = 0;
    let abs = 0;
    for (let k = 0; k < K; k++) {
      idx[mode] = k;
      let flat = 0;
      for (let n = 0; n < shape.length; n++) flat = flat * shape[n] + idx[n];
      const term = matrix[j * K + k] * (scale ? scale[k] : 1) * x[flat];
      acc += term;
      abs += Math.abs(term);
    }
    value[o] = acc;
    magnitude[o] = abs;
  }
  return { value, magnitude };
}

/** C = alpha op(A) op(B) + beta C0 with row-major operands. */
export function gemm(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  m: number,
  n: number,
  k: number,
  transA: boolean,
  transB: boolean,
  alpha: number,
  beta: number,
  c0: ArrayLike<number> | null,
): Reconstruction {
  const value = new Float64Array(m * n);
  const magnitude = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      let abs = 0;
      for (let p = 0; p < k; p++) {
        const av = transA ? a[p * m + i] : a[i * k + p];
        const bv = transB ? b[j * k + p] : b[p * n + j];
        acc += av * bv;
        abs += Math.abs(av * bv);
      }
      const prior = c0 ? beta * c0[i * n + j] : 0;
      value[i * n + j] = alpha * acc + prior;
      magnitude[i * n + j] = Math.abs(alpha) * abs + Math.abs(prior);
    }
  }
  return { value, magnitude };
}
