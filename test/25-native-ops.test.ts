/**
 * The elementwise, reduction and optimiser kernels that autograd and the
 * optimisers run on, each against a float64 loop written here.
 */
import type { NativeStorage } from '../binding';
import { native } from '../lib/native/loader';
import { erf, randomArray, rng } from './helpers/reference';
import { expectAllClose } from './helpers/tolerance';

const ops = native();
const store = (data: Float32Array): NativeStorage => {
  const s = new ops.Storage(data.length, 'cpu');
  s.write(data);
  return s;
};
/** |got - want| <= tol (1 + |want|) everywhere; NaN fails. */
const close = (got: Float32Array, want: ArrayLike<number>, tol = 1e-6) =>
  expectAllClose(got, want, { rtol: tol, atol: tol });

// Large enough (> 2^15) that the CPU backend splits the loops across threads.
const N = 70001;
const next = rng(123);
const x = randomArray(N, next).map((v) => v * 4);
const y = randomArray(N, next);

describe('elementwise kernels', () => {
  it('fill, axpby and multiply', () => {
    const out = store(new Float32Array(N));
    ops.fill(out, 2.5);
    expect(out.read().every((v) => v === 2.5)).toBe(true);
    const ys = store(y);
    ops.axpby(ys, store(x), 0.5, -2);
    close(
      ys.read(),
      Array.from(x, (v, i) => 0.5 * v - 2 * y[i]),
    );
    ops.multiply(out, store(x), store(y));
    close(
      out.read(),
      Array.from(x, (v, i) => v * y[i]),
    );
  });

  it('scaleMatrix per column and per row, addRowVector, sumAxis both ways', () => {
    const [rows, cols] = [37, 29];
    const m = randomArray(rows * cols, next);
    const colScale = randomArray(cols, next);
    const rowScale = randomArray(rows, next);
    const out = store(new Float32Array(rows * cols));
    ops.scaleMatrix(out, store(m), store(colScale), rows, cols, true);
    close(
      out.read(),
      Array.from(m, (v, i) => v * colScale[i % cols]),
    );
    ops.scaleMatrix(out, store(m), store(rowScale), rows, cols, false);
    close(
      out.read(),
      Array.from(m, (v, i) => v * rowScale[Math.floor(i / cols)]),
    );

    const biased = store(m);
    ops.addRowVector(biased, store(colScale), rows, cols);
    close(
      biased.read(),
      Array.from(m, (v, i) => v + colScale[i % cols]),
    );

    const colSums = store(Float32Array.from({ length: cols }, () => 1));
    ops.sumAxis(colSums, store(m), rows, cols, false, 0.5);
    const wantCols = Array.from(
      { length: cols },
      (_, j) => 0.5 + Array.from({ length: rows }, (_, i) => m[i * cols + j]).reduce((a, b) => a + b),
    );
    close(colSums.read(), wantCols, 1e-5);
    const rowSums = store(new Float32Array(rows));
    ops.sumAxis(rowSums, store(m), rows, cols, true, 0);
    close(
      rowSums.read(),
      Array.from({ length: rows }, (_, i) => m.subarray(i * cols, (i + 1) * cols).reduce((a, b) => a + b)),
      1e-5,
    );
  });

  const activations = {
    relu: (v: number) => Math.max(v, 0),
    gelu: (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2)),
    tanh: Math.tanh,
  };

  it.each(Object.keys(activations) as (keyof typeof activations)[])('%s forward and backward', (kind) => {
    const f = activations[kind];
    const small = x.subarray(0, 4001).map((v) => (Math.abs(v) < 1e-3 ? 0.5 : v)); // keep relu away from its kink
    const out = store(new Float32Array(small.length));
    ops.activationForward(kind, out, store(small));
    close(out.read(), Array.from(small, f), 2e-6);
    // Backward against central differences of the float64 function, accumulated onto beta * dx.
    const dy = randomArray(small.length, next);
    const dx0 = randomArray(small.length, next);
    const dx = store(dx0);
    ops.activationBackward(kind, dx, store(small), store(dy), 0.5);
    const h = 1e-4;
    close(
      dx.read(),
      Array.from(small, (v, i) => 0.5 * dx0[i] + (dy[i] * (f(v + h) - f(v - h))) / (2 * h)),
      1e-4,
    );
  });

  it('sum and dot in double precision', () => {
    expect(ops.sum(store(x))).toBeCloseTo(
      x.reduce((a, b) => a + b, 0),
      6,
    );
    expect(ops.dot(store(x), store(y))).toBeCloseTo(
      x.reduce((a, v, i) => a + v * y[i], 0),
      6,
    );
  });
});

describe('softmax cross-entropy and argmax', () => {
  const [rows, classes] = [13, 7];
  const logits = randomArray(rows * classes, next).map((v) => v * 5);
  const labels = Float32Array.from({ length: rows }, (_, i) => (i * 3) % classes);

  it('loss and gradient match float64 log-softmax', () => {
    const grad = store(new Float32Array(rows * classes));
    const loss = ops.softmaxCrossEntropy(store(logits), store(labels), rows, classes, grad, 2);
    let want = 0;
    const wantGrad: number[] = [];
    for (let i = 0; i < rows; i++) {
      const row = Array.from(logits.subarray(i * classes, (i + 1) * classes));
      const peak = Math.max(...row);
      const logSum = peak + Math.log(row.reduce((a, v) => a + Math.exp(v - peak), 0));
      want += (logSum - row[labels[i]]) / rows;
      row.forEach((v, j) => wantGrad.push((2 * (Math.exp(v - logSum) - (j === labels[i] ? 1 : 0))) / rows));
    }
    expect(loss).toBeCloseTo(want, 6);
    close(grad.read(), wantGrad, 1e-6);
  });

  it('refuses labels that are not class indices, leaving the gradient untouched', () => {
    const grad = store(new Float32Array(rows * classes).fill(7));
    const bad = Float32Array.from(labels);
    bad[4] = classes;
    expect(() => ops.softmaxCrossEntropy(store(logits), store(bad), rows, classes, grad, 1)).toThrow(
      /label 7(\.0+)? at row 4 is not a class index in \[0, 7\)/,
    );
    expect(grad.read().every((v) => v === 7)).toBe(true);
  });

  it('argmaxRows picks the first maximum of each row', () => {
    const out = store(new Float32Array(rows));
    ops.argmaxRows(out, store(logits), rows, classes);
    const want = Array.from({ length: rows }, (_, i) => {
      const row = Array.from(logits.subarray(i * classes, (i + 1) * classes));
      return row.indexOf(Math.max(...row));
    });
    expect(Array.from(out.read())).toEqual(want);
  });
});

describe('optimiser steps', () => {
  const n = 40000;
  const p0 = randomArray(n, next);
  const g = randomArray(n, next);

  it('adamwStep follows PyTorch AdamW (decoupled decay, bias correction)', () => {
    const [lr, b1, b2, eps, wd] = [1e-2, 0.9, 0.999, 1e-8, 0.1];
    const param = store(p0);
    const m = store(new Float32Array(n));
    const v = store(new Float32Array(n));
    const want = Float64Array.from(p0);
    const wm = new Float64Array(n);
    const wv = new Float64Array(n);
    for (let step = 1; step <= 3; step++) {
      ops.adamwStep(param, store(g), m, v, lr, b1, b2, eps, wd, step);
      for (let i = 0; i < n; i++) {
        want[i] -= lr * wd * want[i];
        wm[i] = b1 * wm[i] + (1 - b1) * g[i];
        wv[i] = b2 * wv[i] + (1 - b2) * g[i] * g[i];
        const mHat = wm[i] / (1 - b1 ** step);
        const vHat = wv[i] / (1 - b2 ** step);
        want[i] -= (lr * mHat) / (Math.sqrt(vHat) + eps);
      }
    }
    close(param.read(), want, 1e-5);
  });

  it.each([
    [0, false],
    [0.9, false],
    [0.9, true],
  ])('sgdStep with momentum %d, nesterov %s follows PyTorch SGD', (momentum, nesterov) => {
    const [lr, wd] = [0.1, 0.01];
    const param = store(p0);
    const buffer = momentum ? store(new Float32Array(n)) : null;
    const want = Float64Array.from(p0);
    const wb = new Float64Array(n);
    for (let step = 0; step < 3; step++) {
      ops.sgdStep(param, store(g), buffer, lr, momentum, wd, nesterov);
      for (let i = 0; i < n; i++) {
        let d = g[i] + wd * want[i];
        if (momentum) {
          wb[i] = momentum * wb[i] + d;
          d = nesterov ? d + momentum * wb[i] : wb[i];
        }
        want[i] -= lr * d;
      }
    }
    close(param.read(), want, 1e-5);
  });
});
