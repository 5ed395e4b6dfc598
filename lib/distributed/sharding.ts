/**
 * Data sharding: which examples each rank trains on, step by step.
 *
 * Every optimiser step takes the next global batch of `batchSize` examples of
 * the epoch's order and splits it into contiguous, near-equal parts, one per
 * rank (rank r gets positions floor(r B / W) to floor((r + 1) B / W) of a batch
 * of B). So every rank takes the same number of steps (a rank that ran out
 * early would leave the others waiting in a collective), every example is in
 * exactly one rank's part once per epoch, and the job trains on exactly the
 * batches one process would: with averageGradients({ count }) its update is
 * that process's update on the same batch.
 *
 * The remainder: when the epoch size is not a multiple of batchSize, the last
 * global batch is smaller (uneven). Nothing is padded (PyTorch's
 * DistributedSampler repeats examples to pad, which weighs them twice) and
 * nothing is dropped unless dropLast asks for it. When a global batch has fewer
 * examples than there are ranks, some ranks get an empty part for that step;
 * they still call averageGradients, with count 0.
 *
 * The order must be the same on every rank: give { seed, epoch } to shuffle
 * with random.permutation (Philox, identical on every machine), or pass an
 * order made the same way, never with Math.random.
 */
import { permutation } from '../random';
import { group, isInitialized } from './group';

export interface ShardOptions {
  /** Examples per optimiser step over all ranks together (the global batch). */
  batchSize: number;
  /** Shuffle 0..n-1 with random.permutation(n, { seed, key: epoch }); only with a count, not an explicit order. */
  seed?: number;
  /** The epoch (default 0): each epoch's shuffle differs. */
  epoch?: number;
  /** Drop the last global batch when it is smaller than batchSize (default false). */
  dropLast?: boolean;
  /** This process's rank and the world size by default (after init()). */
  rank?: number;
  worldSize?: number;
}

export interface Shard {
  /** This rank's examples for the step, in order (possibly none). */
  indices: Uint32Array;
  /** How many examples the whole step has, over every rank. */
  globalCount: number;
}

function checkInteger(value: unknown, what: string, min: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new Error(`shardBatches: ${what} must be an integer >= ${min}, got ${String(value)}`);
  }
  return value;
}

function epochOrder(source: number | ArrayLike<number>, options: ShardOptions): Uint32Array {
  if (typeof source === 'number') {
    const n = checkInteger(source, 'the example count', 0);
    if (options.seed === undefined) {
      if (options.epoch !== undefined) throw new Error('shardBatches: epoch shuffles only with a seed');
      return Uint32Array.from({ length: n }, (_, i) => i);
    }
    return permutation(n, {
      seed: checkInteger(options.seed, 'seed', 0),
      key: checkInteger(options.epoch ?? 0, 'epoch', 0),
    });
  }
  if (source === null || typeof source !== 'object' || typeof source.length !== 'number') {
    throw new Error('shardBatches: pass the number of examples or an array of example indices');
  }
  if (options.seed !== undefined || options.epoch !== undefined) {
    throw new Error('shardBatches: seed and epoch shuffle a count; an explicit order is used as given');
  }
  const order = Uint32Array.from(source);
  for (let i = 0; i < source.length; i++) {
    if (order[i] !== source[i]) throw new Error(`shardBatches: order[${i}] is ${source[i]}, not an example index`);
  }
  return order;
}

/**
 * This rank's examples for every step of one epoch. `source` is the number of
 * examples (in order, or shuffled with { seed, epoch }) or the epoch's order.
 */
export function shardBatches(source: number | ArrayLike<number>, options: ShardOptions): Shard[] {
  if (options === null || typeof options !== 'object') throw new Error('shardBatches: options are required');
  const batchSize = checkInteger(options.batchSize, 'batchSize', 1);
  if ((options.rank === undefined) !== (options.worldSize === undefined)) {
    throw new Error('shardBatches: give rank and worldSize together, or neither (after init())');
  }
  let rank: number;
  let worldSize: number;
  if (options.worldSize === undefined) {
    if (!isInitialized()) {
      throw new Error('shardBatches: call tera.distributed.init() first, or give rank and worldSize');
    }
    ({ rank, worldSize } = group('shardBatches').info);
  } else {
    worldSize = checkInteger(options.worldSize, 'worldSize', 1);
    rank = checkInteger(options.rank, 'rank', 0);
    if (rank >= worldSize) throw new Error(`shardBatches: rank ${rank} is not below worldSize ${worldSize}`);
  }
  const order = epochOrder(source, options);
  const shards: Shard[] = [];
  for (let first = 0; first < order.length; first += batchSize) {
    const globalCount = Math.min(batchSize, order.length - first);
    if (globalCount < batchSize && options.dropLast) break;
    const begin = first + Math.floor((rank * globalCount) / worldSize);
    const end = first + Math.floor(((rank + 1) * globalCount) / worldSize);
    shards.push({ indices: order.slice(begin, end), globalCount });
  }
  return shards;
}
