/**
 * npm run demo:lm: adapts a small byte-level GPT-2, pretrained on the Brown
 * corpus's non-fiction (assets/brown-gpt2, made by npm run pretrain:lm), to
 * its fiction genres with TeRA, VeRA and LoRA on every projection, and with
 * full fine-tuning for reference. Reports bits per byte on held-out fiction
 * files before and after, trainable parameters, seconds per step and the
 * saved file's size; continues one prompt with the base and every adapted
 * model (generate(), the same seed for all) and prints them side by side;
 * writes the table, the loss curves (SVG) and every adapter to the output
 * folder. With --sweep, the parameter-budget study
 * (sweep.ts) on the same task, learning rates chosen on the validation files.
 * Flags: see LM_USAGE (npm run demo:lm -- --help).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

import { SingleBar } from 'cli-progress';
import cliui from 'cliui';

import { type Device, type DeviceRequest, autograd, io, models, resolveDevice } from '../../lib';
import type { CausalLM } from '../../lib/models';
import { Tokenizer } from '../../lib/tokenizers';
import { BROWN_SPLIT, type BrownText, loadBrown, splitBrown } from './brown';
import { lineChartSvg, smooth } from './chart';
import { parseDevice, parseMethods, positiveInteger, runCli } from './cli';
import {
  END_OF_TEXT,
  LM_BASE_DIR,
  PRETRAINING_FILE,
  WindowBatches,
  bitsPerByte,
  encodeTexts,
  evaluationWindows,
  joinFiles,
} from './lm-data';
import { type LoopResult, median, optimise } from './loop';
import { type AdapterSpec, type FullWeights, METHOD_NAMES, type MethodName, methodHandlers } from './methods';
import { type SweepPoint, type SweepRow, type SweepTask, reportSweep, runSweep, sweepPoints, sweepRuns } from './sweep';
import { formatBytes, markdownTable } from './table';

/** Every projection of GPT-2's blocks (attention c_attn, c_proj; MLP c_fc, c_proj), not the tied lm_head. */
const TARGET_MODULES = 'all-linear';
const FULL_WEIGHTS = 'model.safetensors';

const FULL: FullWeights<CausalLM> = {
  save: (model, dir) => {
    model.savePretrained(dir);
    return path.join(dir, FULL_WEIGHTS);
  },
  load: (model, dir) => {
    const tuned = models.fromPretrained(dir, { device: model.parameters()[0].device });
    try {
      model.loadStateDict(tuned.stateDict());
    } finally {
      tuned.dispose();
    }
  },
};

const handlers = (spec: AdapterSpec) => methodHandlers<CausalLM>(spec, TARGET_MODULES, FULL);

/**
 * The default run of each method. Learning rates chosen on the validation
 * fiction files, never on the test files, by the sweep (npm run demo:lm --
 * --sweep --steps 50 --eval-windows 128): 0.1 for TeRA (0.03 at order 2, full
 * rank) and for VeRA at every size, 0.01 for LoRA r 1 and r 4 (0.003 at
 * r 16), 3e-4 for full fine-tuning.
 */
const DEFAULTS: Record<MethodName, { spec: AdapterSpec; lr: number }> = {
  tera: { spec: { method: 'tera' }, lr: 1e-1 },
  vera: { spec: { method: 'vera', r: 256 }, lr: 1e-1 },
  lora: { spec: { method: 'lora', r: 8, alpha: 16 }, lr: 1e-2 },
  full: { spec: { method: 'full' }, lr: 3e-4 },
};

/** The prompt every model continues in the side-by-side comparison, and how: sampled, the same seed for every model. */
export const PROMPT = 'She opened the door and saw';
const CONTINUATION = Object.freeze({ maxNewTokens: 80, temperature: 0.7, topK: 20, seed: 0 });

/** The prompt continued by `model` (stopping early at <|endoftext|>). */
function continuePrompt(model: CausalLM, tokenizer: Tokenizer): string {
  const prompt = tokenizer.encode(PROMPT, { addSpecialTokens: false }).ids;
  const { newTokens } = model.generate([prompt], CONTINUATION);
  return tokenizer.decode(newTokens[0], { skipSpecialTokens: true });
}

/** Continuations printed as columns, one per model, each wrapped to its column. */
export function sideBySide(columns: readonly { title: string; text: string }[], width: number): string {
  const ui = cliui({ width });
  const columnWidth = Math.floor(width / columns.length);
  const cell = (text: string) => ({ text, width: columnWidth, padding: [0, 2, 0, 0] });
  ui.div(...columns.map((c) => cell(c.title)));
  ui.div(...columns.map((c) => cell(`${PROMPT}${c.text}`.replace(/\n/g, ' / '))));
  return ui.toString();
}

export interface LmDemoOptions {
  methods: MethodName[];
  steps: number;
  batchSize: number;
  /** Held-out windows of the model's context scored for bits per byte (test files; validation in the sweep). */
  evalWindows: number;
  device: DeviceRequest;
  outDir: string;
  sweep: boolean;
  help: boolean;
  /** Where the pretrained base is (a folder in Hugging Face's layout). */
  base: string;
}

export const LM_USAGE = `Usage: npm run demo:lm -- [options]

Adapts a byte-level GPT-2 pretrained on the Brown corpus's non-fiction
(assets/brown-gpt2) to its fiction genres with TeRA, VeRA, LoRA and full
fine-tuning; reports bits per byte on held-out fiction files.

  --methods LIST      comma-separated, from ${METHOD_NAMES.join(', ')} (default: all)
  --steps N           optimiser steps per method (default 100)
  --batch-size N      windows of 128 bytes per step (default 8)
  --eval-windows N    held-out windows scored (default 256)
  --sweep             the parameter-budget study: every method at several sizes,
                      learning rates chosen on the validation files, scored on the
                      test files; writes sweep.md, sweep.json and sweep.svg into
                      OUT/sweep and caches every run there (rerun to resume)
  --device D          cpu, cuda or auto (default auto: the GPU when one is usable)
  --base DIR          the pretrained model folder (default assets/brown-gpt2)
  --out DIR           where the table, loss curves and adapters go (default .cache/demo-lm)
  --help              show this text`;

export function parseLmDemoArgs(argv: readonly string[]): LmDemoOptions {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      methods: { type: 'string', default: METHOD_NAMES.join(',') },
      steps: { type: 'string', default: '100' },
      'batch-size': { type: 'string', default: '8' },
      'eval-windows': { type: 'string', default: '256' },
      device: { type: 'string', default: 'auto' },
      base: { type: 'string', default: LM_BASE_DIR },
      out: { type: 'string', default: '.cache/demo-lm' },
      sweep: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  return {
    methods: parseMethods(values.methods),
    steps: positiveInteger(values.steps, '--steps'),
    batchSize: positiveInteger(values['batch-size'], '--batch-size'),
    evalWindows: positiveInteger(values['eval-windows'], '--eval-windows'),
    device: parseDevice(values.device),
    base: values.base,
    outDir: values.out,
    sweep: values.sweep,
    help: values.help,
  };
}

interface PretrainingRecord {
  splitSeed: number;
  trainingSeconds: number;
  validationBitsPerByte: number;
}

/** Refuses a base pretrained on another split: its training files could be our test files. */
function checkBase(folder: string): PretrainingRecord {
  const file = path.join(folder, PRETRAINING_FILE);
  if (!fs.existsSync(file)) {
    throw new Error(
      `the pretrained base in ${folder} is missing (no ${PRETRAINING_FILE}); run \`npm run pretrain:lm\``,
    );
  }
  const record = JSON.parse(fs.readFileSync(file, 'utf8')) as PretrainingRecord;
  if (record.splitSeed !== BROWN_SPLIT.seed) {
    throw new Error(
      `${folder} was pretrained on another split of the Brown corpus (seed ${record.splitSeed}, expected ` +
        `${BROWN_SPLIT.seed}); run \`npm run pretrain:lm\``,
    );
  }
  return record;
}

/** The task's data as token ids: training stream, and held-out windows of validation and test files. */
interface LmData {
  tokenizer: Tokenizer;
  context: number;
  train: Int32Array;
  validation: number[][];
  test: number[][];
  files: { train: number; validation: number; test: number };
}

function loadData(options: LmDemoOptions, context: number): LmData {
  const tokenizer = Tokenizer.fromFolder(options.base);
  const splits = splitBrown(loadBrown());
  const endOfText = tokenizer.tokenToId(END_OF_TEXT);
  if (endOfText === undefined) throw new Error(`the tokenizer in ${options.base} has no ${END_OF_TEXT} token`);
  const windows = (texts: BrownText[]) =>
    evaluationWindows(encodeTexts(tokenizer, texts), context, options.evalWindows);
  return {
    tokenizer,
    context,
    train: joinFiles(encodeTexts(tokenizer, splits.train), endOfText),
    validation: windows(splits.validation),
    test: windows(splits.test),
    files: { train: splits.train.length, validation: splits.validation.length, test: splits.test.length },
  };
}

/** A fresh copy of the pretrained base, frozen. */
function loadBase(options: LmDemoOptions, device: Device): CausalLM {
  return models.fromPretrained(options.base, { device }).requiresGrad(false);
}

const EVAL_BATCH = 16;

/** Trains `params` of `model` for options.steps steps on the training fiction, with a progress bar. */
function trainWithProgress(
  title: string,
  model: CausalLM,
  params: autograd.Parameter[],
  data: LmData,
  lr: number,
  options: LmDemoOptions,
): LoopResult {
  const batches = new WindowBatches(data.train, { context: data.context, batchSize: options.batchSize, seed: 1 });
  const bar = new SingleBar({
    format: `${title.padEnd(24)} [{bar}] {percentage}% | step {value}/{total} | loss {loss} | {duration_formatted}`,
    hideCursor: true,
  });
  bar.start(options.steps, 0, { loss: '-' });
  try {
    return optimise(params, {
      steps: options.steps,
      lr,
      step: (index) =>
        autograd.tidy(() => {
          const loss = model.loss(batches.batch(index));
          loss.backward();
          return loss.item();
        }),
      onStep: (index, loss) => bar.update(index + 1, { loss: loss.toFixed(3) }),
    });
  } finally {
    // Stopped even on failure, so the terminal gets its cursor back.
    bar.stop();
  }
}

export interface LmMethodResult {
  method: MethodName;
  label: string;
  lr: number;
  trainableParameters: number;
  bitsPerByteBefore: number;
  bitsPerByteAfter: number;
  secondsPerStep: number;
  weightsFile: string;
  weightsBytes: number;
  /** Mean loss (nats) of the first and last tenth of the steps. */
  lossStart: number;
  lossEnd: number;
  losses: number[];
  /** The prompt continued by the adapted model. */
  continuation: string;
}

export interface LmDemoResults {
  device: Device;
  steps: number;
  batchSize: number;
  context: number;
  files: LmData['files'];
  testWindows: number;
  base: { parameters: number; pretrainingSeconds: number; nonFictionBitsPerByte: number; continuation: string };
  methods: LmMethodResult[];
  totalSeconds: number;
}

function mean(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/** Trains one method, saves it, and scores the saved files applied to a fresh base on the test windows. */
function runMethod(
  name: MethodName,
  options: LmDemoOptions,
  device: Device,
  data: LmData,
  bitsPerByteBefore: number,
): LmMethodResult {
  const { spec, lr } = DEFAULTS[name];
  const method = handlers(spec);
  const model = loadBase(options, device);
  const params = method.prepare(model);
  const result = trainWithProgress(method.label, model, params, data, lr, options);
  const dir = path.join(options.outDir, 'adapters', name);
  const weightsFile = method.save(model, dir);
  model.dispose();
  // The reported score is that of the saved files, applied to a fresh base.
  const reloaded = loadBase(options, device);
  method.load(reloaded, dir);
  const bitsPerByteAfter = bitsPerByte(reloaded, data.test, EVAL_BATCH);
  const continuation = continuePrompt(reloaded, data.tokenizer);
  reloaded.dispose();
  const tenth = Math.max(1, Math.floor(result.losses.length / 10));
  return {
    method: name,
    label: method.label,
    lr,
    trainableParameters: params.reduce((n, p) => n + p.size, 0),
    bitsPerByteBefore,
    bitsPerByteAfter,
    secondsPerStep: median(result.stepSeconds),
    weightsFile,
    weightsBytes: fs.statSync(weightsFile).size,
    lossStart: mean(result.losses.slice(0, tenth)),
    lossEnd: mean(result.losses.slice(-tenth)),
    losses: result.losses,
    continuation,
  };
}

export function lmResultsTable(results: LmDemoResults): string {
  return markdownTable(
    ['method', 'trainable params', 'bits/byte before', 'bits/byte after', 's / step', 'adapter file'],
    results.methods.map((r) => [
      r.label,
      r.trainableParameters.toLocaleString('en-US'),
      r.bitsPerByteBefore.toFixed(3),
      r.bitsPerByteAfter.toFixed(3),
      r.secondsPerStep.toFixed(3),
      formatBytes(r.weightsBytes),
    ]),
    ['left', 'right', 'right', 'right', 'right', 'right'],
  );
}

function continuationSettings(): string {
  const { maxNewTokens, temperature, topK, seed } = CONTINUATION;
  return `${maxNewTokens} bytes sampled at temperature ${temperature}, top-k ${topK}, seed ${seed}`;
}

function continuations(results: LmDemoResults): { title: string; text: string }[] {
  return [
    { title: 'base (non-fiction)', text: results.base.continuation },
    ...results.methods.map((r) => ({ title: r.label, text: r.continuation })),
  ];
}

function writeOutputs(results: LmDemoResults, outDir: string): void {
  const title =
    `Brown fiction (k-r): bits per byte on ${results.testWindows} windows of ${results.context} bytes ` +
    `from ${results.files.test} held-out files, after ${results.steps} steps of ${results.batchSize} windows`;
  const samples = markdownTable(
    ['model', `"${PROMPT}" continued (${continuationSettings()})`],
    continuations(results).map((c) => [c.title, JSON.stringify(c.text).slice(1, -1).replace(/\|/g, '\\|')]),
    ['left', 'left'],
  );
  io.writeFileAtomic(path.join(outDir, 'results.md'), `${title}\n\n${lmResultsTable(results)}\n\n${samples}\n`);
  const { methods, ...summary } = results;
  const compact = methods.map((r) => ({ ...r, losses: undefined }));
  io.writeFileAtomic(
    path.join(outDir, 'results.json'),
    `${JSON.stringify({ ...summary, methods: compact }, null, 2)}\n`,
  );
  const window = Math.max(1, Math.round(results.steps / 30));
  const series = methods.map((r) => ({
    label: r.label,
    points: smooth(
      r.losses.map((l) => l / Math.LN2),
      window,
      1,
    ),
  }));
  const svg = lineChartSvg(series, {
    title: 'Training loss on Brown fiction (byte-level GPT-2 pretrained on non-fiction)',
    xLabel: 'step',
    yLabel: 'bits per byte (training batches)',
    yScale: 'linear',
  });
  io.writeFileAtomic(path.join(outDir, 'loss-curves.svg'), svg);
}

/** Runs the whole demo; the smoke test calls this with a tiny budget. */
export function runLmDemo(options: LmDemoOptions, log: (line: string) => void = console.log): LmDemoResults {
  const started = performance.now();
  const device = resolveDevice(options.device);
  const record = checkBase(options.base);
  const base = loadBase(options, device);
  const data = loadData(options, base.config.maxPositions);
  const parameters = base.numParameters();
  const before = bitsPerByte(base, data.test, EVAL_BATCH);
  const baseContinuation = continuePrompt(base, data.tokenizer);
  base.dispose();
  log(
    `base: byte-level GPT-2, ${parameters.toLocaleString('en-US')} parameters, pretrained on non-fiction ` +
      `(${record.validationBitsPerByte.toFixed(3)} bits per byte on held-out non-fiction); ` +
      `${before.toFixed(3)} bits per byte on held-out fiction (${data.test.length} windows of ` +
      `${data.context} bytes from ${data.files.test} test files; ${device})`,
  );
  const methods = options.methods.map((name) => runMethod(name, options, device, data, before));
  const results: LmDemoResults = {
    device,
    steps: options.steps,
    batchSize: options.batchSize,
    context: data.context,
    files: data.files,
    testWindows: data.test.length,
    base: {
      parameters,
      pretrainingSeconds: record.trainingSeconds,
      nonFictionBitsPerByte: record.validationBitsPerByte,
      continuation: baseContinuation,
    },
    methods,
    totalSeconds: 0,
  };
  results.totalSeconds = (performance.now() - started) / 1000;
  fs.mkdirSync(options.outDir, { recursive: true });
  writeOutputs(results, options.outDir);
  log(`\n${lmResultsTable(results)}\n`);
  log(`"${PROMPT}" continued by each model (${continuationSettings()}):\n`);
  log(sideBySide(continuations(results), Math.max(100, process.stdout.columns ?? 120)));
  log(`total ${results.totalSeconds.toFixed(1)} s; table, loss curves and adapters in ${options.outDir}/`);
  return results;
}

/**
 * The study's points: TeRA from high-order modes (<= 16) through the default (<= 128) to
 * order 2 (every layer's out and in dimensions one mode each once maxModeSize reaches 512)
 * at full Tucker rank, then order 2 at lower ranks; VeRA and LoRA by r; full fine-tuning.
 */
export function lmSweepPoints(methods: readonly MethodName[]): SweepPoint[] {
  return sweepPoints(
    {
      teraModeSizes: [16, 32, 64, 128, 512],
      order2ModeSize: 512,
      order2Ranks: [8, 32],
      veraRanks: [16, 64, 256],
      loraRanks: [1, 4, 16],
    },
    methods,
    (method) => DEFAULTS[method].lr,
  );
}

const BITS_PER_BYTE = { name: 'bits per byte', higherIsBetter: false, format: (v: number) => v.toFixed(3) };

/**
 * npm run demo:lm -- --sweep: trains every point on the training fiction,
 * picks each learning rate by bits per byte on the validation files, and
 * scores the pick on the test files. `points` defaults to the full study.
 */
export function runLmSweep(
  options: LmDemoOptions,
  log: (line: string) => void = console.log,
  points = lmSweepPoints(options.methods),
): SweepRow[] {
  const device = resolveDevice(options.device);
  checkBase(options.base);
  const probe = loadBase(options, device);
  const data = loadData(options, probe.config.maxPositions);
  probe.dispose();
  const task: SweepTask = {
    settings: {
      task: 'brown-fiction',
      steps: options.steps,
      batchSize: options.batchSize,
      evalWindows: options.evalWindows,
      splitSeed: BROWN_SPLIT.seed,
      device,
    },
    metric: BITS_PER_BYTE,
    ...sweepRuns({
      loadBase: () => loadBase(options, device),
      handlers,
      train: (title, model, params, lr) => trainWithProgress(title, model, params, data, lr, options),
      validation: (model) => bitsPerByte(model, data.validation, EVAL_BATCH),
      test: (model) => bitsPerByte(model, data.test, EVAL_BATCH),
    }),
  };
  const sweepDir = path.join(options.outDir, 'sweep');
  log(
    `sweep: ${points.length} settings, ${options.steps} steps of ${options.batchSize} windows on ${data.files.train} ` +
      `fiction files; learning rates chosen on ${data.validation.length} windows of ${data.files.validation} ` +
      `validation files, scored on ${data.test.length} windows of ${data.files.test} test files (${device}); ` +
      `cache in ${sweepDir}/`,
  );
  const rows = runSweep(task, points, sweepDir, log);
  reportSweep(
    rows,
    task,
    sweepDir,
    'Brown fiction: test bits per byte against trainable parameters',
    `byte-level GPT-2 pretrained on Brown non-fiction, adapted to fiction: ${options.steps} steps of ` +
      `${options.batchSize} windows of ${data.context} bytes; learning rate chosen on ${data.validation.length} ` +
      `validation windows; bits per byte on ${data.test.length} test windows`,
    log,
  );
  return rows;
}

if (require.main === module) {
  runCli({
    name: 'demo:lm',
    usage: LM_USAGE,
    parse: parseLmDemoArgs,
    run: (options) => {
      if (options.sweep) runLmSweep(options);
      else runLmDemo(options);
    },
  });
}
