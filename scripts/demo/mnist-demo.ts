/**
 * npm run demo: adapt an MLP pretrained on upright MNIST digits to rotated
 * digits (on which the frozen base does poorly) with TeRA, VeRA and LoRA, and
 * with full fine-tuning as the reference. Prints a results table and writes
 * it, the loss curves (SVG) and every adapter to the output folder.
 * With --distributed under mpirun, every rank trains on its part of each batch
 * and rank 0 evaluates, saves and reports, adding the bytes each rank sent per
 * step and the time per step.
 * Flags: see USAGE in cli.ts (npm run demo -- --help).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';

import { SingleBar } from 'cli-progress';

import {
  type Device,
  LoraConfig,
  distributed as dist,
  TeraConfig,
  VeraConfig,
  injectAdapter,
  io,
  loadAdapter,
  type nn,
  resolveDevice,
  saveAdapter,
} from '../../lib';
import { lineChartSvg, smooth } from './chart';
import { type DemoOptions, type MethodName, USAGE, parseDemoArgs } from './cli';
import { type Digits, SPLIT, head, loadMnist, rotate, splitDigits } from './data';
import { formatBytes, formatPercent, markdownTable } from './table';
import { BASE_WEIGHTS, type TrainResult, accuracy, createBaseModel, train } from './train';

/** The base MLP's Linear layers (nn.MLP names them by position). */
const TARGET_MODULES = ['0', '2', '4'];
const FULL_WEIGHTS = 'model.safetensors';

interface Method {
  label: string;
  lr: number;
  /** Readies a fresh base model for training; returns what to optimise. */
  prepare(model: nn.MLP): nn.Parameter[];
  /** Saves what was trained into `dir`; returns the weights file. */
  save(model: nn.MLP, dir: string): string;
  /** Applies the files in `dir` to a fresh base model. */
  load(model: nn.MLP, dir: string): void;
}

function adapterMethod(label: string, lr: number, config: () => TeraConfig | VeraConfig | LoraConfig): Method {
  return {
    label,
    lr,
    prepare: (model) => injectAdapter(model, config()).trainableParameters(),
    save: (model, dir) => saveAdapter(model, dir).weightsPath,
    load: (model, dir) => void loadAdapter(model, dir),
  };
}

/**
 * Learning rates chosen once by validation accuracy after 10 epochs, training
 * on 6500 rotated training digits and validating on the other 1500 (never on
 * the test digits). The methods that train only scaling vectors (TeRA, VeRA)
 * want much larger steps than matrices do.
 */
const METHODS: Record<MethodName, Method> = {
  tera: adapterMethod('TeRA', 1e-1, () => new TeraConfig({ targetModules: TARGET_MODULES, seed: 0 })),
  // Only tera-peft reads these files, which regenerates VeRA's projections: store just the trained vectors.
  vera: adapterMethod(
    'VeRA',
    1e-1,
    () => new VeraConfig({ targetModules: TARGET_MODULES, r: 256, seed: 0, saveProjection: false }),
  ),
  lora: adapterMethod('LoRA', 1e-2, () => new LoraConfig({ targetModules: TARGET_MODULES, r: 8, alpha: 16, seed: 0 })),
  full: {
    label: 'full fine-tuning',
    lr: 3e-3,
    prepare: (model) => model.requiresGrad(true).parameters(),
    save: (model, dir) => {
      fs.mkdirSync(dir, { recursive: true });
      const file = path.join(dir, FULL_WEIGHTS);
      model.saveSafetensors(file);
      return file;
    },
    load: (model, dir) => void model.loadSafetensors(path.join(dir, FULL_WEIGHTS)),
  },
};

export interface MethodResult {
  method: MethodName;
  label: string;
  trainableParameters: number;
  accuracyBefore: number;
  accuracyAfter: number;
  secondsPerEpoch: number;
  weightsFile: string;
  weightsBytes: number;
  /** Mean loss of the first and last tenth of the minibatches. */
  lossStart: number;
  lossEnd: number;
  batchLosses: number[];
  batchesPerEpoch: number;
  /** With --distributed: the job's size, what each rank sent per step, and the median time of a step. */
  communication: { ranks: number; gradientBytesPerStep: number; bytesPerStep: number; msPerStep: number } | null;
}

export interface DemoResults {
  device: Device;
  rotate: number;
  epochs: number;
  trainDigits: number;
  testDigits: number;
  uprightBaseAccuracy: number;
  methods: MethodResult[];
  totalSeconds: number;
}

/** A fresh copy of the pretrained base, frozen. */
function loadBase(device: Device): nn.MLP {
  const model = createBaseModel(device);
  model.loadSafetensors(BASE_WEIGHTS);
  return model.requiresGrad(false);
}

/** Refuses base weights pretrained on another split: their training digits could be our test digits. */
function checkBaseWeights(): void {
  if (!fs.existsSync(BASE_WEIGHTS)) {
    throw new Error(`the base weights ${BASE_WEIGHTS} are missing; run \`npm run pretrain\` to make them`);
  }
  const { metadata } = io.readSafetensors(BASE_WEIGHTS);
  if (metadata.split_seed !== String(SPLIT.seed) || metadata.test_count !== String(SPLIT.testCount)) {
    throw new Error(
      `${BASE_WEIGHTS} was pretrained on another train/test split (seed ${metadata.split_seed}, ` +
        `${metadata.test_count} test digits; expected ${SPLIT.seed}, ${SPLIT.testCount}); run \`npm run pretrain\``,
    );
  }
}

function mean(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Saves the trained model, and measures the accuracy of the saved files applied to a fresh base. */
function evaluate(
  name: MethodName,
  model: nn.MLP,
  options: DemoOptions,
  device: Device,
  test: Digits,
): { accuracyAfter: number; weightsFile: string } {
  const method = METHODS[name];
  const dir = path.join(options.outDir, 'adapters', name);
  const weightsFile = method.save(model, dir);
  const inMemory = accuracy(model, test, device);
  // The reported accuracy is that of the saved files, applied to a fresh base.
  const reloaded = loadBase(device);
  method.load(reloaded, dir);
  const accuracyAfter = accuracy(reloaded, test, device);
  reloaded.dispose();
  if (accuracyAfter !== inMemory) {
    throw new Error(`${method.label}: accuracy ${inMemory} in memory but ${accuracyAfter} after reloading ${dir}`);
  }
  return { accuracyAfter, weightsFile };
}

/** Trains one method; returns its results (on rank 0 only when distributed). */
function runMethod(
  name: MethodName,
  options: DemoOptions,
  device: Device,
  data: { train: Digits; test: Digits },
  accuracyBefore: number,
): MethodResult | null {
  const method = METHODS[name];
  const model = loadBase(device);
  const params = method.prepare(model);
  const trainableParameters = params.reduce((n, p) => n + p.size, 0);
  const batchesPerEpoch = Math.ceil(data.train.count / options.batchSize);
  const reporting = !options.distributed || dist.rank() === 0;
  if (options.distributed) {
    dist.verifyModel(model); // every rank built the same model
    dist.resetStats();
  }
  const bar = new SingleBar({
    format: `${method.label.padEnd(16)} [{bar}] {percentage}% | epoch {epoch}/${options.epochs} | loss {loss} | {duration_formatted}`,
    hideCursor: true,
  });
  if (reporting) bar.start(options.epochs * batchesPerEpoch, 0, { epoch: 1, loss: '-' });
  let result: TrainResult;
  try {
    // Stopped even on failure, so the terminal gets its cursor back.
    result = train(model, params, data.train, {
      epochs: options.epochs,
      batchSize: options.batchSize,
      lr: method.lr,
      device,
      seed: 1,
      onBatch: (epoch, _batch, loss) => reporting && bar.increment({ epoch: epoch + 1, loss: loss.toFixed(3) }),
      distributed: options.distributed,
    });
  } finally {
    bar.stop();
  }
  let communication: MethodResult['communication'] = null;
  if (options.distributed) {
    const steps = options.epochs * batchesPerEpoch;
    const stats = dist.stats();
    const sent = Object.values(stats).reduce((n, s) => n + s.bytes, 0);
    communication = {
      ranks: dist.worldSize(),
      gradientBytesPerStep: (stats.averageGradients?.bytes ?? 0) / steps,
      bytesPerStep: sent / steps,
      msPerStep: 1000 * median(result.stepSeconds),
    };
    dist.verifyModel(model); // the ranks stayed in step
  }
  const saved = options.distributed
    ? dist.onRank0(() => evaluate(name, model, options, device, data.test))
    : evaluate(name, model, options, device, data.test);
  model.dispose();
  if (saved === undefined) return null;

  const tenth = Math.max(1, Math.floor(result.batchLosses.length / 10));
  return {
    method: name,
    label: method.label,
    trainableParameters,
    accuracyBefore,
    accuracyAfter: saved.accuracyAfter,
    secondsPerEpoch: mean(result.epochSeconds),
    weightsFile: saved.weightsFile,
    weightsBytes: fs.statSync(saved.weightsFile).size,
    lossStart: mean(result.batchLosses.slice(0, tenth)),
    lossEnd: mean(result.batchLosses.slice(-tenth)),
    batchLosses: result.batchLosses,
    batchesPerEpoch: result.batchesPerEpoch,
    communication,
  };
}

export function resultsTable(results: DemoResults): string {
  const distributed = results.methods.some((r) => r.communication !== null);
  const rows = results.methods.map((r) => [
    r.label,
    r.trainableParameters.toLocaleString('en-US'),
    formatPercent(r.accuracyBefore),
    formatPercent(r.accuracyAfter),
    r.secondsPerEpoch.toFixed(2),
    formatBytes(r.weightsBytes),
    ...(r.communication === null
      ? []
      : [
          String(r.communication.ranks),
          formatBytes(r.communication.gradientBytesPerStep),
          r.communication.msPerStep.toFixed(1),
        ]),
  ]);
  const extra = distributed ? ['ranks', 'gradients sent / step', 'ms / step (median)'] : [];
  return markdownTable(
    ['method', 'trainable params', 'frozen base acc.', 'acc. after', 's / epoch', 'adapter file', ...extra],
    rows,
    ['left', ...Array<string>(5 + extra.length).fill('right')],
  );
}

function writeOutputs(results: DemoResults, outDir: string): void {
  const title = `digits rotated ${results.rotate}°: held-out accuracy (${results.testDigits} test digits)`;
  io.writeFileAtomic(path.join(outDir, 'results.md'), `${title}\n\n${resultsTable(results)}\n`);
  const { methods, ...summary } = results;
  // The per-batch losses are in the chart; the JSON keeps the summary.
  const compact = methods.map((r) => ({ ...r, batchLosses: undefined }));
  io.writeFileAtomic(
    path.join(outDir, 'results.json'),
    `${JSON.stringify({ ...summary, methods: compact }, null, 2)}\n`,
  );
  const series = methods.map((r) => ({
    label: r.label,
    points: smooth(r.batchLosses, Math.max(1, Math.round(r.batchesPerEpoch / 10)), r.batchesPerEpoch),
  }));
  const svg = lineChartSvg(series, {
    title: `Training loss on digits rotated ${results.rotate}°`,
    xLabel: 'epoch',
    yLabel: 'cross-entropy loss (log scale)',
  });
  io.writeFileAtomic(path.join(outDir, 'loss-curves.svg'), svg);
}

/** Runs the whole demo; the smoke test calls this with small settings. */
export function runDemo(options: DemoOptions, log: (line: string) => void = console.log): DemoResults {
  const started = performance.now();
  const reporting = !options.distributed || dist.rank() === 0;
  const say = reporting ? log : () => {};
  const device = resolveDevice(options.device);
  checkBaseWeights();
  const split = splitDigits(loadMnist());
  const train = rotate(head(split.train, options.trainLimit), options.rotate);
  const test = rotate(split.test, options.rotate);

  const base = loadBase(device);
  const uprightBaseAccuracy = accuracy(base, split.test, device);
  const rotatedBaseAccuracy = accuracy(base, test, device);
  base.dispose();
  say(
    `base MLP: ${formatPercent(uprightBaseAccuracy)} on upright held-out digits, ` +
      `${formatPercent(rotatedBaseAccuracy)} on digits rotated ${options.rotate}° (${device}, ` +
      `${train.count} training / ${test.count} test digits)`,
  );

  const methods = options.methods
    .map((name) => runMethod(name, options, device, { train, test }, rotatedBaseAccuracy))
    .filter((r): r is MethodResult => r !== null);
  const results: DemoResults = {
    device,
    rotate: options.rotate,
    epochs: options.epochs,
    trainDigits: train.count,
    testDigits: test.count,
    uprightBaseAccuracy,
    methods,
    totalSeconds: 0,
  };
  results.totalSeconds = (performance.now() - started) / 1000;
  if (reporting) {
    fs.mkdirSync(options.outDir, { recursive: true });
    writeOutputs(results, options.outDir);
  }
  say(`\n${resultsTable(results)}\n`);
  say(`total ${results.totalSeconds.toFixed(1)} s; table, loss curves and adapters in ${options.outDir}/`);
  return results;
}

function main(): void {
  let options: DemoOptions;
  try {
    options = parseDemoArgs(process.argv.slice(2));
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
  if (options.help) {
    console.log(USAGE);
    return;
  }
  try {
    if (options.distributed) dist.init({ engine: options.device === 'cuda' ? 'nccl' : 'mpi' });
    runDemo(options);
    if (options.distributed) dist.finalize();
  } catch (error) {
    // Our errors name the problem and the fix; a stack trace would bury that.
    console.error(`demo: ${(error as Error).message}`);
    process.exitCode = 1;
  }
}

if (require.main === module) main();
