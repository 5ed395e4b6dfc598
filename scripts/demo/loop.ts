/**
 * The one training loop every demo and pretraining script runs: AdamW
 * (weight decay 0 unless asked: it would pull TeRA's and VeRA's scaling
 * vectors towards 0, i.e. towards no update), a linear warm-up then cosine
 * decay to 0, optional gradient clipping, and the loss and wall-clock time of
 * every step. What a step computes (which batch, which model, averaging over
 * ranks) is the caller's `step`.
 */
import { performance } from 'node:perf_hooks';

import { type nn, optim } from '../../lib';

export interface LoopOptions {
  steps: number;
  lr: number;
  /** Default: min(50, steps / 10). */
  warmupSteps?: number;
  weightDecay?: number;
  /** Clip the gradients' global norm to this before each update (default: no clipping). */
  clipNorm?: number;
  /** Accumulates step `index`'s gradients into the parameters and returns its loss. */
  step(index: number): number;
  /** Called after every update with that step's loss. */
  onStep?: (index: number, loss: number) => void;
}

export interface LoopResult {
  losses: number[];
  /** Every step's wall-clock time, the update included (its median resists a busy machine better than a mean). */
  stepSeconds: number[];
}

export function optimise(params: nn.Parameter[], options: LoopOptions): LoopResult {
  const { steps, lr, weightDecay = 0, clipNorm, step, onStep } = options;
  const optimizer = new optim.AdamW(params, { lr, weightDecay });
  const schedule = new optim.WarmupCosineSchedule(optimizer, {
    warmupSteps: options.warmupSteps ?? Math.min(50, Math.floor(steps / 10)),
    totalSteps: steps,
  });
  const losses: number[] = [];
  const stepSeconds: number[] = [];
  try {
    for (let index = 0; index < steps; index++) {
      const start = performance.now();
      const loss = step(index);
      if (clipNorm !== undefined) optim.clipGradNorm(params, clipNorm);
      optimizer.step();
      schedule.step();
      optimizer.zeroGrad();
      stepSeconds.push((performance.now() - start) / 1000);
      losses.push(loss);
      onStep?.(index, loss);
    }
  } finally {
    optimizer.dispose();
  }
  return { losses, stepSeconds };
}

/** The median of `values` (the upper one of an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}
