/**
 * The base model and the one training loop that pretraining and every
 * adaptation method share: AdamW with a short warm-up and cosine decay,
 * minibatches in a fresh seeded order each epoch.
 */
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';

import { type Device, type Tensor, autograd, nn, optim, tensor } from '../../lib';
import { type Digits, IMAGE_SIZE, permutation } from './data';

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
}

export interface TrainResult {
  /** The loss of every minibatch, in order. */
  batchLosses: number[];
  batchesPerEpoch: number;
  epochSeconds: number[];
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

/** Trains `params` (the model's trainable parameters) to classify `digits`. */
export function train(model: nn.Module, params: nn.Parameter[], digits: Digits, options: TrainOptions): TrainResult {
  const { epochs, batchSize, lr, device, seed, onBatch } = options;
  const batchesPerEpoch = Math.ceil(digits.count / batchSize);
  const totalSteps = epochs * batchesPerEpoch;
  // Weight decay would pull TeRA's and VeRA's scaling vectors towards 0, i.e. towards no update.
  const optimizer = new optim.AdamW(params, { lr, weightDecay: 0 });
  const schedule = new optim.WarmupCosineSchedule(optimizer, {
    warmupSteps: Math.min(50, Math.floor(totalSteps / 10)),
    totalSteps,
  });
  const batchLosses: number[] = [];
  const epochSeconds: number[] = [];
  try {
    for (let epoch = 0; epoch < epochs; epoch++) {
      const start = performance.now();
      const order = permutation(digits.count, seed, epoch + 1);
      for (let batch = 0; batch < batchesPerEpoch; batch++) {
        const [input, labels] = batchTensors(
          digits,
          order.subarray(batch * batchSize, (batch + 1) * batchSize),
          device,
        );
        const loss = autograd.tidy(() => {
          const value = autograd.softmaxCrossEntropy(model.forward(input), labels);
          value.backward();
          return value.item();
        });
        input.dispose();
        optimizer.step();
        schedule.step();
        optimizer.zeroGrad();
        batchLosses.push(loss);
        onBatch?.(epoch, batch, loss);
      }
      epochSeconds.push((performance.now() - start) / 1000);
    }
  } finally {
    optimizer.dispose();
  }
  return { batchLosses, batchesPerEpoch, epochSeconds };
}

/** The fraction of `digits` the model classifies correctly. */
export function accuracy(model: nn.Module, digits: Digits, device: Device, batchSize = 1000): number {
  let correct = 0;
  for (let first = 0; first < digits.count; first += batchSize) {
    const indices = Array.from({ length: Math.min(batchSize, digits.count - first) }, (_, i) => first + i);
    const [input, labels] = batchTensors(digits, indices, device);
    const logits = autograd.noGrad(() => autograd.tidy(() => model.forward(input).toFloat32Array()));
    input.dispose();
    const classes = logits.length / indices.length;
    labels.forEach((label, row) => {
      const scores = logits.subarray(row * classes, (row + 1) * classes);
      if (scores.indexOf(Math.max(...scores)) === label) correct++;
    });
  }
  return correct / digits.count;
}
