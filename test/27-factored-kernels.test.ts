/**
 * The kernels behind TeRA's two evaluation paths, against float64 loops written
 * here from their definitions (docs/math.md): reconstruction into W0 + alpha dW,
 * the scale gradients from a core-space gradient, the Kronecker row products,
 * the Kronecker column scaling and its scale gradients. Also the shapes that go
 * through OpenBLAS (two large modes) or through more than two cache passes, and
 * mode products on every mode with widths that are not multiples of the vectors.
 */
import * as tera from '../lib';
import { product, randomArray, rng, unravel } from './helpers/reference';
import { expectAllClose } from './helpers/tolerance';

const { kernels } = tera;
const t = (data: ArrayLike<number>, shape: number[]) => tera.tensor(Float32Array.from(data), shape);
const next = rng(27);

/** Random factors [I_n, R_n] and scale vectors [R_n]. */
function parts(modes: number[], ranks: number[]) {
  return {
    factors: modes.map((m, n) => randomArray(m * ranks[n], next)),
    scales: ranks.map((r) => randomArray(r, next)),
  };
}

/** dl_n[s] = sum over r with r_n = s of z[r] g[r] prod_{m != n} l_m[r_m], and the sums of |terms|. */
function coreGrad64(z: ArrayLike<number>, g: ArrayLike<number>, ranks: number[], scales: ArrayLike<number>[]) {
  const value = ranks.map((r) => new Float64Array(r));
  const magnitude = ranks.map((r) => new Float64Array(r));
  for (let c = 0; c < product(ranks); c++) {
    const idx = unravel(c, ranks);
    ranks.forEach((_, n) => {
      let term = z[c] * g[c];
      idx.forEach((r, m) => {
        if (m !== n) term *= scales[m][r];
      });
      value[n][idx[n]] += term;
      magnitude[n][idx[n]] += Math.abs(term);
    });
  }
  return { value, magnitude };
}

/**
 * y = alpha x K^T or alpha x K, K[i, r] = prod_n A_n[i_n, r_n] s_n[r_n], in float64 as
 * successive mode products of each row (and the sums of |terms| carried along).
 */
function rows64(
  x: Float32Array,
  modes: number[],
  ranks: number[],
  factors: Float32Array[],
  scales: (Float32Array | null)[],
  alpha: number,
  contract: boolean,
) {
  const [from, to] = contract ? [modes, ranks] : [ranks, modes];
  const rows = x.length / product(from);
  let dims = [rows, ...from];
  let value = Float64Array.from(x, (v) => alpha * v);
  let magnitude = value.map(Math.abs);
  from.forEach((_, n) => {
    const mode = n + 1;
    const P = product(dims.slice(0, mode));
    const K = dims[mode];
    const Q = product(dims.slice(mode + 1));
    const J = to[n];
    const nextValue = new Float64Array(P * J * Q);
    const nextMagnitude = new Float64Array(P * J * Q);
    for (let p = 0; p < P; p++) {
      for (let j = 0; j < J; j++) {
        for (let k = 0; k < K; k++) {
          // K's factor entry: A_n[i, r] s_n[r] with (i, r) = (j, k) expanding, (k, j) contracting.
          const [i, r] = contract ? [k, j] : [j, k];
          const u = factors[n][i * ranks[n] + r] * (scales[n] ? scales[n]![r] : 1);
          for (let q = 0; q < Q; q++) {
            nextValue[(p * J + j) * Q + q] += u * value[(p * K + k) * Q + q];
            nextMagnitude[(p * J + j) * Q + q] += Math.abs(u) * magnitude[(p * K + k) * Q + q];
          }
        }
      }
    }
    value = nextValue;
    magnitude = nextMagnitude;
    dims = [...dims.slice(0, mode), J, ...dims.slice(mode + 1)];
  });
  return { value, magnitude };
}

describe('tuckerReconstruct into W0 + alpha dW', () => {
  it.each([
    ['order 3', [4, 3, 5], [4, 2, 5]],
    ['16^4, cache passes', [16, 16, 16, 16], [16, 16, 16, 16]],
    ['ranks below modes', [20, 24, 18, 16], [12, 24, 9, 16]],
  ])('adds base in the pass that writes the result: %s', (_, modes, ranks) => {
    const { factors, scales } = parts(modes, ranks);
    const core = randomArray(product(ranks), next);
    const base = randomArray(product(modes), next);
    const out = kernels
      .tuckerReconstruct(
        t(core, ranks),
        factors.map((f, n) => t(f, [modes[n], ranks[n]])),
        scales.map((s) => t(s, [s.length])),
        { alpha: -0.8, base: t(base, modes) },
      )
      .toFloat32Array();
    // One row of x = G times K^T is the reconstruction (row-major vec), by successive mode products.
    const ref = rows64(core, modes, ranks, factors, scales, -0.8, false);
    const want = ref.value.map((v, i) => v + base[i]);
    const magnitude = ref.magnitude.map((m, i) => m + Math.abs(base[i]));
    expectAllClose(out, want, { rtol: 1e-5, atol: 1e-6, magnitude, what: 'W0 + alpha dW' });
  });

  it('refuses a base of the wrong shape or one that is the output, before running', () => {
    const core = t(randomArray(6, next), [2, 3]);
    const factors = [t(randomArray(8, next), [4, 2]), t(randomArray(15, next), [5, 3])];
    const out = tera.zeros([4, 5]);
    expect(() => kernels.tuckerReconstruct(core, factors, undefined, { base: tera.zeros([5, 4]) })).toThrow(
      /base has shape \[5, 4\] but the result is \[4, 5\]/,
    );
    expect(() => kernels.tuckerReconstruct(core, factors, undefined, { base: out, out })).toThrow(
      /out must not share memory with base/,
    );
    expectAllClose(out.toFloat32Array(), new Float32Array(20), { rtol: 0, atol: 0 });
  });
});

describe('tuckerCoreGrad', () => {
  it.each([
    ['order 1', [7]],
    ['order 3', [4, 3, 5]],
    ['rows of 16 (vector peeling)', [3, 5, 16]],
    ['order 6', [2, 3, 2, 2, 3, 4]],
  ])('matches the definition for %s, with a zero scale vector as at initialisation', (_, ranks) => {
    const z = randomArray(product(ranks), next);
    const g = randomArray(product(ranks), next);
    const scales = ranks.map((r) => randomArray(r, next));
    scales[0].fill(0);
    const grads = kernels.tuckerCoreGrad(
      t(z, ranks),
      t(g, ranks),
      scales.map((s) => t(s, [s.length])),
    );
    const ref = coreGrad64(z, g, ranks, scales);
    grads.forEach((grad, n) =>
      expectAllClose(grad.toFloat32Array(), ref.value[n], {
        rtol: 1e-6,
        atol: 1e-7,
        magnitude: ref.magnitude[n],
        what: `dl_${n + 1}`,
      }),
    );
  });

  it('equals tuckerScaleGrad on the projection of a full gradient (the merged path uses it so)', () => {
    const modes = [6, 5, 4];
    const ranks = [6, 3, 4];
    const { factors, scales } = parts(modes, ranks);
    const core = t(randomArray(product(ranks), next), ranks);
    const gradX = t(randomArray(product(modes), next), modes);
    const factorTensors = factors.map((f, n) => t(f, [modes[n], ranks[n]]));
    const scaleTensors = scales.map((s) => t(s, [s.length]));
    // Z = gradX x_1 A_1^T x_2 A_2^T x_3 A_3^T, one mode product at a time.
    let z = gradX;
    factorTensors.forEach((f, n) => {
      const transposed = t(
        Array.from(
          { length: ranks[n] * modes[n] },
          (_, i) => f.toFloat32Array()[(i % modes[n]) * ranks[n] + Math.floor(i / modes[n])],
        ),
        [ranks[n], modes[n]],
      );
      z = kernels.modeProduct(z, transposed, n);
    });
    const fromCore = kernels.tuckerCoreGrad(z, core, scaleTensors);
    const fromFull = kernels.tuckerScaleGrad(gradX, core, factorTensors, scaleTensors);
    fromCore.forEach((g, n) =>
      expectAllClose(g.toFloat32Array(), fromFull[n].toFloat32Array(), { rtol: 1e-4, atol: 1e-5, what: `dl_${n + 1}` }),
    );
  });

  it('names a z that does not match the core, and out tensors that alias', () => {
    const core = t(randomArray(6, next), [2, 3]);
    const scales = [t([1, 2], [2]), t([1, 2, 3], [3])];
    expect(() => kernels.tuckerCoreGrad(t(randomArray(6, next), [3, 2]), core, scales)).toThrow(
      /z has shape \[3, 2\] but core is \[2, 3\]/,
    );
    const grad = tera.zeros([2]);
    expect(() => kernels.tuckerCoreGrad(core, core, scales, { out: [grad, tera.zeros([3])] })).not.toThrow();
    expect(() => kernels.tuckerCoreGrad(core, core, scales, { out: [scales[0], tera.zeros([3])] })).toThrow(
      /out\[0\] must not share memory with scales\[0\]/,
    );
  });
});

describe('kroneckerRows', () => {
  it.each([
    ['two modes', 5, [4, 3], [2, 3]],
    ['one mode', 3, [9], [4]],
    ['16 x 16 rows (vector tiles)', 6, [16, 16], [16, 16]],
    ['a prime mode and reduced ranks', 4, [3, 43], [2, 4]],
    ['three modes, odd sizes', 7, [3, 5, 7], [2, 5, 4]],
  ])('expands and contracts rows with %s', (_, rows, modes, ranks) => {
    const { factors, scales } = parts(modes, ranks);
    for (const contract of [false, true]) {
      for (const scaled of [true, false]) {
        const inRow = contract ? product(modes) : product(ranks);
        const x = randomArray(rows * inRow, next);
        const y = kernels.kroneckerRows(
          t(x, [rows, inRow]),
          factors.map((f, n) => t(f, [modes[n], ranks[n]])),
          scaled ? scales.map((s) => t(s, [s.length])) : undefined,
          { alpha: 1.5, contract },
        );
        const ref = rows64(x, modes, ranks, factors, scaled ? scales : scales.map(() => null), 1.5, contract);
        expect(y.shape).toEqual([rows, contract ? product(ranks) : product(modes)]);
        expectAllClose(y.toFloat32Array(), ref.value, {
          rtol: 1e-5,
          atol: 1e-6,
          magnitude: ref.magnitude,
          what: `${contract ? 'contract' : 'expand'}${scaled ? ', scaled' : ''}`,
        });
      }
    }
  });

  it('handles rows wider than a cache slab and modes large enough for OpenBLAS (sampled rows)', () => {
    for (const [modes, ranks] of [
      [
        [40, 40, 24],
        [8, 40, 6],
      ],
      [[100], [80]],
    ]) {
      const rows = 3;
      const { factors, scales } = parts(modes, ranks);
      const x = randomArray(rows * product(modes), next);
      const y = kernels.kroneckerRows(
        t(x, [rows, product(modes)]),
        factors.map((f, n) => t(f, [modes[n], ranks[n]])),
        scales.map((s) => t(s, [s.length])),
        { contract: true },
      );
      const ref = rows64(x, modes, ranks, factors, scales, 1, true);
      expectAllClose(y.toFloat32Array(), ref.value, { rtol: 1e-5, atol: 1e-6, magnitude: ref.magnitude });
    }
  });

  it('keeps leading dimensions, and names rows of the wrong width', () => {
    const factors = [t(randomArray(6, next), [3, 2])];
    const y = kernels.kroneckerRows(t(randomArray(24, next), [2, 2, 3, 2]), factors);
    expect(y.shape).toEqual([2, 2, 3, 3]);
    expect(() => kernels.kroneckerRows(t(randomArray(9, next), [3, 3]), factors)).toThrow(
      /x has shape \[3, 3\] but its rows must hold 2 values \(the product of the ranks\)/,
    );
    expect(() => kernels.kroneckerRows(t(randomArray(9, next), [3, 3]), factors, [t([1], [1])])).toThrow(
      /scales\[0\] has shape \[1\] but must be \[2\]/,
    );
  });
});

describe('kroneckerScale and kroneckerScaleGrad', () => {
  const ranks = [3, 4, 2];
  const scales = ranks.map((r) => randomArray(r, next));
  const lambda = (r: number) => unravel(r, ranks).reduce((acc, v, n) => acc * scales[n][v], 1);
  const scaleTensors = () => scales.map((s) => t(s, [s.length]));

  it('scales every row by alpha s_1 (x) s_2 (x) s_3, also in place', () => {
    const rows = 5;
    const x = randomArray(rows * 24, next);
    const want = Float64Array.from(x, (v, i) => v * -0.6 * lambda(i % 24));
    const y = kernels.kroneckerScale(t(x, [rows, 24]), scaleTensors(), { alpha: -0.6 });
    // One float rounding of lambda, one of the product.
    expectAllClose(y.toFloat32Array(), want, { rtol: 3e-7, atol: 0, what: 'y' });
    const inPlace = t(x, [rows, 24]);
    expect(kernels.kroneckerScale(inPlace, scaleTensors(), { alpha: -0.6, out: inPlace })).toBe(inPlace);
    expectAllClose(inPlace.toFloat32Array(), y.toFloat32Array(), { rtol: 0, atol: 0 });
  });

  it('gives the gradient of alpha sum a b lambda with respect to each scale vector', () => {
    const rows = 6;
    const a = randomArray(rows * 24, next);
    const b = randomArray(rows * 24, next);
    const grads = kernels.kroneckerScaleGrad(t(a, [rows, 24]), t(b, [rows, 24]), scaleTensors(), { alpha: 0.9 });
    const m = Float64Array.from({ length: 24 }, (_, r) => {
      let sum = 0;
      for (let row = 0; row < rows; row++) sum += a[row * 24 + r] * b[row * 24 + r];
      return 0.9 * sum;
    });
    const ref = coreGrad64(m, new Float64Array(24).fill(1), ranks, scales);
    grads.forEach((g, n) =>
      expectAllClose(g.toFloat32Array(), ref.value[n], {
        rtol: 1e-6,
        atol: 1e-7,
        magnitude: ref.magnitude[n],
        what: `ds_${n + 1}`,
      }),
    );
  });

  it('names mismatched operands', () => {
    const x = t(randomArray(48, next), [2, 24]);
    expect(() => kernels.kroneckerScale(t(randomArray(10, next), [2, 5]), scaleTensors())).toThrow(
      /x has shape \[2, 5\] but its rows must hold 24 values/,
    );
    expect(() => kernels.kroneckerScale(x, scaleTensors(), { out: scaleTensors()[0] })).toThrow(
      /out has shape \[3\] but the result is \[2, 24\]/,
    );
    expect(() => kernels.kroneckerScaleGrad(x, t(randomArray(24, next), [1, 24]), scaleTensors())).toThrow(
      /a has shape \[2, 24\] but b has \[1, 24\]/,
    );
  });
});

describe('GEMM-backed and multi-pass mode products', () => {
  it('reconstructs an order-2 update at full rank (two large modes, OpenBLAS) on sampled entries', () => {
    const modes = [100, 72];
    const ranks = [100, 72];
    const { factors, scales } = parts(modes, ranks);
    const core = randomArray(product(ranks), next);
    const out = kernels
      .tuckerReconstruct(
        t(core, ranks),
        factors.map((f, n) => t(f, [modes[n], ranks[n]])),
        scales.map((s) => t(s, [s.length])),
        { alpha: 0.5 },
      )
      .toFloat32Array();
    for (const index of [0, out.length - 1, ...Array.from({ length: 6 }, () => Math.floor(next() * out.length))]) {
      const [i, j] = unravel(index, modes);
      let value = 0;
      let magnitude = 0;
      for (let r1 = 0; r1 < ranks[0]; r1++) {
        for (let r2 = 0; r2 < ranks[1]; r2++) {
          const term =
            0.5 *
            core[r1 * ranks[1] + r2] *
            factors[0][i * ranks[0] + r1] *
            scales[0][r1] *
            factors[1][j * ranks[1] + r2] *
            scales[1][r2];
          value += term;
          magnitude += Math.abs(term);
        }
      }
      expectAllClose([out[index]], [value], { rtol: 1e-5, atol: 1e-6, magnitude: [magnitude], what: `X[${i}, ${j}]` });
    }
  });

  it.each([
    ['the first mode', [13, 6, 11], 0, 9],
    ['a middle mode, rows of 11 (masked vector tails)', [13, 6, 11], 1, 7],
    ['the last mode', [13, 6, 11], 2, 5],
    ['a large mode (OpenBLAS)', [3, 80, 5], 1, 70],
    ['a large middle mode over many slabs (small OpenBLAS GEMMs spread over the threads)', [40, 64, 9], 1, 64],
  ])('modeProduct on %s', (_, shape, mode, rows) => {
    const x = randomArray(product(shape), next);
    const m = randomArray(rows * shape[mode], next);
    const scale = randomArray(shape[mode], next);
    const y = kernels.modeProduct(t(x, shape), t(m, [rows, shape[mode]]), mode, t(scale, [scale.length]));
    const outShape = [...shape];
    outShape[mode] = rows;
    const value = new Float64Array(product(outShape));
    const magnitude = new Float64Array(value.length);
    for (let o = 0; o < value.length; o++) {
      const idx = unravel(o, outShape);
      const j = idx[mode];
      for (let k = 0; k < shape[mode]; k++) {
        idx[mode] = k;
        const flat = idx.reduce((acc, v, n) => acc * shape[n] + v, 0);
        const term = m[j * shape[mode] + k] * scale[k] * x[flat];
        value[o] += term;
        magnitude[o] += Math.abs(term);
      }
    }
    expectAllClose(y.toFloat32Array(), value, { rtol: 1e-5, atol: 1e-6, magnitude });
  });

  it('gives the same bits on 1 and 2 threads where small OpenBLAS GEMMs are spread over the threads', () => {
    const shape = [40, 64, 9];
    const x = t(randomArray(product(shape), next), shape);
    const m = t(randomArray(64 * 64, next), [64, 64]);
    const core = t(randomArray(64 ** 3, next), [64, 64, 64]);
    const factors = [0, 1, 2].map(() => t(randomArray(64 * 64, next), [64, 64]));
    const run = (threads: number) => {
      tera.setNumThreads(threads);
      return [kernels.modeProduct(x, m, 1), kernels.tuckerReconstruct(core, factors)].map((y) => y.toFloat32Array());
    };
    try {
      const [one, two] = [run(1), run(2)];
      expect(two[0].every((v, i) => Object.is(v, one[0][i]))).toBe(true);
      expect(two[1].every((v, i) => Object.is(v, one[1][i]))).toBe(true);
    } finally {
      tera.setNumThreads(0);
    }
  });
});
