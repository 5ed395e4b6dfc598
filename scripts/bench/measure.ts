/**
 * Timing. Every figure is the median of repeated runs after warm-up, with min and max.
 * Runs that are compared with each other are interleaved: one of each per repetition,
 * in an order that rotates, so a burst of load from elsewhere on a shared machine hits
 * them all alike; their ratios are taken per repetition and then the median.
 */
import { setNumThreads, zeros } from '../../lib';
import { native } from '../../lib/native/loader';
import type { TorchWorker } from './torch';

export interface Summary {
  median: number;
  min: number;
  max: number;
  /** How many samples (repetitions) the summary is over. */
  reps: number;
}

/** One thing to time: `once` runs it once and returns its duration in milliseconds. */
export interface Contender {
  name: string;
  once(): number | Promise<number>;
}

export interface Schedule {
  /** Untimed runs of each contender first (caches, page faults, lazy allocations). */
  warmup: number;
  /** A fixed number of repetitions; otherwise chosen from the warm-up time and the budget. */
  reps?: number;
  /** Wall-clock aim for the timed repetitions of one group, in milliseconds. */
  budgetMs: number;
  minReps: number;
  maxReps: number;
}

export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) throw new Error('summarize: no samples');
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  return { median, min: sorted[0], max: sorted[sorted.length - 1], reps: sorted.length };
}

/** Median (min, max) over repetitions of numerator[i] / denominator[i]. */
export function pairedRatio(numerator: readonly number[], denominator: readonly number[]): Summary {
  if (numerator.length !== denominator.length) throw new Error('pairedRatio: sample counts differ');
  return summarize(numerator.map((value, i) => value / denominator[i]));
}

/** Milliseconds taken by one synchronous call. */
export function timeSync(run: () => void): number {
  const start = process.hrtime.bigint();
  run();
  return Number(process.hrtime.bigint() - start) / 1e6;
}

// GPU work is queued on a stream: a batch of calls is timed up to a sum over one
// element, which waits for the stream; dividing by the batch spreads that wait.
const GPU_BATCH = 10;

/** A timer for calls on `device`: milliseconds per call, queued work included. */
export function deviceTimer(device: 'cpu' | 'cuda'): (run: () => void) => number {
  if (device === 'cpu') return timeSync;
  const marker = zeros([1], { device });
  return (run) =>
    timeSync(() => {
      for (let i = 0; i < GPU_BATCH; i++) run();
      native().sum(marker.storage);
    }) / GPU_BATCH;
}

function chooseReps(schedule: Schedule, msPerRep: number): number {
  if (schedule.reps !== undefined) return schedule.reps;
  const fit = Math.ceil(schedule.budgetMs / Math.max(msPerRep, 1e-3));
  return Math.min(schedule.maxReps, Math.max(schedule.minReps, fit));
}

/** Runs the contenders interleaved; returns each one's samples in milliseconds, by name. */
export async function interleave(contenders: readonly Contender[], schedule: Schedule): Promise<Map<string, number[]>> {
  let msPerRep = 0;
  for (let w = 0; w < Math.max(schedule.warmup, 1); w++) {
    msPerRep = 0;
    for (const contender of contenders) msPerRep += await contender.once();
  }
  const reps = chooseReps(schedule, msPerRep);
  const samples = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  for (let rep = 0; rep < reps; rep++) {
    for (let k = 0; k < contenders.length; k++) {
      const contender = contenders[(rep + k) % contenders.length];
      samples.get(contender.name)!.push(await contender.once());
    }
  }
  return samples;
}

/** What every suite gets from the entry point (run.ts). */
export interface SuiteContext {
  schedule: Schedule;
  /** CPU thread counts to run at; GPU cases run once. */
  threads: number[];
  devices: ('cpu' | 'cuda')[];
  /** The PyTorch worker, or null (the results then say why in environment.torch). */
  torch: TorchWorker | null;
  /** Whether that PyTorch can use the GPU (a CPU-only build leaves the GPU rows without it). */
  torchCuda: boolean;
  log(line: string): void;
}

/** The PyTorch worker if it can run on `device`. */
export function torchOn(context: SuiteContext, device: 'cpu' | 'cuda'): TorchWorker | null {
  return device === 'cpu' || context.torchCuda ? context.torch : null;
}

/** Sets our threads and PyTorch's (its intra-op threads and its BLAS's); refuses to go on if they differ. */
export async function useThreads(context: SuiteContext, threads: number): Promise<void> {
  setNumThreads(threads);
  if (!context.torch) return;
  const reply = await context.torch.request('threads', { n: threads });
  const blasThreads = reply.blas_threads ?? threads;
  if (reply.threads !== threads || blasThreads !== threads) {
    throw new Error(`PyTorch runs ${reply.threads} threads and its BLAS ${blasThreads}, not ${threads}`);
  }
}
