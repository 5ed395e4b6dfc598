import * as tera from '../lib';
import { gemm, modeProduct, product, randomArray, reconstruct, rng, type Reconstruction } from './helpers/reference';
import { expectAllClose } from './helpers/tolerance';

/** float32 result within rtol 1e-5 of the sum of |terms| (+1e-6) of the float64 reference. */
const expectMatches = (got: ArrayLike<number>, ref: Reconstruction) =>
  expectAllClose(got, ref.value, { rtol: 1e-5, atol: 1e-6, magnitude: ref.magnitude });

const { kernels } = tera;
const t = (data: Float32Array, shape: number[]) => tera.tensor(data, shape, { device: 'cpu' });

interface TuckerCase {
  modes: number[];
  ranks: number[];
}

/** Random Tucker problems: orders 1-6, odd sizes, ranks below and equal to the modes. */
function tuckerCases(): TuckerCase[] {
  const next = rng(7);
  const cases: TuckerCase[] = [
    { modes: [5], ranks: [3] },
    { modes: [7, 3], ranks: [7, 3] },
    { modes: [16, 16], ranks: [16, 16] }, // full-width vector tiles
    { modes: [3, 5, 7], ranks: [2, 5, 4] },
    { modes: [9, 2, 3, 2], ranks: [9, 2, 3, 2] },
    { modes: [2, 3, 2, 3, 2], ranks: [1, 3, 2, 2, 2] },
    { modes: [3, 2, 2, 3, 2, 2], ranks: [3, 2, 2, 3, 2, 2] },
  ];
  for (let i = 0; i < 6; i++) {
    const order = 1 + Math.floor(next() * 6);
    const modes = Array.from({ length: order }, () => 1 + Math.floor(next() * (order <= 2 ? 20 : order <= 4 ? 5 : 3)));
    const ranks = modes.map((m) => (next() < 0.5 ? m : 1 + Math.floor(next() * m)));
    cases.push({ modes, ranks });
  }
  return cases;
}

function tuckerInputs(c: TuckerCase, seed: number) {
  const next = rng(seed);
  const core = randomArray(product(c.ranks), next);
  const factors = c.modes.map((m, n) => randomArray(m * c.ranks[n], next));
  const scales = c.ranks.map((r) => randomArray(r, next));
  return { core, factors, scales };
}

describe('tuckerReconstruct', () => {
  it.each(tuckerCases().map((c) => [JSON.stringify(c), c] as const))(
    'matches the float64 definition for %s',
    (_, c) => {
      const { core, factors, scales } = tuckerInputs(c, 11);
      const out = kernels.tuckerReconstruct(
        t(core, c.ranks),
        factors.map((f, n) => t(f, [c.modes[n], c.ranks[n]])),
        scales.map((s) => t(s, [s.length])),
        { alpha: 0.75 },
      );
      expect(out.shape).toEqual(c.modes);
      const ref = reconstruct(core, c.modes, c.ranks, factors, scales, 0.75);
      expectMatches(out.toFloat32Array(), ref);
    },
  );

  it('treats missing scales as ones and leaves its inputs unchanged', () => {
    const c = { modes: [4, 3, 5], ranks: [4, 2, 5] };
    const { core, factors } = tuckerInputs(c, 3);
    const coreT = t(core, c.ranks);
    const out = kernels.tuckerReconstruct(
      coreT,
      factors.map((f, n) => t(f, [c.modes[n], c.ranks[n]])),
    );
    const ref = reconstruct(core, c.modes, c.ranks, factors, [null, null, null]);
    expectMatches(out.toFloat32Array(), ref);
    expect(coreT.toFloat32Array()).toEqual(core);
  });

  // Large enough for the cache-blocked schedule: trailing-mode slabs, then one or
  // several leading modes on column blocks, staged in the output or (ranks above
  // modes) in a separate buffer. Checked on sampled entries, corners included.
  it.each([
    ['16^4 (one leading mode)', { modes: [16, 16, 16, 16], ranks: [16, 16, 16, 16] }],
    ['16^5 (two leading modes)', { modes: [16, 16, 16, 16, 16], ranks: [16, 16, 16, 16, 16] }],
    ['ranks above modes (staging buffer)', { modes: [10, 12, 16, 16, 16], ranks: [16, 16, 16, 16, 16] }],
    ['ranks below modes', { modes: [20, 24, 18, 16], ranks: [12, 24, 9, 16] }],
  ])('matches sampled float64 entries on a blocked problem: %s', (_, c) => {
    const { core, factors, scales } = tuckerInputs(c, 5);
    const out = kernels
      .tuckerReconstruct(
        t(core, c.ranks),
        factors.map((f, n) => t(f, [c.modes[n], c.ranks[n]])),
        scales.map((s) => t(s, [s.length])),
      )
      .toFloat32Array();
    const next = rng(9);
    const sample = [0, out.length - 1, ...Array.from({ length: 8 }, () => Math.floor(next() * out.length))];
    for (const index of sample) {
      // X[j] by contracting the core with one row of each scaled factor, last mode first.
      let rest = index;
      let value = Float64Array.from(core);
      let magnitude = value.map(Math.abs);
      for (let n = c.modes.length - 1; n >= 0; n--) {
        const j = rest % c.modes[n];
        rest = Math.floor(rest / c.modes[n]);
        const rank = c.ranks[n];
        const nextValue = new Float64Array(value.length / rank);
        const nextMagnitude = new Float64Array(value.length / rank);
        for (let a = 0; a < nextValue.length; a++) {
          for (let r = 0; r < rank; r++) {
            const u = factors[n][j * rank + r] * scales[n][r];
            nextValue[a] += value[a * rank + r] * u;
            nextMagnitude[a] += magnitude[a * rank + r] * Math.abs(u);
          }
        }
        value = nextValue;
        magnitude = nextMagnitude;
      }
      expect(Math.abs(out[index] - value[0])).toBeLessThanOrEqual(1e-5 * magnitude[0] + 1e-6);
    }
  });

  it('runs off the main thread with the same result', async () => {
    const c = { modes: [6, 5, 4], ranks: [3, 5, 2] };
    const { core, factors, scales } = tuckerInputs(c, 4);
    const args = [
      t(core, c.ranks),
      factors.map((f, n) => t(f, [c.modes[n], c.ranks[n]])),
      scales.map((s) => t(s, [s.length])),
    ] as const;
    const sync = kernels.tuckerReconstruct(...args).toFloat32Array();
    const pending = kernels.tuckerReconstructAsync(...args);
    expect(pending).toBeInstanceOf(Promise);
    expect((await pending).toFloat32Array()).toEqual(sync);
  });
});

describe('modeProduct', () => {
  it.each([
    [[5], 0, 3],
    [[4, 7], 0, 2],
    [[4, 7], 1, 9],
    [[3, 17, 5], 1, 16],
    [[2, 3, 4, 5, 3], 4, 6],
    [[2, 3, 4, 5, 3, 2], 2, 1],
    [[33, 40], 1, 7], // wide enough for the vector tiles and their tails
  ])('x %j, mode %d, to %d rows matches the float64 definition', (shape, mode, rows) => {
    const next = rng(mode * 31 + rows);
    const x = randomArray(product(shape), next);
    const m = randomArray(rows * shape[mode], next);
    const s = randomArray(shape[mode], next);
    const out = kernels.modeProduct(t(x, shape), t(m, [rows, shape[mode]]), mode, t(s, [shape[mode]]));
    const expectedShape = [...shape];
    expectedShape[mode] = rows;
    expect(out.shape).toEqual(expectedShape);
    expectMatches(out.toFloat32Array(), modeProduct(x, shape, mode, m, rows, s));
    const plain = kernels.modeProduct(t(x, shape), t(m, [rows, shape[mode]]), mode);
    expectMatches(plain.toFloat32Array(), modeProduct(x, shape, mode, m, rows, null));
  });
});

describe('gemm', () => {
  const cases: [boolean, boolean, number, number][] = [
    [false, false, 1, 0],
    [true, false, 0.5, 0],
    [false, true, -2, 0.5],
    [true, true, 1, -1],
  ];
  it.each(cases)('transA=%s transB=%s alpha=%d beta=%d matches float64', (transA, transB, alpha, beta) => {
    const [m, n, k] = [7, 5, 13];
    const next = rng(m + n + k + (transA ? 1 : 0) + (transB ? 2 : 0));
    const a = randomArray(m * k, next);
    const b = randomArray(k * n, next);
    const c0 = randomArray(m * n, next);
    const c = t(c0, [m, n]);
    const result = kernels.gemm(t(a, transA ? [k, m] : [m, k]), t(b, transB ? [n, k] : [k, n]), {
      transA,
      transB,
      alpha,
      beta,
      c,
    });
    expect(result).toBe(c);
    expectMatches(result.toFloat32Array(), gemm(a, b, m, n, k, transA, transB, alpha, beta, c0));
  });

  it('allocates C when none is given, and has an async twin', async () => {
    const a = t(Float32Array.from([1, 2, 3, 4]), [2, 2]);
    const b = t(Float32Array.from([5, 6, 7, 8]), [2, 2]);
    expect(Array.from(kernels.gemm(a, b).toFloat32Array())).toEqual([19, 22, 43, 50]);
    expect(Array.from((await kernels.gemmAsync(a, b, { transA: true })).toFloat32Array())).toEqual([26, 30, 38, 44]);
  });
});

describe('tuckerScaleGrad', () => {
  /** <gradX, X(l)> in float64, the function whose gradient the kernel returns. */
  function objective(
    c: TuckerCase,
    core: Float32Array,
    factors: Float32Array[],
    scales: Float64Array[],
    gradX: Float32Array,
  ) {
    const x = reconstruct(core, c.modes, c.ranks, factors, scales).value;
    return x.reduce((acc, v, i) => acc + v * gradX[i], 0);
  }

  it.each([
    ['order 1', { modes: [6], ranks: [4] }, false],
    ['order 3, R < I', { modes: [4, 3, 5], ranks: [3, 2, 4] }, false],
    ['order 3, l_1 = 0 as at initialisation', { modes: [4, 3, 5], ranks: [4, 3, 5] }, true],
    ['order 5', { modes: [2, 3, 2, 3, 2], ranks: [2, 2, 2, 3, 1] }, false],
    ['order 6, l_1 = 0', { modes: [2, 2, 3, 2, 2, 2], ranks: [2, 2, 3, 2, 2, 2] }, true],
  ])('matches finite differences of <gradX, X(l)> for %s', (_, c, zeroFirst) => {
    const next = rng(21);
    const core = randomArray(product(c.ranks), next);
    const factors = c.modes.map((m, n) => randomArray(m * c.ranks[n], next));
    const scales = c.ranks.map((r) => randomArray(r, next));
    if (zeroFirst) scales[0].fill(0);
    const gradX = randomArray(product(c.modes), next);

    const grads = kernels.tuckerScaleGrad(
      t(gradX, c.modes),
      t(core, c.ranks),
      factors.map((f, n) => t(f, [c.modes[n], c.ranks[n]])),
      scales.map((s) => t(s, [s.length])),
    );

    // The objective is linear in each single l_n[r], so central differences are
    // exact up to float64 rounding; the kernel's float32 projection sets the tolerance.
    const h = 0.5;
    grads.forEach((g, n) => {
      const got = g.toFloat32Array();
      expect(got.length).toBe(c.ranks[n]);
      for (let r = 0; r < c.ranks[n]; r++) {
        const shifted = (delta: number) => {
          const s64 = scales.map((s) => Float64Array.from(s));
          s64[n][r] += delta;
          return objective(c, core, factors, s64, gradX);
        };
        const fd = (shifted(h) - shifted(-h)) / (2 * h);
        const magnitude = Math.abs(shifted(h)) + Math.abs(shifted(-h)) + 1;
        expect(Math.abs(got[r] - fd)).toBeLessThanOrEqual(1e-5 * magnitude * 10);
      }
    });
  });

  it('agrees between its sync and async forms and leaves gradX unchanged', async () => {
    const c = { modes: [4, 4, 4], ranks: [4, 4, 4] };
    const next = rng(2);
    const gradX = randomArray(64, next);
    const gradT = t(gradX, c.modes);
    const args = [
      gradT,
      t(randomArray(64, next), c.ranks),
      c.modes.map(() => t(randomArray(16, next), [4, 4])),
      c.ranks.map(() => t(randomArray(4, next), [4])),
    ] as const;
    const sync = kernels.tuckerScaleGrad(...args).map((g) => g.toFloat32Array());
    const async_ = (await kernels.tuckerScaleGradAsync(...args)).map((g) => g.toFloat32Array());
    expect(async_).toEqual(sync);
    expect(gradT.toFloat32Array()).toEqual(gradX);
  });
});

describe('kernel argument checks', () => {
  const core = () => t(new Float32Array(6), [2, 3]);
  const factor = (i: number, r: number) => t(new Float32Array(i * r), [i, r]);

  it('names a factor/core mismatch', () => {
    expect(() => kernels.tuckerReconstruct(core(), [factor(4, 2), factor(5, 4)])).toThrow(
      /factors\[1\] has shape \[5, 4\] but must be \[I_1, 3\] to match core \[2, 3\]/,
    );
    expect(() => kernels.tuckerReconstruct(core(), [factor(4, 2)])).toThrow(/has order 2 but 1 factors were given/);
    expect(() =>
      kernels.tuckerReconstruct(core(), [factor(4, 2), factor(5, 3)], [t(new Float32Array(3), [3]), null]),
    ).toThrow(/scales\[0\] has shape \[3\] but must be \[2\]/);
  });

  it('refuses orders above 8', () => {
    const big = t(new Float32Array(512), [2, 2, 2, 2, 2, 2, 2, 2, 2]);
    expect(() => kernels.tuckerReconstruct(big, [])).toThrow(/orders 1 to 8 are supported/);
  });

  it('names an out-of-range mode', () => {
    expect(() => kernels.modeProduct(core(), factor(2, 2), 2)).toThrow(
      /mode 2 is out of range for a tensor of order 2/,
    );
    expect(() => kernels.modeProduct(core(), factor(2, 2), -1)).toThrow(/mode -1 is out of range/);
    expect(() => kernels.modeProduct(core(), factor(2, 2), 1)).toThrow(
      /matrix has shape \[2, 2\] but must be \[J, 3\]/,
    );
  });

  it('names mismatched gemm shapes and non-tensors', () => {
    expect(() => kernels.gemm(factor(2, 3), factor(2, 3))).toThrow(
      /inner dimensions differ: op\(a\) is \[2, 3\] and op\(b\) is \[2, 3\]/,
    );
    expect(() => kernels.gemm(factor(2, 3), {} as tera.Tensor)).toThrow(/gemm: b must be a Tensor/);
    expect(() => kernels.gemm(factor(2, 3), factor(3, 2), { c: factor(3, 3) })).toThrow(
      /c has shape \[3, 3\], expected \[2, 2\]/,
    );
  });

  it('names a gradX of the wrong shape', () => {
    expect(() =>
      kernels.tuckerScaleGrad(t(new Float32Array(20), [4, 5]), core(), [factor(4, 2), factor(6, 3)], [null, null]),
    ).toThrow(/gradX has shape \[4, 5\] but the factors give \[4, 6\]/);
  });

  it('keeps inputs unchanged and the process alive after a refused call', () => {
    const a = t(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3]);
    expect(() => kernels.gemm(a, a)).toThrow(/inner dimensions differ/);
    expect(Array.from(a.toFloat32Array())).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('refuses raw native calls with storages of the wrong size instead of crashing', () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const native = require('../lib/native/loader').native();
    const small = new native.Storage(3, 'cpu');
    const out = new native.Storage(16, 'cpu');
    expect(() => native.gemm(false, false, 4, 4, 4, 1, small, small, 0, out)).toThrow(
      /gemm: a has 3 elements, expected 16/,
    );
    expect(() => native.tuckerReconstruct(small, [3], [3], [small], [], 1, small)).toThrow(
      /the output tensor must not also be an input/,
    );
    expect(() => native.tuckerReconstruct(small, [2 ** 30, 2 ** 30], [1, 3], [small, small], [], 1, out)).toThrow(
      /more than 2\^48 elements/,
    );
    expect(() => native.fill({}, 1)).toThrow(/fill argument 0 is not a tensor storage/);
  });
});
