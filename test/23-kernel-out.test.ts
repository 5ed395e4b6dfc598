/**
 * `out` arguments of the public kernels (as torch's `out=`): the result is
 * written into the caller's tensor, which is checked (shape, device, aliasing)
 * before anything runs and returned as given. Fresh results are allocated
 * without zero-filling, so every test here first fills recycled memory with NaN:
 * an element a kernel failed to write would show.
 */
import * as tera from '../lib';
import { gemm, modeProduct, reconstruct, randomArray, rng } from './helpers/reference';
import { expectAllClose } from './helpers/tolerance';

const { kernels } = tera;
const next = rng(2024);
const t = (data: Float32Array, shape: number[]) => tera.tensor(data, shape, { device: 'cpu' });
const random = (shape: number[]) =>
  t(
    randomArray(
      shape.reduce((p, d) => p * d, 1),
      next,
    ),
    shape,
  );
const nanFilled = (shape: number[]) => tera.full(shape, NaN, { device: 'cpu' });

/** Leaves NaN-filled blocks of these sizes in the allocator, for the next allocations to reuse. */
function pollute(sizes: number[]): void {
  for (let round = 0; round < 4; round++) for (const size of sizes) nanFilled([size]).dispose();
}

const modes = [5, 6, 7];
const ranks = [3, 6, 2];
const core = random(ranks);
const factors = modes.map((m, n) => random([m, ranks[n]]));
const scales = ranks.map((r) => random([r]));
const arrays = {
  core: core.toFloat32Array(),
  factors: factors.map((f) => f.toFloat32Array()),
  scales: scales.map((s) => s.toFloat32Array()),
};
const want = reconstruct(arrays.core, modes, ranks, arrays.factors, arrays.scales, 0.5);

describe('results are written in full, into out or into fresh memory', () => {
  it('tuckerReconstruct', async () => {
    pollute([210]);
    const fresh = kernels.tuckerReconstruct(core, factors, scales, { alpha: 0.5 });
    expectAllClose(fresh.toFloat32Array(), want.value, { rtol: 1e-5, magnitude: want.magnitude });
    const out = nanFilled(modes);
    expect(kernels.tuckerReconstruct(core, factors, scales, { alpha: 0.5, out })).toBe(out);
    expect(out.toFloat32Array()).toEqual(fresh.toFloat32Array());
    out.set(new Float32Array(210).fill(NaN));
    expect(await kernels.tuckerReconstructAsync(core, factors, scales, { alpha: 0.5, out })).toBe(out);
    expect(out.toFloat32Array()).toEqual(fresh.toFloat32Array());
  });

  it('modeProduct', async () => {
    const x = random([4, 6, 3]);
    const matrix = random([5, 6]);
    const scale = random([6]);
    const expected = modeProduct(x.toFloat32Array(), [4, 6, 3], 1, matrix.toFloat32Array(), 5, scale.toFloat32Array());
    pollute([60]);
    const fresh = kernels.modeProduct(x, matrix, 1, scale);
    expectAllClose(fresh.toFloat32Array(), expected.value, { rtol: 1e-5, magnitude: expected.magnitude });
    const out = nanFilled([4, 5, 3]);
    expect(kernels.modeProduct(x, matrix, 1, scale, { out })).toBe(out);
    expect(out.toFloat32Array()).toEqual(fresh.toFloat32Array());
    out.set(new Float32Array(60).fill(NaN));
    expect(await kernels.modeProductAsync(x, matrix, 1, scale, { out })).toBe(out);
    expect(out.toFloat32Array()).toEqual(fresh.toFloat32Array());
  });

  it('tuckerScaleGrad', async () => {
    const gradX = random(modes);
    pollute(ranks);
    const fresh = kernels.tuckerScaleGrad(gradX, core, factors, scales);
    fresh.forEach((g) => expect(g.toFloat32Array().every(Number.isFinite)).toBe(true));
    const out = ranks.map((r) => nanFilled([r]));
    const grads = kernels.tuckerScaleGrad(gradX, core, factors, scales, { out });
    grads.forEach((g, n) => {
      expect(g).toBe(out[n]);
      expect(g.toFloat32Array()).toEqual(fresh[n].toFloat32Array());
    });
    out.forEach((o) => o.set(new Float32Array(o.size).fill(NaN)));
    const later = await kernels.tuckerScaleGradAsync(gradX, core, factors, scales, { out });
    later.forEach((g, n) => expect(g.toFloat32Array()).toEqual(fresh[n].toFloat32Array()));
  });

  it('gemm, with and without transposes', async () => {
    const a = random([7, 5]);
    const b = random([5, 3]);
    const expected = gemm(a.toFloat32Array(), b.toFloat32Array(), 7, 3, 5, false, false, 2, 0, null);
    pollute([21]);
    const fresh = kernels.gemm(a, b, { alpha: 2 });
    expectAllClose(fresh.toFloat32Array(), expected.value, { rtol: 1e-5, magnitude: expected.magnitude });
    const out = nanFilled([7, 3]);
    expect(kernels.gemm(a, b, { alpha: 2, out })).toBe(out);
    expect(out.toFloat32Array()).toEqual(fresh.toFloat32Array());
    const outT = nanFilled([3, 7]);
    expect(await kernels.gemmAsync(b, a, { transA: true, transB: true, out: outT })).toBe(outT);
    const transposed = gemm(b.toFloat32Array(), a.toFloat32Array(), 3, 7, 5, true, true, 1, 0, null);
    expectAllClose(outT.toFloat32Array(), transposed.value, { rtol: 1e-5, magnitude: transposed.magnitude });
  });

  it('tensors made from data, clones, full() and random fills', () => {
    pollute([64]);
    const data = randomArray(64, next);
    expect(t(data, [64]).toFloat32Array()).toEqual(data);
    expect(t(data, [8, 8]).clone().toFloat32Array()).toEqual(data);
    expect(tera.full([64], 3).toFloat32Array()).toEqual(new Float32Array(64).fill(3));
    expect(
      tera.random
        .uniform([64], { seed: 3 })
        .toFloat32Array()
        .every((v) => v >= 0 && v < 1),
    ).toBe(true);
    expect(tera.random.normal([64], { seed: 3 }).toFloat32Array().every(Number.isFinite)).toBe(true);
  });
});

describe('out is checked before anything runs, and a refused out is left as it was', () => {
  const untouched = (out: tera.Tensor, body: () => unknown, message: string | RegExp) => {
    const before = out.toFloat32Array();
    expect(body).toThrow(message);
    expect(out.toFloat32Array()).toEqual(before);
  };

  it('a wrong shape', () => {
    const out = tera.full([5, 6, 8], 7);
    untouched(
      out,
      () => kernels.tuckerReconstruct(core, factors, scales, { out }),
      'tuckerReconstruct: out has shape [5, 6, 8] but the result is [5, 6, 7]',
    );
    untouched(
      out,
      () => kernels.modeProduct(random([4, 6, 3]), random([5, 6]), 1, null, { out }),
      'modeProduct: out has shape [5, 6, 8] but the result is [4, 5, 3]',
    );
    untouched(
      out,
      () => kernels.gemm(random([2, 3]), random([3, 4]), { out }),
      'gemm: out has shape [5, 6, 8] but the result is [2, 4]',
    );
  });

  it('memory shared with an input, views included', () => {
    const x = random([6, 6]);
    const square = random([6, 6]);
    untouched(
      x,
      () => kernels.modeProduct(x, square, 0, null, { out: x }),
      'modeProduct: out must not share memory with x',
    );
    const view = square.reshape([36]).reshape([6, 6]);
    untouched(view, () => kernels.gemm(x, square, { out: view }), 'gemm: out must not share memory with b');
    const coreView = core.reshape(ranks);
    const sameShape = kernels.tuckerReconstruct(
      coreView,
      ranks.map((r) => random([r, r])),
    );
    untouched(
      coreView,
      () =>
        kernels.tuckerReconstruct(
          core,
          ranks.map((r) => random([r, r])),
          undefined,
          { out: coreView },
        ),
      'tuckerReconstruct: out must not share memory with core',
    );
    sameShape.dispose();
  });

  it('tuckerScaleGrad outputs: one per mode, distinct from each other and from the inputs', () => {
    const square = {
      core: random([3, 3]),
      factors: [random([4, 3]), random([5, 3])],
      scales: [random([3]), random([3])],
    };
    const gradX = random([4, 5]);
    const scaleGrad = (out: tera.Tensor[]) => () =>
      kernels.tuckerScaleGrad(gradX, square.core, square.factors, square.scales, { out });
    const out = [tera.full([3], 7), tera.full([3], 7)];
    untouched(
      out[0],
      scaleGrad(out.slice(1)),
      'tuckerScaleGrad: out must be an array of 2 tensors, one per mode, got 1',
    );
    untouched(
      out[0],
      scaleGrad([out[0], out[0].reshape([3])]),
      'tuckerScaleGrad: out[1] must not share memory with out[0]',
    );
    untouched(
      out[0],
      scaleGrad([out[0], square.scales[1]]),
      'tuckerScaleGrad: out[1] must not share memory with scales[1]',
    );
    untouched(
      out[1],
      scaleGrad([out[1], tera.full([4], 7)]),
      'tuckerScaleGrad: out[1] has shape [4] but the result is [3]',
    );
  });

  it('a disposed out, and gemm options that would be ignored', () => {
    const a = random([2, 3]);
    const b = random([3, 4]);
    const gone = tera.zeros([2, 4]);
    gone.dispose();
    expect(() => kernels.gemm(a, b, { out: gone })).toThrow('gemm: out [2, 4] has been disposed');
    const c = tera.full([2, 4], 1);
    untouched(
      c,
      () => kernels.gemm(a, b, { c, out: tera.zeros([2, 4]) }),
      'gemm: give c (to accumulate into) or out (to overwrite), not both',
    );
    expect(() => kernels.gemm(a, b, { beta: 2 })).toThrow(
      'gemm: beta weighs the previous contents of c; without c there are none',
    );
    expect(() => kernels.gemm(a, b, { beta: 0, out: tera.zeros([2, 4]) })).toThrow(
      'gemm: beta weighs the previous contents of c; without c there are none',
    );
  });
});
