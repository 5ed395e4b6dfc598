/**
 * The small training problem of the distributed tests, shared by the jest test
 * (one process on whole batches: the reference) and by worker.ts (each rank of
 * an mpirun job on its part of every batch). 19 examples in global batches of
 * 7 make uneven parts (4 and 3 examples, then 3 and 2 in the last batch of 5).
 */
import * as tera from '../../lib';

export const METHODS = ['tera', 'vera', 'lora'] as const;
export type Method = (typeof METHODS)[number];

export const EXAMPLES = 19;
export const BATCH = 7;
export const EPOCHS = 2;
const SIZES = [12, 16, 5];
const CLASSES = SIZES[SIZES.length - 1];

/** Which ingredient a rank may build differently (the mismatch tests). */
export type Variant = 'same' | 'lora-rank' | 'tera-seed' | 'base-weights' | 'targets';

export function configFor(method: Method, variant: Variant = 'same'): tera.adapters.AdapterConfig {
  const targetModules = variant === 'targets' ? ['0'] : ['0', '2'];
  switch (method) {
    case 'tera':
      return new tera.TeraConfig({ targetModules, seed: variant === 'tera-seed' ? 1 : 0, alpha: 2 });
    case 'vera':
      return new tera.VeraConfig({ targetModules, r: 4, seed: 0 });
    case 'lora':
      return new tera.LoraConfig({ targetModules, r: variant === 'lora-rank' ? 2 : 4, alpha: 8, seed: 0 });
  }
}

/** The base MLP with `method`'s adapter; LoRA's B and VeRA's lambda_b start away from 0 so every tensor learns from step 1. */
export function buildModel(method: Method, variant: Variant = 'same'): tera.PeftModel {
  const base = new tera.nn.MLP(SIZES, { seed: variant === 'base-weights' ? 8 : 7 }).requiresGrad(false);
  const model = tera.injectAdapter(base, configFor(method, variant));
  for (const [name, p] of model.namedParameters()) {
    if (/lora_B|vera_lambda_b/.test(name))
      p.data.set(tera.random.uniform(p.shape, { seed: 3, key: p.size }).toFloat32Array());
  }
  return model;
}

export function dataset(): { inputs: Float32Array; labels: number[] } {
  const inputs = tera.random.normal([EXAMPLES, SIZES[0]], { seed: 11 }).toFloat32Array();
  const labels = Array.from({ length: EXAMPLES }, (_, i) => (i * 3) % CLASSES);
  return { inputs, labels };
}

/** Each step's examples: the whole global batch (worldSize 1) or this rank's part of it. */
export function steps(rank: number, worldSize: number): tera.distributed.Shard[] {
  return Array.from({ length: EPOCHS }, (_, epoch) =>
    tera.distributed.shardBatches(EXAMPLES, { batchSize: BATCH, seed: 5, epoch, rank, worldSize }),
  ).flat();
}

export interface TrainResult {
  /** Trainable parameters by name after the last step. */
  params: Record<string, number[]>;
  /** Each step's mean loss over its global batch. */
  losses: number[];
}

/**
 * SGD with momentum on `shards`. `exchange` (the distributed part) averages the
 * gradients given this rank's example count and returns the step's global mean
 * loss from this rank's; in one process it is absent.
 */
export function train(
  model: tera.PeftModel,
  shards: tera.distributed.Shard[],
  exchange?: (count: number, loss: number) => number,
): TrainResult {
  const { inputs, labels } = dataset();
  const optimizer = new tera.SGD(model.trainableParameters(), { lr: 0.2, momentum: 0.9 });
  const losses: number[] = [];
  for (const { indices } of shards) {
    let loss = 0;
    if (indices.length > 0) {
      const x = new Float32Array(indices.length * SIZES[0]);
      indices.forEach((n, row) => x.set(inputs.subarray(n * SIZES[0], (n + 1) * SIZES[0]), row * SIZES[0]));
      const input = tera.tensor(x, [indices.length, SIZES[0]]);
      const y = Array.from(indices, (n) => labels[n]);
      loss = tera.autograd.tidy(() => {
        const value = tera.autograd.softmaxCrossEntropy(model.forward(input), y);
        value.backward();
        return value.item();
      });
      input.dispose();
    }
    losses.push(exchange ? exchange(indices.length, loss) : loss);
    optimizer.step();
    optimizer.zeroGrad();
  }
  optimizer.dispose();
  const params = Object.fromEntries(
    model
      .namedParameters()
      .filter(([, p]) => p.requiresGrad)
      .map(([name, p]) => [name, Array.from(p.toFloat32Array())]),
  );
  return { params, losses };
}
