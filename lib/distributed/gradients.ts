/**
 * averageGradients: after backward() and before optimizer.step(), replaces the
 * gradient of every trainable parameter by its average over the job, in one
 * collective per step: all the gradients and a small tail travel in one flat
 * bucket (see collectives.ts). For TeRA that bucket is the scaling vectors'
 * gradients, a few hundred bytes per layer.
 *
 * Means over unequal shards. A loss that is the mean over this rank's n_r
 * examples has the gradient g_r = (1/n_r) sum of its examples' gradients. The
 * gradient of the mean over the whole global batch (N = sum of n_r) is
 * sum_r (n_r / N) g_r: the plain mean of the g_r only when every n_r is equal.
 * Given `count` (n_r), each rank sends n_r g_r and n_r, and the summed gradient
 * divided by the summed count is that weighted mean, exactly what one process
 * would compute on the whole batch. Without `count`, every rank weighs the same.
 *
 * Missing gradients. A parameter without a gradient on a rank (an empty shard,
 * or a parameter that rank did not use) contributes zeros; one without a
 * gradient on every rank keeps none, so the optimiser skips it as it would in
 * one process.
 *
 * The tail: one presence flag per parameter, the count, and whether this rank
 * passed a count. Float32 holds counts exactly up to 2^24 examples per step.
 */
import { Parameter } from '../autograd/var';
import { PeftModel } from '../adapters/peft-model';
import { Module } from '../nn/module';
import { zeros } from '../tensor/tensor';
import {
  bucketFor,
  checkEngine,
  checkLayout,
  fillBucket,
  layoutOf,
  pack,
  readBucket,
  reduceBucket,
  unpack,
  writeBucket,
} from './collectives';
import { type Group, runAsync, runSync } from './group';
import type { Steps } from './requests';

export interface AverageGradientsOptions {
  /**
   * How many examples (or tokens) this rank's loss is a mean over: its gradient
   * then weighs in proportion. Pass it on every rank, or on none (equal weights).
   */
  count?: number;
}

/** A model's trainable parameters, or parameters as given (e.g. optimizer.params). */
export type GradientSource = Module | PeftModel | Iterable<Parameter>;

const MAX_COUNT = 2 ** 24;

function parametersOf(source: GradientSource): Parameter[] {
  let list: Parameter[];
  if (source instanceof PeftModel || source instanceof Module) {
    list = source.trainableParameters();
  } else if (source !== null && typeof source === 'object' && Symbol.iterator in source) {
    list = [...new Set(source)];
  } else {
    throw new Error('averageGradients: pass a model, a PeftModel or an array of Parameters');
  }
  if (list.length === 0) throw new Error('averageGradients: there are no trainable parameters');
  list.forEach((p, i) => {
    if (!(p instanceof Parameter)) throw new Error(`averageGradients: item ${i} is not a Parameter`);
    if (p.device !== list[0].device) {
      throw new Error(`averageGradients: parameter ${i} is on ${p.device} but parameter 0 on ${list[0].device}`);
    }
  });
  return list;
}

function* averageSteps(g: Group, source: GradientSource, options: AverageGradientsOptions): Steps<void> {
  const params = parametersOf(source);
  if (options === null || typeof options !== 'object') throw new Error('averageGradients: options must be an object');
  const { count } = options;
  if (count !== undefined && !(Number.isInteger(count) && count >= 0 && count <= MAX_COUNT)) {
    throw new Error(`averageGradients: count must be an integer in [0, 2^24], got ${String(count)}`);
  }
  const device = params[0].device;
  checkEngine(g, 'averageGradients', device);
  const { worldSize } = g.info;
  if (worldSize === 1) return; // the average over one rank
  const P = params.length;
  const sizes = params.map((p) => p.size);
  yield* checkLayout(g, 'averageGradients', device, sizes);
  const { offsets, total } = layoutOf([...sizes, P + 2]);
  const bucket = bucketFor(g, device, total);

  const present = params.map((p) => p.grad !== null);
  if (present.includes(false)) fillBucket(bucket, 0);
  const weighted = count !== undefined;
  const withGrad = params.flatMap((p, i) => (present[i] ? [i] : []));
  pack(
    bucket,
    withGrad.map((i) => params[i].grad!),
    withGrad.map((i) => offsets[i]),
    weighted ? count : 1,
  );
  const tail = new Float32Array(P + 2);
  present.forEach((has, i) => (tail[i] = has ? 1 : 0));
  tail[P] = count ?? 0;
  tail[P + 1] = weighted ? 1 : 0;
  writeBucket(bucket, offsets[P], tail);
  yield* reduceBucket(bucket);
  tail.set(readBucket(bucket, offsets[P], P + 2));

  const weightedRanks = tail[P + 1];
  if (weightedRanks !== 0 && weightedRanks !== worldSize) {
    throw new Error(
      `averageGradients: ${weightedRanks} of ${worldSize} ranks passed a count and the others did not; ` +
        `pass one on every rank (or on none)`,
    );
  }
  // Every count 0 (all shards empty): the summed gradients are zero too, and stay so.
  const scale = weighted ? (tail[P] > 0 ? 1 / tail[P] : 0) : 1 / worldSize;
  const targets = params.flatMap((p, i) => {
    if (tail[i] === 0) return []; // no rank had a gradient: keep none
    p.grad ??= zeros(p.shape, { device });
    return [i];
  });
  unpack(
    bucket,
    targets.map((i) => params[i].grad!),
    targets.map((i) => offsets[i]),
    scale,
  );
}

/**
 * Averages the gradients of `source`'s trainable parameters over the ranks
 * (see the file header for `count`); call it on every rank between backward()
 * and optimizer.step(). Blocks until every rank has called it.
 */
export function averageGradients(source: GradientSource, options: AverageGradientsOptions = {}): void {
  runSync('averageGradients', (g) => averageSteps(g, source, options));
}

/** averageGradients on a worker thread; step the optimiser only after the promise resolves. */
export function averageGradientsAsync(source: GradientSource, options: AverageGradientsOptions = {}): Promise<void> {
  return runAsync('averageGradients', (g) => averageSteps(g, source, options));
}
