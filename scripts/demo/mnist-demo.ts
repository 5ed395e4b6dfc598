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

import { type Device, distributed as dist, io, type nn, resolveDevice } from '../../lib';
import { lineChartSvg, smooth } from './chart';
import { type DemoOptions, USAGE, parseDemoArgs, runCli } from './cli';
import { type Digits, SPLIT, VALIDATION_COUNT, head, holdOutValidation, loadMnist, rotate, splitDigits } from './data';
import { median } from './loop';
import { type AdapterSpec, type FullWeights, type MethodName, methodHandlers } from './methods';
import { type SweepPoint, type SweepRow, type SweepTask, reportSweep, runSweep, sweepPoints, sweepRuns } from './sweep';
import { formatBytes, formatPercent, markdownTable } from './table';
import { BASE_WEIGHTS, type TrainResult, accuracy, createBaseModel, train } from './train';

/** The base MLP's Linear layers (nn.MLP names them by position). */
const TARGET_MODULES = ['0', '2', '4'];
const FULL_WEIGHTS = 'model.safetensors';

const FULL: FullWeights<nn.MLP> = {
  save: (model, dir) => {
    fs.mkdirSync(dir, { recursive: true });
    const file = path.join(dir, FULL_WEIGHTS);
    model.saveSafetensors(file);
    return file;
  },
  load: (model, dir) => void model.loadSafetensors(path.join(dir, FULL_WEIGHTS)),
};

const handlers = (spec: AdapterSpec) => methodHandlers<nn.MLP>(spec, TARGET_MODULES, FULL);

/**
 * The default run of each method. Learning rates chosen by validation accuracy
 * after 10 epochs on the training digits less the validation digits (never on
 * the test digits); the methods that train only scaling vectors (TeRA, VeRA)
 * want much larger steps than matrices do.
 */
const DEFAULTS: Record<MethodName, { spec: AdapterSpec; lr: number }> = {
  tera: { spec: { method: 'tera' }, lr: 1e-1 },
  vera: { spec: { method: 'vera', r: 256 }, lr: 1e-1 },
  lora: { spec: { method: 'lora', r: 8, alpha: 16 }, lr: 1e-2 },
  full: { spec: { method: 'full' }, lr: 3e-3 },
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

/** Saves the trained model, and measures the accuracy of the saved files applied to a fresh base. */
function evaluate(
  name: MethodName,
  model: nn.MLP,
  options: DemoOptions,
  device: Device,
  test: Digits,
): { accuracyAfter: number; weightsFile: string } {
  const method = handlers(DEFAULTS[name].spec);
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

/** Trains `params` of `model` on `digits` with a progress bar titled `title` (shown when `reporting`). */
function trainWithProgress(
  title: string,
  model: nn.MLP,
  params: nn.Parameter[],
  digits: Digits,
  lr: number,
  options: DemoOptions,
  device: Device,
  reporting: boolean,
): TrainResult {
  const bar = new SingleBar({
    format: `${title.padEnd(16)} [{bar}] {percentage}% | epoch {epoch}/${options.epochs} | loss {loss} | {duration_formatted}`,
    hideCursor: true,
  });
  if (reporting) bar.start(options.epochs * Math.ceil(digits.count / options.batchSize), 0, { epoch: 1, loss: '-' });
  try {
    // Stopped even on failure, so the terminal gets its cursor back.
    return train(model, params, digits, {
      epochs: options.epochs,
      batchSize: options.batchSize,
      lr,
      device,
      seed: 1,
      onBatch: (epoch, _batch, loss) => reporting && bar.increment({ epoch: epoch + 1, loss: loss.toFixed(3) }),
      distributed: options.distributed,
    });
  } finally {
    bar.stop();
  }
}

/** Trains one method; returns its results (on rank 0 only when distributed). */
function runMethod(
  name: MethodName,
  options: DemoOptions,
  device: Device,
  data: { train: Digits; test: Digits },
  accuracyBefore: number,
): MethodResult | null {
  const method = handlers(DEFAULTS[name].spec);
  const model = loadBase(device);
  const params = method.prepare(model);
  const trainableParameters = params.reduce((n, p) => n + p.size, 0);
  const batchesPerEpoch = Math.ceil(data.train.count / options.batchSize);
  const reporting = !options.distributed || dist.rank() === 0;
  if (options.distributed) {
    dist.verifyModel(model); // every rank built the same model
    dist.resetStats();
  }
  const result = trainWithProgress(
    method.label,
    model,
    params,
    data.train,
    DEFAULTS[name].lr,
    options,
    device,
    reporting,
  );
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

/**
 * The study's points: TeRA from high-order modes (<= 16) through the default (<= 128) to
 * order 2 (the 784 inputs and 128 outputs of the first layer each one mode) at full Tucker
 * rank, then order 2 at lower ranks; VeRA and LoRA by r; full fine-tuning. Each search
 * starts at the default run's learning rate.
 */
export function mnistSweepPoints(methods: readonly MethodName[]): SweepPoint[] {
  return sweepPoints(
    {
      teraModeSizes: [16, 32, 64, 128, 1024],
      order2ModeSize: 1024,
      order2Ranks: [8, 16, 32, 64, 128],
      veraRanks: [16, 64, 256, 1024],
      loraRanks: [1, 2, 4, 8, 16, 32],
    },
    methods,
    (method) => DEFAULTS[method].lr,
  );
}

const ACCURACY = { name: 'accuracy', higherIsBetter: true, format: formatPercent };

/**
 * npm run demo -- --sweep: trains every point on the rotated training digits
 * less the validation digits, picks each learning rate by validation accuracy,
 * and scores the pick on the test digits. `points` defaults to the full study.
 */
export function runMnistSweep(
  options: DemoOptions,
  log: (line: string) => void = console.log,
  points = mnistSweepPoints(options.methods),
): SweepRow[] {
  const device = resolveDevice(options.device);
  checkBaseWeights();
  const split = splitDigits(loadMnist());
  const { train: sweepTrain, validation } = holdOutValidation(rotate(split.train, options.rotate));
  const trainDigits = head(sweepTrain, options.trainLimit);
  const test = rotate(split.test, options.rotate);
  const task: SweepTask = {
    settings: {
      task: 'mnist',
      rotate: options.rotate,
      epochs: options.epochs,
      batchSize: options.batchSize,
      trainDigits: trainDigits.count,
      validationDigits: validation.count,
      device,
    },
    metric: ACCURACY,
    ...sweepRuns({
      loadBase: () => loadBase(device),
      handlers,
      train: (title, model, params, lr) =>
        trainWithProgress(title, model, params, trainDigits, lr, options, device, true),
      validation: (model) => accuracy(model, validation, device),
      test: (model) => accuracy(model, test, device),
    }),
  };
  const sweepDir = path.join(options.outDir, 'sweep');
  log(
    `sweep: ${points.length} settings on ${trainDigits.count} rotated training digits, learning rates chosen on ` +
      `${validation.count} validation digits, scored on ${test.count} test digits (${device}); cache in ${sweepDir}/`,
  );
  const rows = runSweep(task, points, sweepDir, log);
  reportSweep(
    rows,
    task,
    sweepDir,
    `Digits rotated ${options.rotate}°: test accuracy against trainable parameters`,
    `digits rotated ${options.rotate}°, ${options.epochs} epochs on ${trainDigits.count} training digits; ` +
      `learning rate chosen on ${VALIDATION_COUNT} validation digits; accuracy on ${test.count} test digits`,
    log,
  );
  return rows;
}

if (require.main === module) {
  runCli({
    name: 'demo',
    usage: USAGE,
    parse: parseDemoArgs,
    run: (options) => {
      if (options.distributed) dist.init({ engine: options.device === 'cuda' ? 'nccl' : 'mpi' });
      if (options.sweep) runMnistSweep(options);
      else runDemo(options);
      if (options.distributed) dist.finalize();
    },
  });
}
