/**
 * The native binding's own checks, reached by calling it directly with what the
 * TypeScript layer would never pass: sizes whose product wraps around 2^64 (it
 * used to pass the length check and read out of bounds), and outputs that alias
 * inputs the kernel reads after writing (it used to compute a wrong result).
 */
import { spawnSync } from 'node:child_process';

import type { NativeStorage } from '../binding';
import { autograd, tensor } from '../lib';
import { addon, native } from '../lib/native/loader';

const b = native();
const storage = (length: number, fillValue = 0): NativeStorage => {
  const s = new b.Storage(length, 'cpu');
  if (fillValue !== 0) b.fill(s, fillValue);
  return s;
};

// ROWS * COLS = 2^64 + 65536: in int64 arithmetic it wraps to 65536, while each
// factor alone is a valid size (at most 2^48).
const ROWS = 65537;
const COLS = 281470681808896;
const WRAPPED = 65536;

describe('products of user-given sizes cannot wrap past the length checks', () => {
  it('the sizes used here do wrap to a small length in 64-bit arithmetic', () => {
    expect(COLS).toBeLessThanOrEqual(2 ** 48);
    expect(BigInt.asUintN(64, BigInt(ROWS) * BigInt(COLS))).toBe(BigInt(WRAPPED));
  });

  // Each call runs in a child process: before the fix, some read out of bounds and crashed.
  const calls: [string, string][] = [
    // argmaxRows takes at most 2^24 columns (float32 indices), so its product cannot wrap; past 2^48 it is refused.
    ['argmaxRows', `b.argmaxRows(S(2 ** 25), S(${WRAPPED}), 2 ** 25, 2 ** 24)`],
    ['sumAxis over columns', `b.sumAxis(S(${ROWS}), S(${WRAPPED}), ${ROWS}, ${COLS}, true, 0)`],
    ['sumAxis down rows', `b.sumAxis(S(${ROWS}), S(${WRAPPED}), ${COLS}, ${ROWS}, false, 0)`],
    ['softmaxCrossEntropy', `b.softmaxCrossEntropy(S(${WRAPPED}), S(${ROWS}), ${ROWS}, ${COLS}, null, 1)`],
    ['scaleMatrix', `b.scaleMatrix(S(${WRAPPED}), S(${WRAPPED}), S(${ROWS}), ${ROWS}, ${COLS}, false)`],
    ['addRowVector', `b.addRowVector(S(${WRAPPED}), S(${ROWS}), ${COLS}, ${ROWS})`],
    // gemm's sizes are at most 2^31 - 1 (BLAS), so its products cannot wrap, but still exceed 2^48.
    ['gemm', `b.gemm(false, false, 2 ** 31 - 1, 2 ** 31 - 1, 2 ** 31 - 1, 1, S(0), S(0), 0, S(0))`],
  ];

  it.each(calls)('%s refuses them with a clear error', (_kernel, call) => {
    const script = `
      const b = require(process.env.ADDON);
      const S = (n) => new b.Storage(n, 'cpu');
      try { ${call}; console.log('accepted'); } catch (e) { console.log(e.message); }
    `;
    const run = spawnSync(process.execPath, ['-e', script], {
      encoding: 'utf8',
      timeout: 60000,
      env: { ...process.env, ADDON: addon().path },
    });
    expect({ signal: run.signal, status: run.status }).toEqual({ signal: null, status: 0 });
    expect(run.stdout.trim()).toMatch(/^\w+: \w+ \[[\w, ]+\]: shape \[\d+, \d+\] has more than 2\^48 elements$/);
  });
});

describe('outputs that would alias what the kernel reads are refused', () => {
  const modes = [3, 3];
  const ranks = [3, 3];

  function scaleGradOperands() {
    return {
      core: storage(9, 0.5),
      factors: [storage(9, 0.25), storage(9, -0.75)],
      scales: [storage(3, 2), storage(3, 3)],
      grads: [storage(3), storage(3)],
      gradX: storage(9, 1.5),
    };
  }

  it('tuckerScaleGrad with overwriteGradX refuses gradX being the core, a factor or a scale vector', () => {
    const { core, factors, scales, grads } = scaleGradOperands();
    const overwritten = (gradX: NativeStorage) => () =>
      b.tuckerScaleGrad(gradX, core, modes, ranks, factors, scales, grads, true);
    const message = /tuckerScaleGrad: gradX, overwritten as workspace, must not also be an input/;
    expect(overwritten(core)).toThrow(message);
    expect(overwritten(factors[1])).toThrow(message);
    // Order 1: a scale vector has as many elements as gradX.
    const scale = storage(4, 2);
    expect(() =>
      b.tuckerScaleGrad(scale, storage(4, 1), [4], [4], [storage(16, 1)], [scale], [storage(4)], true),
    ).toThrow(message);
    // Nothing was written.
    expect(Array.from(core.read())).toEqual(new Array(9).fill(0.5));
    expect(Array.from(factors[1].read())).toEqual(new Array(9).fill(-0.75));
    expect(Array.from(grads[0].read())).toEqual([0, 0, 0]);
  });

  it('tuckerScaleGrad without overwriteGradX may read gradX from the core, and gives the same result as a copy', () => {
    const { core, factors, scales, grads } = scaleGradOperands();
    const copy = storage(9);
    copy.copyFrom(core);
    b.tuckerScaleGrad(core, core, modes, ranks, factors, scales, grads, false);
    const expected = [storage(3), storage(3)];
    b.tuckerScaleGrad(copy, core, modes, ranks, factors, scales, expected, true);
    expect(Array.from(grads[0].read())).toEqual(Array.from(expected[0].read()));
    expect(Array.from(grads[1].read())).toEqual(Array.from(expected[1].read()));
  });

  it('tuckerScaleGrad refuses two gradient outputs sharing memory', () => {
    const { core, factors, scales, gradX } = scaleGradOperands();
    const shared = storage(3);
    expect(() => b.tuckerScaleGrad(gradX, core, modes, ranks, factors, scales, [shared, shared], false)).toThrow(
      /tuckerScaleGrad: the output tensor must not also be an input/,
    );
  });

  it('optimiser steps refuse state buffers shared with each other or with the gradient', () => {
    const param = storage(4, 1);
    const grad = storage(4, 0.5);
    const moment = storage(4);
    expect(() => b.adamwStep(param, grad, moment, moment, 0.1, 0.9, 0.999, 1e-8, 0, 1)).toThrow(
      /adamwStep: the first moment must not also be an input/,
    );
    expect(() => b.adamwStep(param, grad, grad, storage(4), 0.1, 0.9, 0.999, 1e-8, 0, 1)).toThrow(
      /adamwStep: the first moment must not also be an input/,
    );
    expect(() => b.adamwStep(param, grad, storage(4), grad, 0.1, 0.9, 0.999, 1e-8, 0, 1)).toThrow(
      /adamwStep: the second moment must not also be an input/,
    );
    expect(() => b.sgdStep(param, grad, grad, 0.1, 0.9, 0, false)).toThrow(
      /sgdStep: the momentum buffer must not also be an input/,
    );
    expect(Array.from(param.read())).toEqual([1, 1, 1, 1]);
    expect(Array.from(grad.read())).toEqual([0.5, 0.5, 0.5, 0.5]);
  });
});

describe('NaN propagates through activations and reductions, as in PyTorch', () => {
  const values = Float32Array.of(NaN, -1, 0, 2, -0, Infinity, -Infinity, 0.5);
  const input = () => {
    const s = storage(values.length);
    s.write(values);
    return s;
  };

  it('ReLU maps NaN to NaN, and its backward passes dy through at NaN (threshold_backward)', () => {
    const y = storage(values.length);
    b.activationForward('relu', y, input());
    expect(Array.from(y.read())).toEqual([NaN, 0, 0, 2, 0, Infinity, 0, 0.5]);
    const dx = storage(values.length);
    b.activationBackward('relu', dx, input(), storage(values.length, 3), 0);
    expect(Array.from(dx.read())).toEqual([3, 0, 0, 3, 0, 3, 0, 3]);
  });

  it.each(['gelu', 'tanh'] as const)(
    '%s maps NaN to NaN forward and backward, and finite values to finite ones',
    (kind) => {
      const x = storage(4);
      x.write(Float32Array.of(NaN, -1, 0, 2));
      const y = storage(4);
      b.activationForward(kind, y, x);
      const dx = storage(4);
      b.activationBackward(kind, dx, x, storage(4, 1), 0);
      expect(Array.from(y.read(), Number.isNaN)).toEqual([true, false, false, false]);
      expect(Array.from(dx.read(), Number.isNaN)).toEqual([true, false, false, false]);
    },
  );

  it('argmaxRows counts NaN as the largest value wherever it sits (the first NaN wins, as torch.argmax)', () => {
    const rows = [
      [1, NaN, 3, 2],
      [NaN, 5, NaN, 9],
      [2, 7, 7, -1],
      [-Infinity, -Infinity, -Infinity, -Infinity],
      [1, 2, 3, NaN],
      [4, 4, 4, 4],
    ];
    const x = storage(24);
    x.write(Float32Array.from(rows.flat()));
    const out = storage(rows.length);
    b.argmaxRows(out, x, rows.length, 4);
    expect(Array.from(out.read())).toEqual([1, 0, 1, 0, 3, 0]);
  });

  it('sums, dot products, column sums and the cross-entropy of a row holding NaN are NaN', () => {
    const x = storage(6);
    x.write(Float32Array.of(1, 2, NaN, 4, 5, 6));
    expect(b.sum(x)).toBeNaN();
    expect(b.dot(x, storage(6, 1))).toBeNaN();
    const columns = storage(3);
    b.sumAxis(columns, x, 2, 3, false, 0);
    expect(Array.from(columns.read())).toEqual([5, 7, NaN]);
    // NaN, not undefined: the binding used NaN as its own "no result" marker.
    expect(b.softmaxCrossEntropy(x, storage(2), 2, 3, null, 1)).toBeNaN();
  });
});

describe('NaN through autograd', () => {
  it('a ReLU layer fed NaN reports a NaN loss, not a finite one', () => {
    const x = tensor(Float32Array.of(NaN, 1, -2, 3), [2, 2]);
    const w = tensor(Float32Array.of(1, 0, 0, 1), [2, 2]);
    const loss = autograd.sum(autograd.relu(autograd.linear(x, w)));
    expect(loss.data.item()).toBeNaN();
  });
});
