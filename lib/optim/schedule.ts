/**
 * Learning-rate schedules. Call schedule.step() after optimizer.step(), as in
 * PyTorch; the constructor sets the rate for the first step.
 */
import type { Optimizer } from './optimizer';

export interface WarmupCosineOptions {
  /** Steps of linear warm-up from 0 to the base rate. */
  warmupSteps: number;
  /** Total steps; the rate reaches minLr here and stays there. */
  totalSteps: number;
  /** The final rate (default 0). */
  minLr?: number;
}

/**
 * The rate at `step` (0-based): baseLr * step / warmupSteps during warm-up (as
 * transformers' get_cosine_schedule_with_warmup), then a half cosine from
 * baseLr down to minLr at totalSteps.
 */
export function warmupCosineLr(step: number, baseLr: number, options: WarmupCosineOptions): number {
  const { warmupSteps, totalSteps, minLr = 0 } = options;
  if (step < warmupSteps) return (baseLr * step) / warmupSteps;
  const progress = Math.min(1, (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps));
  return minLr + (baseLr - minLr) * 0.5 * (1 + Math.cos(Math.PI * progress));
}

/** Linear warm-up then cosine decay, driving `optimizer.lr`. */
export class WarmupCosineSchedule {
  readonly baseLr: number;
  readonly options: Readonly<WarmupCosineOptions>;
  #step = 0;

  constructor(
    readonly optimizer: Optimizer,
    options: WarmupCosineOptions,
  ) {
    const { warmupSteps, totalSteps, minLr = 0 } = options ?? ({} as WarmupCosineOptions);
    if (!Number.isInteger(warmupSteps) || warmupSteps < 0) {
      throw new Error(`WarmupCosineSchedule: warmupSteps must be an integer >= 0, got ${String(warmupSteps)}`);
    }
    if (!Number.isInteger(totalSteps) || totalSteps < warmupSteps || totalSteps < 1) {
      throw new Error(
        `WarmupCosineSchedule: totalSteps must be an integer >= max(1, warmupSteps), got ${String(totalSteps)}`,
      );
    }
    this.baseLr = optimizer.lr;
    if (!Number.isFinite(minLr) || minLr < 0 || minLr > this.baseLr) {
      throw new Error(`WarmupCosineSchedule: minLr must be in [0, ${this.baseLr}], got ${String(minLr)}`);
    }
    this.options = Object.freeze({ warmupSteps, totalSteps, minLr });
    optimizer.lr = warmupCosineLr(0, this.baseLr, this.options);
  }

  /** Steps taken so far. */
  get currentStep(): number {
    return this.#step;
  }

  /** Advances one step and sets the optimiser's rate for the next one. */
  step(): number {
    this.#step++;
    this.optimizer.lr = warmupCosineLr(this.#step, this.baseLr, this.options);
    return this.optimizer.lr;
  }
}
