/**
 * Autograd: every op's forward against a float64 reference, and its gradients
 * against central finite differences of that float64 reference; then the
 * engine's bookkeeping (frozen inputs, accumulation, noGrad, tidy, reuse).
 */
import * as tera from '../lib';
import { autograd as ag } from '../lib';
import { native } from '../lib/native/loader';
import { erf, gemm as gemm64, randomArray, rng } from './helpers/reference';
import { isClose } from './helpers/tolerance';

type Ref = (inputs: Float64Array[]) => Float64Array;

interface InputSpec {
  shape: number[];
  /** Keeps values at least this far from 0 (for kinks such as relu's). */
  awayFromZero?: number;
  requiresGrad?: boolean;
}

const next = rng(30);

function makeInput(spec: InputSpec): { v: tera.autograd.Var; values: Float64Array } {
  const size = spec.shape.reduce((a, b) => a * b, 1);
  const data = randomArray(size, next);
  if (spec.awayFromZero) {
    for (let i = 0; i < size; i++) data[i] = Math.sign(data[i] || 1) * (Math.abs(data[i]) + spec.awayFromZero);
  }
  const v = new ag.Var(tera.tensor(data, spec.shape), { requiresGrad: spec.requiresGrad ?? true });
  return { v, values: Float64Array.from(data) };
}

function weightedSum(out: Float64Array, weights: Float32Array): number {
  let s = 0;
  for (let i = 0; i < out.length; i++) s += out[i] * weights[i];
  return s;
}

/**
 * Runs `op` on random inputs, checks its output against `ref`, back-propagates
 * L = sum(out * W) for random W and compares every input gradient with central
 * differences of L computed in float64 through `ref`.
 */
function checkOp(specs: InputSpec[], op: (vars: tera.autograd.Var[]) => tera.autograd.Var, ref: Ref): void {
  const inputs = specs.map(makeInput);
  const out = op(inputs.map((i) => i.v));
  const expected = ref(inputs.map((i) => i.values));
  const got = out.toFloat32Array();
  expect(got.length).toBe(expected.length);
  for (let i = 0; i < got.length; i++) {
    expect(Math.abs(got[i] - expected[i])).toBeLessThanOrEqual(1e-5 * (1 + Math.abs(expected[i])));
  }

  const weights = randomArray(got.length, next);
  out.backward(tera.tensor(weights, out.shape));
  const h = 1e-6;
  inputs.forEach((input, k) => {
    if (!input.v.requiresGrad) {
      expect(input.v.grad).toBeNull();
      return;
    }
    const grad = input.v.grad!.toFloat32Array();
    for (let i = 0; i < input.values.length; i++) {
      const probe = inputs.map((p) => Float64Array.from(p.values));
      probe[k][i] = input.values[i] + h;
      const up = weightedSum(ref(probe), weights);
      probe[k][i] = input.values[i] - h;
      const down = weightedSum(ref(probe), weights);
      const fd = (up - down) / (2 * h);
      if (!isClose(grad[i], fd, 2e-4, 2e-4)) {
        throw new Error(`input ${k} element ${i}: autograd ${grad[i]} vs finite difference ${fd}`);
      }
    }
  });
}

function matmulRef(m: number, n: number, k: number, transA: boolean, transB: boolean, alpha: number): Ref {
  return ([a, b]) => gemm64(a, b, m, n, k, transA, transB, alpha, 0, null).value;
}

function elementwise(f: (...xs: number[]) => number): Ref {
  return (xs) => xs[0].map((_, i) => f(...xs.map((x) => x[i])));
}

describe('autograd ops: forward vs float64, gradients vs finite differences', () => {
  for (const [transA, transB] of [
    [false, false],
    [true, false],
    [false, true],
    [true, true],
  ]) {
    it(`matmul transA=${transA} transB=${transB} alpha=0.7`, () => {
      const [m, n, k] = [3, 4, 5];
      checkOp(
        [{ shape: transA ? [k, m] : [m, k] }, { shape: transB ? [n, k] : [k, n] }],
        ([a, b]) => ag.matmul(a, b, { transA, transB, alpha: 0.7 }),
        matmulRef(m, n, k, transA, transB, 0.7),
      );
    });
  }

  it('linear with bias over a 3-D input (leading dims are rows)', () => {
    checkOp(
      [{ shape: [2, 3, 4] }, { shape: [5, 4] }, { shape: [5] }],
      ([x, w, b]) => ag.linear(x, w, b),
      ([x, w, b]) => {
        const y = gemm64(x, w, 6, 5, 4, false, true, 1, 0, null).value;
        return y.map((v, i) => v + b[i % 5]);
      },
    );
  });

  it('linear without bias, frozen weight: only dx is computed', () => {
    checkOp(
      [{ shape: [3, 4] }, { shape: [2, 4], requiresGrad: false }],
      ([x, w]) => ag.linear(x, w),
      ([x, w]) => gemm64(x, w, 3, 2, 4, false, true, 1, 0, null).value,
    );
  });

  it('add, including a Var added to itself', () => {
    checkOp(
      [{ shape: [2, 3] }, { shape: [2, 3] }],
      ([a, b]) => ag.add(a, b),
      elementwise((a, b) => a + b),
    );
    checkOp(
      [{ shape: [4] }],
      ([a]) => ag.add(a, a),
      elementwise((a) => 2 * a),
    );
  });

  it('mul', () => {
    checkOp(
      [{ shape: [2, 3] }, { shape: [2, 3] }],
      ([a, b]) => ag.mul(a, b),
      elementwise((a, b) => a * b),
    );
  });

  it('scale', () => {
    checkOp(
      [{ shape: [5] }],
      ([a]) => ag.scale(a, -1.5),
      elementwise((a) => -1.5 * a),
    );
  });

  it('scaleColumns', () => {
    checkOp(
      [{ shape: [3, 4] }, { shape: [4] }],
      ([x, v]) => ag.scaleColumns(x, v),
      ([x, v]) => x.map((value, i) => value * v[i % 4]),
    );
  });

  it('relu, gelu and tanh', () => {
    checkOp(
      [{ shape: [7], awayFromZero: 0.01 }],
      ([x]) => ag.relu(x),
      elementwise((x) => Math.max(x, 0)),
    );
    checkOp(
      [{ shape: [7] }],
      ([x]) => ag.gelu(x),
      elementwise((x) => 0.5 * x * (1 + erf(x / Math.SQRT2))),
    );
    checkOp([{ shape: [7] }], ([x]) => ag.tanh(x), elementwise(Math.tanh));
  });

  it('sum and mean', () => {
    checkOp(
      [{ shape: [2, 3] }],
      ([x]) => ag.sum(x),
      ([x]) => Float64Array.of(x.reduce((a, b) => a + b, 0)),
    );
    checkOp(
      [{ shape: [2, 3] }],
      ([x]) => ag.mean(x),
      ([x]) => Float64Array.of(x.reduce((a, b) => a + b, 0) / 6),
    );
  });

  it('reshape (a view)', () => {
    checkOp(
      [{ shape: [2, 6] }],
      ([x]) => ag.mul(ag.reshape(x, [3, 4]), ag.reshape(x, [3, 4])),
      elementwise((x) => x * x),
    );
  });

  it('softmaxCrossEntropy', () => {
    const labels = [2, 0, 1];
    checkOp(
      [{ shape: [3, 4] }],
      ([logits]) => ag.softmaxCrossEntropy(logits, labels),
      ([x]) => {
        let total = 0;
        labels.forEach((label, r) => {
          const row = Array.from(x.subarray(r * 4, r * 4 + 4));
          const peak = Math.max(...row);
          const logSum = peak + Math.log(row.reduce((s, v) => s + Math.exp(v - peak), 0));
          total += logSum - row[label];
        });
        return Float64Array.of(total / labels.length);
      },
    );
  });

  it('a chained MLP (linear, gelu, linear, tanh, cross-entropy) end to end', () => {
    const [T, d, h, c] = [4, 3, 5, 3];
    const labels = [0, 2, 1, 2];
    const dense = (x: Float64Array, w: Float64Array, b: Float64Array, rows: number, o: number, i: number) =>
      gemm64(x, w, rows, o, i, false, true, 1, 0, null).value.map((v, k) => v + b[k % o]);
    checkOp(
      [{ shape: [T, d], requiresGrad: false }, { shape: [h, d] }, { shape: [h] }, { shape: [c, h] }, { shape: [c] }],
      ([x, w1, b1, w2, b2]) =>
        ag.softmaxCrossEntropy(ag.tanh(ag.linear(ag.gelu(ag.linear(x, w1, b1)), w2, b2)), labels),
      ([x, w1, b1, w2, b2]) => {
        const a = dense(x, w1, b1, T, h, d).map((v) => 0.5 * v * (1 + erf(v / Math.SQRT2)));
        const z = dense(a, w2, b2, T, c, h).map(Math.tanh);
        let total = 0;
        labels.forEach((label, r) => {
          const row = Array.from(z.subarray(r * c, r * c + c));
          total += Math.log(row.reduce((s, v) => s + Math.exp(v), 0)) - row[label];
        });
        return Float64Array.of(total / T);
      },
    );
  });
});

describe('autograd engine', () => {
  it('runs no dW GEMM and allocates no gradient for a frozen weight', () => {
    const x = new ag.Var(tera.tensor(randomArray(6, next), [2, 3]), { requiresGrad: true });
    const frozen = new ag.Parameter(tera.tensor(randomArray(12, next), [4, 3]), { requiresGrad: false });
    const trainable = new ag.Parameter(tera.tensor(randomArray(12, next), [4, 3]));
    const spy = jest.spyOn(native(), 'gemm');
    try {
      ag.sum(ag.linear(x, frozen)).backward();
      expect(spy).toHaveBeenCalledTimes(2); // forward + dx
      spy.mockClear();
      ag.sum(ag.linear(x, trainable)).backward();
      expect(spy).toHaveBeenCalledTimes(3); // forward + dx + dW
    } finally {
      spy.mockRestore();
    }
    expect(frozen.grad).toBeNull();
    expect(trainable.grad).not.toBeNull();
  });

  it('accumulates leaf gradients across backward calls until zeroGrad', () => {
    const p = new ag.Parameter(tera.tensor(Float32Array.of(1, 2, 3)));
    ag.sum(ag.scale(p, 2)).backward();
    ag.sum(ag.scale(p, 3)).backward();
    expect(Array.from(p.grad!.toFloat32Array())).toEqual([5, 5, 5]);
    p.zeroGrad();
    expect(p.grad).toBeNull();
  });

  it('records nothing under noGrad and for inputs that need no gradient', () => {
    const p = new ag.Parameter(tera.tensor(Float32Array.of(1, 2)));
    const y = ag.noGrad(() => ag.scale(p, 2));
    expect(y.requiresGrad).toBe(false);
    expect(() => y.backward()).toThrow(/does not require gradients/);
    const c = ag.scale(tera.tensor(Float32Array.of(1)), 2);
    expect(c.requiresGrad).toBe(false);
  });

  it('refuses to run backward twice through one graph', () => {
    const p = new ag.Parameter(tera.tensor(Float32Array.of(1, 2)));
    const hidden = ag.scale(p, 2);
    const loss = ag.sum(hidden);
    loss.backward();
    expect(() => loss.backward()).toThrow(/already used/);
    expect(() => ag.sum(hidden).backward()).toThrow(/already used/);
  });

  it('tidy disposes intermediate results and keeps what it returns', () => {
    const p = new ag.Parameter(tera.tensor(Float32Array.of(1, -2, 3)));
    let hidden: tera.autograd.Var | undefined;
    const kept = ag.tidy(() => {
      hidden = ag.relu(p);
      const loss = ag.sum(hidden);
      loss.backward();
      return { loss };
    });
    expect(hidden!.data.disposed).toBe(true);
    expect(kept.loss.item()).toBe(4);
    expect(p.data.disposed).toBe(false);
    expect(Array.from(p.grad!.toFloat32Array())).toEqual([1, 0, 1]);
  });

  it('names the mistake in bad calls', () => {
    const a = tera.zeros([2, 3]);
    expect(() => ag.matmul(a, tera.zeros([2, 3]))).toThrow(/inner dimensions differ/);
    expect(() => ag.linear(a, tera.zeros([4, 2]))).toThrow(/ends in 3 features but weight is \[4, 2\]/);
    expect(() => ag.add(a, tera.zeros([3, 2]))).toThrow(/shapes \[2, 3\] and \[3, 2\] differ/);
    expect(() => ag.softmaxCrossEntropy(a, [0])).toThrow(/1 labels for 2 rows/);
    expect(() => ag.softmaxCrossEntropy(a, [0, 5])).toThrow(/label 5/);
    const gone = tera.zeros([2]);
    gone.dispose();
    expect(() => ag.relu(gone)).toThrow(/disposed/);
  });
});
