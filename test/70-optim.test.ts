/**
 * Optimisers against float64 transcriptions of PyTorch's update rules,
 * gradient clipping, the warm-up / cosine schedule, and a real training run.
 */
import * as tera from '../lib';
import { autograd as ag, nn, optim } from '../lib';
import { randomArray, rng } from './helpers/reference';
import { expectAllClose } from './helpers/tolerance';

const next = rng(70);

function param(values: Float32Array): tera.nn.Parameter {
  return new nn.Parameter(tera.tensor(values));
}

const expectClose = (got: Float32Array, want: Float64Array, tol = 1e-6) =>
  expectAllClose(got, want, { rtol: tol, atol: tol });

describe('AdamW', () => {
  it('follows torch.optim.AdamW for three steps, with weight decay', () => {
    const n = 9;
    const p = param(randomArray(n, next));
    const ref = Float64Array.from(p.toFloat32Array());
    const m = new Float64Array(n);
    const v = new Float64Array(n);
    const [lr, b1, b2, eps, wd] = [0.05, 0.8, 0.95, 1e-6, 0.1];
    const opt = new optim.AdamW([p], { lr, betas: [b1, b2], eps, weightDecay: wd });
    for (let t = 1; t <= 3; t++) {
      const g = randomArray(n, next);
      p.grad = tera.tensor(g);
      opt.step();
      for (let i = 0; i < n; i++) {
        ref[i] -= lr * wd * ref[i];
        m[i] = b1 * m[i] + (1 - b1) * g[i];
        v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
        const denom = Math.sqrt(v[i]) / Math.sqrt(1 - b2 ** t) + eps;
        ref[i] -= ((lr / (1 - b1 ** t)) * m[i]) / denom;
      }
      opt.zeroGrad();
      expect(p.grad).toBeNull();
    }
    expectClose(p.toFloat32Array(), ref, 1e-5);
    expect(opt.stepCount).toBe(3);
    opt.dispose();
  });

  it('leaves parameters without a gradient untouched', () => {
    const frozen = param(Float32Array.of(1, 2));
    const live = param(Float32Array.of(1, 2));
    frozen.requiresGrad = false;
    live.grad = tera.tensor(Float32Array.of(1, 1));
    new optim.AdamW([frozen, live], { lr: 0.1 }).step();
    expect(Array.from(frozen.toFloat32Array())).toEqual([1, 2]);
    expect(live.toFloat32Array()[0]).toBeLessThan(1);
  });

  it('refuses bad settings', () => {
    const p = param(Float32Array.of(1));
    expect(() => new optim.AdamW([p], { lr: -1 })).toThrow(/lr must be a number in \[0, Infinity\]/);
    expect(() => new optim.AdamW([p], { betas: [0.9, 1] })).toThrow(/betas\[1\] must be a number in \[0, 1\)/);
    expect(() => new optim.AdamW([])).toThrow(/no parameters/);
  });
});

describe('SGD', () => {
  for (const nesterov of [false, true]) {
    it(`follows torch.optim.SGD with momentum${nesterov ? ' (Nesterov)' : ''} and weight decay`, () => {
      const n = 6;
      const p = param(randomArray(n, next));
      const ref = Float64Array.from(p.toFloat32Array());
      const buf = new Float64Array(n);
      const [lr, mu, wd] = [0.1, 0.9, 0.01];
      const opt = new optim.SGD([p], { lr, momentum: mu, weightDecay: wd, nesterov });
      for (let t = 0; t < 3; t++) {
        const g = randomArray(n, next);
        p.grad = tera.tensor(g);
        opt.step();
        for (let i = 0; i < n; i++) {
          const d = g[i] + wd * ref[i];
          buf[i] = t === 0 ? d : mu * buf[i] + d;
          ref[i] -= lr * (nesterov ? d + mu * buf[i] : buf[i]);
        }
        opt.zeroGrad();
      }
      expectClose(p.toFloat32Array(), ref);
    });
  }

  it('is plain gradient descent without momentum', () => {
    const p = param(Float32Array.of(1, -1));
    p.grad = tera.tensor(Float32Array.of(0.5, 2));
    new optim.SGD([p], { lr: 0.5 }).step();
    expect(Array.from(p.toFloat32Array())).toEqual([0.75, -2]);
  });
});

describe('clipGradNorm', () => {
  it('returns the joint norm and scales the gradients down to maxNorm', () => {
    const a = param(new Float32Array(2));
    const b = param(new Float32Array(1));
    a.grad = tera.tensor(Float32Array.of(3, 0));
    b.grad = tera.tensor(Float32Array.of(4));
    expect(optim.clipGradNorm([a, b], 1)).toBeCloseTo(5, 5);
    expect(Array.from(a.grad.toFloat32Array()).map((x) => +x.toFixed(5))).toEqual([0.6, 0]);
    expect(b.grad.toFloat32Array()[0]).toBeCloseTo(0.8, 5);
    expect(optim.clipGradNorm([a, b], 10)).toBeCloseTo(1, 5);
    expect(b.grad.toFloat32Array()[0]).toBeCloseTo(0.8, 5); // under the limit: unchanged
  });
});

describe('WarmupCosineSchedule', () => {
  it('warms up linearly, then follows a half cosine down to minLr', () => {
    const opt = new optim.SGD([param(Float32Array.of(0))], { lr: 1 });
    const schedule = new optim.WarmupCosineSchedule(opt, { warmupSteps: 4, totalSteps: 12, minLr: 0.1 });
    const rates = [opt.lr];
    for (let i = 0; i < 14; i++) rates.push(schedule.step());
    expect(rates.slice(0, 5)).toEqual([0, 0.25, 0.5, 0.75, 1]);
    expect(rates[8]).toBeCloseTo(0.1 + 0.9 * 0.5, 10); // halfway through the decay
    expect(rates[12]).toBeCloseTo(0.1, 10);
    expect(rates[14]).toBeCloseTo(0.1, 10);
    for (let i = 5; i < 12; i++) expect(rates[i + 1]).toBeLessThan(rates[i]);
    expect(() => new optim.WarmupCosineSchedule(opt, { warmupSteps: 5, totalSteps: 3 })).toThrow(/totalSteps/);
  });
});

describe('training', () => {
  it('lowers the loss of a small classifier with AdamW, clipping and the schedule', () => {
    const model = new nn.MLP([4, 16, 3], { seed: 70, activation: 'gelu' });
    // Three well-separated classes: the label is the argmax of the first three features.
    const rows = 48;
    const x = randomArray(rows * 4, next);
    const labels = Array.from({ length: rows }, (_, r) => {
      const f = x.subarray(r * 4, r * 4 + 3);
      return f.indexOf(Math.max(...f));
    });
    const input = tera.tensor(x, [rows, 4]);
    const opt = new optim.AdamW(model.parameters(), { lr: 0.05, weightDecay: 0 });
    const schedule = new optim.WarmupCosineSchedule(opt, { warmupSteps: 5, totalSteps: 60 });
    const losses: number[] = [];
    for (let step = 0; step < 60; step++) {
      losses.push(
        ag.tidy(() => {
          const loss = ag.softmaxCrossEntropy(model.forward(input), labels);
          loss.backward();
          return loss.item();
        }),
      );
      optim.clipGradNorm(model.parameters(), 5);
      opt.step();
      schedule.step();
      opt.zeroGrad();
    }
    expect(losses[0]).toBeGreaterThan(0.9);
    expect(losses[59]).toBeLessThan(0.5 * losses[0]);
  });
});
