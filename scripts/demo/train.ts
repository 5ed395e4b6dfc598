/**
 * The MNIST demo's base model and its training on digits, through the loop
 * every demo shares (loop.ts): minibatches in a fresh seeded order each epoch.
 * Distributed, each rank of an MPI job trains on its part of every minibatch
 * (tera.distributed.shardBatches) and the gradients are averaged before each
 * step: the same minibatches and, to float32 rounding, the same updates as
 * one process.
 */
import * as path from 'node:path';

import { type Device, type Tensor, autograd, distributed as dist, kernels, nn, tensor } from '../../lib';
import { type Digits, IMAGE_SIZE, permutation } from './data';
import { optimise } from './loop';

/** 784 -> 128 -> 64 -> 10 with ReLU: its Linear layers are named '0', '2' and '4'. */
export const BASE_SIZES = Object.freeze([IMAGE_SIZE, 128, 64, 10]);
const BASE_INIT_SEED = 7;
/** Written by scripts/pretrain-base.ts (npm run pretrain) and committed. */
export const BASE_WEIGHTS = path.join(__dirname, '..', '..', 'assets', 'mnist-mlp-base.safetensors');

export function createBaseModel(device: Device): nn.MLP {
  return new nn.MLP(BASE_SIZES, { seed: BASE_INIT_SEED, device });
}

export interface TrainOptions {
  epochs: number;
  batchSize: number;
  lr: number;
  device: Device;
  /** Seeds the minibatch order. */
  seed: number;
  /** Called after every optimiser step with that batch's loss. */
  onBatch?: (epoch: number, batch: number, loss: number) => void;
  /** Train on this rank's part of every batch (after tera.distributed.init()). */
  distributed?: boolean;
}

export interface TrainResult {
  /** The loss of every minibatch, in order. */
  batchLosses: number[];
  batchesPerEpoch: number;
  epochSeconds: number[];
  /** Every optimiser step's wall-clock time (its median resists a busy machine better than a mean). */
  stepSeconds: number[];
}

/** Images and labels of the digits at `indices` as tensors on `device`. */
function batchTensors(digits: Digits, indices: ArrayLike<number>, device: Device): [Tensor, Float32Array] {
  const images = new Float32Array(indices.length * IMAGE_SIZE);
  const labels = new Float32Array(indices.length);
  for (let i = 0; i < indices.length; i++) {
    const n = indices[i];
    images.set(digits.images.subarray(n * IMAGE_SIZE, (n + 1) * IMAGE_SIZE), i * IMAGE_SIZE);
    labels[i] = digits.labels[n];
  }
  return [tensor(images, [indices.length, IMAGE_SIZE], { device }), labels];
}

/** The mean loss over the digits at `indices`, with its gradients accumulated into the parameters. */
function lossAndGradients(model: nn.Module, digits: Digits, indices: ArrayLike<number>, device: Device): number {
  const [input, labels] = batchTensors(digits, indices, device);
  const loss = autograd.tidy(() => {
    const value = autograd.softmaxCrossEntropy(model.forward(input), labels);
    value.backward();
    return value.item();
  });
  input.dispose();
  return loss;
}

/**
 * Averages the gradients over the ranks, each weighted by its part of the batch
 * (`count` digits), and returns the whole batch's mean loss.
 */
function averageOverRanks(params: nn.Parameter[], count: number, loss: number): number {
  dist.averageGradients(params, { count });
  const sums = tensor(new Float32Array([loss * count, count]));
  dist.allReduce(sums);
  const [lossSum, total] = sums.toFloat32Array();
  sums.dispose();
  return lossSum / total;
}

/** Trains `params` (the model's trainable parameters) to classify `digits`. */
export function train(model: nn.Module, params: nn.Parameter[], digits: Digits, options: TrainOptions): TrainResult {
  const { epochs, batchSize, lr, device, seed, onBatch, distributed = false } = options;
  const batchesPerEpoch = Math.ceil(digits.count / batchSize);
  let order: Uint32Array = new Uint32Array(0);
  let parts: ReturnType<typeof dist.shardBatches> | null = null;
  const { losses, stepSeconds } = optimise(params, {
    steps: epochs * batchesPerEpoch,
    lr,
    step: (index) => {
      const [epoch, batch] = [Math.floor(index / batchesPerEpoch), index % batchesPerEpoch];
      if (batch === 0) {
        order = permutation(digits.count, seed, epoch + 1);
        parts = distributed ? dist.shardBatches(order, { batchSize }) : null;
      }
      const indices = parts ? parts[batch].indices : order.subarray(batch * batchSize, (batch + 1) * batchSize);
      const loss = indices.length > 0 ? lossAndGradients(model, digits, indices, device) : 0;
      return distributed ? averageOverRanks(params, indices.length, loss) : loss;
    },
    onStep: (index, loss) => onBatch?.(Math.floor(index / batchesPerEpoch), index % batchesPerEpoch, loss),
  });
  const epochSeconds = Array.from({ length: epochs }, (_, epoch) =>
    stepSeconds.slice(epoch * batchesPerEpoch, (epoch + 1) * batchesPerEpoch).reduce((a, b) => a + b, 0),
  );
  return { batchLosses: losses, batchesPerEpoch, epochSeconds, stepSeconds };
}

/** The fraction of `digits` the model classifies correctly. */
export function accuracy(model: nn.Module, digits: Digits, device: Device, batchSize = 1000): number {
  let correct = 0;
  for (let first = 0; first < digits.count; first += batchSize) {
    const indices = Array.from({ length: Math.min(batchSize, digits.count - first) }, (_, i) => first + i);
    const [input, labels] = batchTensors(digits, indices, device);
    const predicted = autograd.noGrad(() =>
      autograd.tidy(() => {
        const classes = kernels.argmax(model.forward(input).data);
        const values = classes.toFloat32Array();
        classes.dispose();
        return values;
      }),
    );
    input.dispose();
    labels.forEach((label, row) => {
      if (predicted[row] === label) correct++;
    });
  }
  return correct / digits.count;
}
