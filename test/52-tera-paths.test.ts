/**
 * TeRA's two evaluation paths (docs/math.md, "The factored evaluation, and choosing
 * the path"): the merged path (W0 + alpha dW formed) and the factored path (dW never
 * formed) against the same float64 reference, across token counts, ranks and orders,
 * for y, dx and every dl_n; and the cost model's choice, which the layer shows.
 */
import * as tera from '../lib';
import { autograd as ag, adapters, nn } from '../lib';
import { type CallNeeds, planPath } from '../lib/adapters/tera/cost';
import { gemm as gemm64, product, randomArray, reconstruct, rng } from './helpers/reference';
import { expectAllClose } from './helpers/tolerance';

const next = rng(52);
const live: tera.PeftModel[] = [];
afterEach(() => {
  live.splice(0).forEach((peft) => peft.unload());
  expect(adapters.workspaceCount()).toBe(0);
});

interface Case {
  name: string;
  outModes: number[];
  inModes: number[];
  /** Out ranks then in ranks; null: full rank. */
  ranks: number[] | null;
}

const CASES: Case[] = [
  { name: 'order 2, full rank', outModes: [6], inModes: [8], ranks: null },
  { name: 'order 4, full rank', outModes: [3, 4], inModes: [2, 5], ranks: null },
  { name: 'order 4, ranks below the modes', outModes: [3, 4], inModes: [2, 5], ranks: [2, 3, 1, 2] },
  { name: 'order 5, mixed ranks', outModes: [2, 2, 3], inModes: [3, 4], ranks: [1, 2, 3, 2, 4] },
];

/** One adapted Linear on `evaluation`'s path, with random l_n (the same for the same seed). */
function adaptedLinear(c: Case, evaluation: 'merged' | 'factored', alpha: number) {
  const dOut = product(c.outModes);
  const dIn = product(c.inModes);
  const model = new nn.MLP([dIn, dOut], { seed: 9 });
  const config = new tera.TeraConfig({
    targetModules: ['0'],
    outModes: c.outModes,
    inModes: c.inModes,
    ranks: c.ranks ?? undefined,
    alpha,
    evaluation,
  });
  const peft = tera.injectAdapter(model, config);
  live.push(peft);
  const [[, adapted]] = peft.adapterLayers();
  const layer = adapted.adapter('default') as adapters.TeraLayer;
  const values = rng(7);
  layer.lambdas.forEach((l) => l.data.set(randomArray(l.size, values)));
  return { peft, layer, base: adapted.baseLayer, dOut, dIn };
}

/** alpha X(l) in float64, from the definition; [d_out, d_in] row-major. */
function update64(layer: adapters.TeraLayer, lambdas: Float64Array[]): Float64Array {
  const { core, factors, shape } = layer.shared;
  const f64 = (t: tera.Tensor) => Float64Array.from(t.toFloat32Array());
  return reconstruct(f64(core), shape.modes, shape.ranks, factors.map(f64), lambdas, layer.alpha).value;
}

describe('the merged and the factored path against one float64 reference', () => {
  for (const c of CASES) {
    it.each([1, 33])(`${c.name}, T %i: y, dx and every dl_n`, (rows) => {
      const x = randomArray(rows * product(c.inModes), next);
      const dY = randomArray(rows * product(c.outModes), next);
      for (const evaluation of ['merged', 'factored'] as const) {
        const { layer, peft, base, dIn } = adaptedLinear(c, evaluation, 0.75);
        const xv = new ag.Var(tera.tensor(x, [rows, dIn]), { requiresGrad: true });
        const y = peft.forward(xv);
        expect(layer.lastPath).toBe(evaluation);
        y.backward(tera.tensor(dY, y.shape));

        const x64 = Float64Array.from(x);
        const dY64 = Float64Array.from(dY);
        const l64 = layer.lambdas.map((l) => Float64Array.from(l.data.toFloat32Array()));
        const { outFeatures: dOut } = base;
        const dW = update64(layer, l64);
        const wEff = Float64Array.from(base.weight.data.toFloat32Array(), (v, i) => v + dW[i]);
        const bias = base.bias!.data.toFloat32Array();
        const want = gemm64(x64, wEff, rows, dOut, dIn, false, true, 1, 0, null).value.map(
          (v, i) => v + bias[i % dOut],
        );
        const scale = Math.max(...want.map(Math.abs));
        const tol = { rtol: 1e-5, atol: 1e-5 * scale };
        expectAllClose(y.toFloat32Array(), want, { ...tol, what: `${evaluation} y` });
        const dx = gemm64(dY64, wEff, rows, dIn, dOut, false, false, 1, 0, null).value;
        expectAllClose(xv.grad!.toFloat32Array(), dx, { ...tol, what: `${evaluation} dx` });

        // The loss sum(dY * y) depends on l through <dY^T x, dW(l)>, linearly in each l_n:
        // a central difference with step 1 is exact up to rounding.
        const outer = gemm64(dY64, x64, dOut, dIn, rows, true, false, 1, 0, null).value;
        const loss = (ls: Float64Array[]) => update64(layer, ls).reduce((s, v, i) => s + v * outer[i], 0);
        layer.lambdas.forEach((l, n) => {
          const dl = Float64Array.from(l64[n], (_, s) => {
            const shifted = (delta: number) =>
              l64.map((v, m) => (m === n ? v.map((e, k) => (k === s ? e + delta : e)) : v));
            return (loss(shifted(1)) - loss(shifted(-1))) / 2;
          });
          const gradScale = Math.max(1e-3, ...dl.map(Math.abs));
          expectAllClose(l.grad!.toFloat32Array(), dl, {
            rtol: 1e-4,
            atol: 1e-4 * gradScale,
            what: `${evaluation} dl_${n + 1}`,
          });
        });
        peft.unload();
        live.splice(live.indexOf(peft), 1);
      }
    });
  }

  it('gives the same loss and l_n after training steps on either path (within float32 rounding)', () => {
    const c = CASES[2];
    const rows = 9;
    const x = tera.tensor(randomArray(rows * product(c.inModes), next), [rows, product(c.inModes)]);
    const finals = (['merged', 'factored'] as const).map((evaluation) => {
      const { peft, layer } = adaptedLinear(c, evaluation, 1);
      const optimizer = new tera.AdamW(peft.trainableParameters(), { lr: 0.01, weightDecay: 0 });
      for (let step = 0; step < 5; step++) {
        ag.tidy(() => ag.sum(ag.tanh(peft.forward(new ag.Var(x)))).backward());
        optimizer.step();
        optimizer.zeroGrad();
      }
      return layer.lambdas.flatMap((l) => [...l.data.toFloat32Array()]);
    });
    expectAllClose(finals[1], finals[0], { rtol: 1e-4, atol: 1e-5, what: 'l_n after 5 AdamW steps' });
  });
});

describe('the cost model', () => {
  const training: CallNeeds = { backward: true, dx: true, dl: true };
  // Modes 16x16x16 | 16x16x16 unless maxModeSize says otherwise.
  const call = (maxRank: number, rows: number, needs = training, maxModeSize = 16) => ({
    shape: adapters.teraShape(new tera.TeraConfig({ targetModules: ['q'], maxModeSize, maxRank }), 4096, 4096, 'q'),
    rows,
    device: 'cpu' as const,
    needs,
    siblings: 1,
    sharers: 1,
    workspaceAllocated: false,
  });

  it('picks the factored path at few tokens or ranks below the modes, the merged path at full rank and many tokens', () => {
    // Full rank: the factored path's core GEMMs cost as much as GEMMs with W, so the merged
    // path (one reconstruction, three GEMMs) wins once T is large.
    expect(planPath(call(16, 4096), 'auto').path).toBe('merged');
    expect(planPath(call(16, 2048), 'auto').path).toBe('merged');
    expect(planPath(call(16, 1), 'auto').path).toBe('factored');
    // maxRank 4: the core is [64, 64]. The factored path is nearly a frozen layer's cost; so is
    // the merged one once T is large (its Z GEMM is [64, 64] too), and then they tie.
    for (const rows of [1, 128, 512]) expect(planPath(call(4, rows), 'auto').path).toBe('factored');
    const tie = planPath(call(4, 4096), 'auto');
    expect(Math.abs(tie.merged / tie.factored - 1)).toBeLessThan(0.01);
    // Inference without backward: forming W_eff for one GEMM does not pay at few tokens.
    expect(planPath(call(16, 16, { backward: false, dx: false, dl: false }), 'auto').path).toBe('factored');
  });

  it('rates modes that run as GEMMs at their own speed: the default 64x64 | 64x64 at full rank', () => {
    // Measured (docs/benchmarks.md, 1 thread, T 512): merged 665 ms, factored 737 ms; at T 128
    // the factored path's four frozen-sized GEMMs beat one reconstruction plus three GEMMs.
    const full = (rows: number) => planPath(call(64, rows, training, 64), 'auto');
    expect(full(512).path).toBe('merged');
    expect(full(2048).path).toBe('merged');
    expect(full(128).path).toBe('factored');
    expect(call(64, 512, training, 64).shape.modes).toEqual([64, 64, 64, 64]);
  });

  it('reports both estimates, and a forced path overrides the choice', () => {
    const plan = planPath(call(16, 2048), 'factored');
    expect(plan.path).toBe('factored');
    expect(plan.merged).toBeLessThan(plan.factored);
    expect(plan.merged).toBeGreaterThan(0);
  });

  it('shows the path a layer took, and keeps the factored activations only within the workspace', () => {
    const c = CASES[1];
    const { layer, peft, dIn } = adaptedLinear(c, 'factored', 1);
    expect(layer.lastPath).toBeNull();
    peft.forward(new ag.Var(tera.tensor(randomArray(dIn, next), [1, dIn])));
    expect(layer.lastPath).toBe('factored');
    // 1 row: 10 + 12 floats, and twice that in scratch, within a 12 x 10 workspace: kept;
    // 2 rows (44 floats kept, 88 in scratch): recomputed.
    expect(layer.plan(1, training).keep).toBe(true);
    expect(layer.plan(2, training).keep).toBe(false);
    expect(layer.plan(1, { backward: false, dx: false, dl: false }).keep).toBe(false);
  });

  it('refuses an unknown evaluation with the choices', () => {
    expect(() => new tera.TeraConfig({ targetModules: ['q'], evaluation: 'fast' as unknown as 'auto' })).toThrow(
      /evaluation must be one of 'auto', 'merged', 'factored', got "fast"/,
    );
  });
});
