/**
 * Optimisers (AdamW, SGD), gradient clipping and learning-rate schedules.
 */
export { Optimizer, AdamW, SGD, clipGradNorm } from './optimizer';
export type { AdamWOptions, SGDOptions } from './optimizer';
export { WarmupCosineSchedule, warmupCosineLr } from './schedule';
export type { WarmupCosineOptions } from './schedule';
