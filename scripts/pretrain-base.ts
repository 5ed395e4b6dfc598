/**
 * Pretrains the demo's base MLP on upright training digits and writes its
 * weights to assets/mnist-mlp-base.safetensors (about 430 kB, committed), so
 * `npm run demo` starts from a fixed, reproducible base. Run: npm run pretrain
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { resolveDevice } from '../lib';
import { SPLIT, loadMnist, splitDigits } from './demo/data';
import { BASE_SIZES, BASE_WEIGHTS, accuracy, createBaseModel, train } from './demo/train';

const PRETRAIN = Object.freeze({ epochs: 12, batchSize: 64, lr: 2e-3, seed: 1 });

function main(): void {
  const { values } = parseArgs({ options: { device: { type: 'string', default: 'cpu' } } });
  const device = resolveDevice(values.device as 'cpu' | 'cuda' | 'auto');
  const { train: trainDigits, test } = splitDigits(loadMnist());
  const model = createBaseModel(device);
  console.log(`pretraining ${BASE_SIZES.join('-')} on ${trainDigits.count} upright digits (${device})`);
  const result = train(model, model.parameters(), trainDigits, {
    ...PRETRAIN,
    device,
    onBatch: (epoch, batch, loss) => {
      if (batch === 0) console.log(`epoch ${epoch + 1}/${PRETRAIN.epochs}: first batch loss ${loss.toFixed(3)}`);
    },
  });
  const testAccuracy = accuracy(model, test, device);
  const seconds = result.epochSeconds.reduce((a, b) => a + b, 0);
  console.log(`upright held-out accuracy ${(testAccuracy * 100).toFixed(1)}% after ${seconds.toFixed(1)} s`);
  fs.mkdirSync(path.dirname(BASE_WEIGHTS), { recursive: true });
  model.saveSafetensors(BASE_WEIGHTS, {
    sizes: BASE_SIZES.join(','),
    split_seed: String(SPLIT.seed),
    test_count: String(SPLIT.testCount),
    epochs: String(PRETRAIN.epochs),
    upright_test_accuracy: testAccuracy.toFixed(4),
  });
  console.log(`wrote ${path.relative(process.cwd(), BASE_WEIGHTS)}`);
}

main();
