/**
 * Text generation for causal language models, as transformers' generate():
 * greedy decoding (temperature 0) or sampling through logits processors
 * (temperature, top-k, top-p, and the caller's own), seeded, over a batch with
 * left padding and an attention mask, stopping at the config's eos_token_id.
 * With the KV cache (the default) the prompt runs once and each new token runs
 * alone against a StaticKeyValueCache preallocated at the final length; without
 * it (useCache: false) every step runs the whole sequence again, which is
 * slower but shares nothing with the cache.
 *
 * Forms: generate() returns the sequences and can call onStep per token;
 * generateStream() is an async iterator of the same steps, for printing tokens
 * as they come. Every option is checked before anything is allocated; the model
 * is never changed.
 *
 * Sampling draws one uniform number per (step, row) from Philox4x32-10 keyed by
 * the seed, so a seed gives the same tokens with or without the cache, on any
 * device, whatever the other rows of the batch.
 */
import { randomBytes } from 'node:crypto';
import { setImmediate } from 'node:timers/promises';

import type { Input } from '../autograd/ops';
import { type Parameter, type Var, noGrad, tidy } from '../autograd/var';
import type { ModelConfig } from '../models/config';
import { type ForwardOptions, type TokenIds, positionsFromMask, readTokens } from '../models/inputs';
import { native } from '../native/loader';
import { describeValue } from '../shape';
import { StaticKeyValueCache } from './kv-cache';
import {
  type LogitsProcessor,
  TemperatureWarper,
  TopKWarper,
  TopPWarper,
  applyProcessors,
  softmax64,
} from './logits-processors';

/** What generation needs of a model: its config, its parameters (their device) and next-token logits. */
export interface GenerativeModel {
  readonly config: ModelConfig;
  parameters(): Parameter[];
  /** Logits [batch, vocab] of each row's last token. */
  lastTokenLogits(ids: Input | TokenIds, options?: ForwardOptions): Var;
}

export function isGenerativeModel(model: unknown): model is GenerativeModel {
  const m = model as Partial<GenerativeModel> | null;
  return (
    m !== null &&
    typeof m === 'object' &&
    typeof m.lastTokenLogits === 'function' &&
    typeof m.parameters === 'function' &&
    typeof m.config === 'object'
  );
}

/** One decoding step: the token each row got. */
export interface GenerationStep {
  /** 0 for the first new token. */
  readonly index: number;
  /** The new token of every row; a row that had already finished gets padTokenId. */
  readonly tokens: readonly number[];
  /** Whether each row has finished (its eos token is this step's or an earlier one). */
  readonly finished: readonly boolean[];
}

export interface GenerateOptions {
  /** How many tokens to add at most (required): prompt plus these must fit the model's positions. */
  maxNewTokens: number;
  /** 0: greedy (the most probable token); > 0: sample with the scores divided by it. Default 1. */
  temperature?: number;
  /** Sample only among the k most probable tokens (with ties). Default: all. */
  topK?: number | null;
  /** Sample only among the most probable tokens holding at least this probability, in (0, 1]. Default 1. */
  topP?: number | null;
  /** Seeds the sampling (an unsigned 64-bit integer): the same seed gives the same tokens. Default: random. */
  seed?: number | bigint | null;
  /** 1 for a token, 0 for padding, [batch, tokens]: left padding only (the new tokens follow the last column). */
  attentionMask?: TokenIds | null;
  /** Stop a row at these ids (default: config.json's eos_token_id); null never stops early. */
  eosTokenId?: number | readonly number[] | null;
  /** What a finished row gets in later steps (default: pad_token_id, else the first eos id, else 0). */
  padTokenId?: number | null;
  /** Reuse keys and values through a KV cache (default true); false reruns the whole sequence each step. */
  useCache?: boolean;
  /** Processors applied to each row's scores before temperature, top-k and top-p (and before greedy's argmax). */
  logitsProcessors?: readonly LogitsProcessor[];
  /** Called with every step as it is decoded (generate() only; generateStream() yields them). */
  onStep?: ((step: GenerationStep) => void) | null;
}

export interface GenerateOutput {
  /** Each row's prompt (padding included) and its new tokens, padTokenId after its eos, as transformers' sequences. */
  sequences: number[][];
  /** Each row's new tokens up to and including its eos. */
  newTokens: number[][];
  /** Whether each row stopped at an eos token (false: it ran to maxNewTokens). */
  finished: boolean[];
}

const OPTION_NAMES = [
  'maxNewTokens',
  'temperature',
  'topK',
  'topP',
  'seed',
  'attentionMask',
  'eosTokenId',
  'padTokenId',
  'useCache',
  'logitsProcessors',
  'onStep',
] as const;

/** Everything a run needs, checked. */
interface Plan {
  model: GenerativeModel;
  batch: number;
  /** Each row's prompt. */
  rows: number[][];
  /** Each row's attention mask over the prompt (all ones without padding). */
  masks: number[][];
  padded: boolean;
  maxNewTokens: number;
  greedy: boolean;
  processors: LogitsProcessor[];
  /** Philox key words of the seed. */
  key: [number, number];
  eos: Set<number>;
  pad: number;
  useCache: boolean;
}

function tokenId(value: unknown, vocab: number, what: string): number {
  if (!Number.isSafeInteger(value) || (value as number) < 0 || (value as number) >= vocab) {
    throw new Error(`${what} must be a token id in 0..${vocab - 1}, got ${describeValue(value)}`);
  }
  return value as number;
}

/** The stop ids: the option, else config.json's eos_token_id (an id, a list of ids, or null). */
function eosIds(config: ModelConfig, option: GenerateOptions['eosTokenId'], what: string): Set<number> {
  const fromConfig = option === undefined;
  const value = fromConfig ? (config.json.eos_token_id ?? null) : option;
  const name = fromConfig ? `${what}: config.json's eos_token_id` : `${what}: eosTokenId`;
  if (value === null) return new Set();
  const list = Array.isArray(value) ? (value as unknown[]) : [value];
  return new Set(list.map((id, i) => tokenId(id, config.vocabSize, Array.isArray(value) ? `${name}[${i}]` : name)));
}

function seedKey(seed: GenerateOptions['seed'], what: string): [number, number] {
  let value: bigint;
  if (seed === undefined || seed === null) value = randomBytes(8).readBigUInt64LE();
  else if (typeof seed === 'bigint' && seed >= 0n && seed < 1n << 64n) value = seed;
  else if (typeof seed === 'number' && Number.isSafeInteger(seed) && seed >= 0) value = BigInt(seed);
  else
    throw new Error(
      `${what}: seed must be a non-negative safe integer or a BigInt below 2^64, got ${describeValue(seed)}`,
    );
  return [Number(value & 0xffffffffn), Number(value >> 32n)];
}

/** Checks `ids` and `options` against the model; throws naming the first problem. */
function plan(model: GenerativeModel, ids: unknown, options: GenerateOptions, what: string): Plan {
  if (!isGenerativeModel(model)) {
    throw new Error(`${what} needs a language model (tera.models.CausalLM), got ${describeValue(model)}`);
  }
  if (options === null || typeof options !== 'object') {
    throw new Error(`${what}: options must be an object with at least maxNewTokens`);
  }
  const unknown = Object.keys(options).filter((k) => !(OPTION_NAMES as readonly string[]).includes(k));
  if (unknown.length > 0) {
    throw new Error(
      `${what}: unknown option ${unknown.map((k) => `'${k}'`).join(', ')}; options: ${OPTION_NAMES.join(', ')}`,
    );
  }
  const { config } = model;
  const { maxNewTokens } = options;
  if (!Number.isSafeInteger(maxNewTokens) || maxNewTokens < 1) {
    throw new Error(`${what}: maxNewTokens must be an integer >= 1, got ${describeValue(maxNewTokens)}`);
  }
  const tokens = readTokens(config, ids, { attentionMask: options.attentionMask ?? null }, what);
  const { batch, tokens: length } = tokens;
  if (length + maxNewTokens > config.maxPositions) {
    throw new Error(
      `${what}: ${length} prompt tokens and maxNewTokens ${maxNewTokens} exceed the model's ${config.maxPositions} positions ` +
        `(at most ${Math.max(config.maxPositions - length, 0)} new tokens after this prompt)`,
    );
  }
  const rows = Array.from({ length: batch }, (_, b) => Array.from(tokens.ids.subarray(b * length, (b + 1) * length)));
  const masks = rows.map((row, b) =>
    row.map((_, t) => (tokens.tokenMask === null ? 1 : tokens.tokenMask[b * length + t])),
  );
  masks.forEach((mask, b) => {
    const first = mask.indexOf(1);
    if (first < 0) throw new Error(`${what}: attentionMask row ${b} has no token (all padding)`);
    if (mask.indexOf(0, first) >= 0) {
      throw new Error(
        `${what}: attentionMask row ${b} has padding after a token; generation takes left padding only ` +
          '(the new tokens follow the last column)',
      );
    }
  });

  const temperature = options.temperature ?? 1;
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0) {
    throw new Error(`${what}: temperature must be a finite number >= 0, got ${describeValue(temperature)}`);
  }
  const greedy = temperature === 0;
  const sampling = (['topK', 'topP', 'seed'] as const).filter((k) => options[k] !== undefined && options[k] !== null);
  if (greedy && sampling.length > 0) {
    throw new Error(
      `${what}: temperature 0 decodes greedily, where ${sampling.join(' and ')} would do nothing; ` +
        'leave them out, or sample with a temperature > 0',
    );
  }
  const processors: LogitsProcessor[] = [];
  const custom = options.logitsProcessors ?? [];
  if (!Array.isArray(custom) || custom.some((p) => typeof (p as Partial<LogitsProcessor>)?.process !== 'function')) {
    throw new Error(`${what}: logitsProcessors must be an array of objects with a process(scores, ids) method`);
  }
  processors.push(...custom);
  const withSetting = (make: () => LogitsProcessor) => {
    try {
      processors.push(make());
    } catch (error) {
      throw new Error(`${what}: ${(error as Error).message}`);
    }
  };
  if (!greedy && temperature !== 1) withSetting(() => new TemperatureWarper(temperature));
  if (options.topK !== undefined && options.topK !== null) withSetting(() => new TopKWarper(options.topK as number));
  if (options.topP !== undefined && options.topP !== null) withSetting(() => new TopPWarper(options.topP as number));
  const key = seedKey(options.seed, what);

  const eos = eosIds(config, options.eosTokenId, what);
  const padOption = options.padTokenId ?? config.json.pad_token_id ?? null;
  const pad =
    padOption !== null
      ? tokenId(
          padOption,
          config.vocabSize,
          `${what}: ${options.padTokenId != null ? 'padTokenId' : "config.json's pad_token_id"}`,
        )
      : (eos.values().next().value ?? 0);
  const useCache = options.useCache ?? true;
  if (typeof useCache !== 'boolean')
    throw new Error(`${what}: useCache must be true or false, got ${describeValue(useCache)}`);
  if (options.onStep !== undefined && options.onStep !== null && typeof options.onStep !== 'function') {
    throw new Error(`${what}: onStep must be a function, got ${describeValue(options.onStep)}`);
  }
  const padded = masks.some((mask) => mask[0] === 0);
  return { model, batch, rows, masks, padded, maxNewTokens, greedy, processors, key, eos, pad, useCache };
}

/** A uniform number in [0, 1) with 53 random bits, for row `row` at step `step`. */
function uniform(key: [number, number], step: number, row: number): number {
  const [a, b] = native().philox4x32([step >>> 0, row >>> 0, 0, 0], key);
  return ((a >>> 5) * 67108864 + (b >>> 6)) / 9007199254740992;
}

/** The token chosen from one row of logits. */
function chooseToken(p: Plan, logits: Float32Array, ids: readonly number[], step: number, row: number): number {
  const scores = applyProcessors(p.processors, Float64Array.from(logits), ids);
  if (p.greedy) {
    let best = 0;
    for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
    if (scores[best] === -Infinity || Number.isNaN(scores[best])) {
      throw new Error('generate: no token is left to choose from (every score is -Infinity or NaN)');
    }
    return best;
  }
  const probs = softmax64(scores);
  if (probs.some(Number.isNaN)) throw new Error('generate: the scores hold NaN or +Infinity; no token can be sampled');
  const u = uniform(p.key, step, row);
  let cumulative = 0;
  let last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] === 0) continue;
    last = i;
    cumulative += probs[i];
    if (u < cumulative) return i;
  }
  return last; // u fell past the rounding of the cumulative sum
}

/** Runs the model on `ids` and returns each row's last-token logits, freeing every intermediate. */
function nextLogits(model: GenerativeModel, ids: number[][], options: ForwardOptions): Float32Array {
  return noGrad(() =>
    tidy(() => {
      const logits = model.lastTokenLogits(ids, options);
      const values = logits.toFloat32Array();
      logits.dispose();
      return values;
    }),
  );
}

/** The decoding loop: one step per new token; the cache lives as long as the iteration. */
function* decode(p: Plan): Generator<GenerationStep, GenerateOutput, undefined> {
  const { model, batch } = p;
  const { config } = model;
  const vocab = config.vocabSize;
  const sequences = p.rows.map((row) => [...row]);
  const masks = p.masks.map((mask) => [...mask]);
  const newTokens: number[][] = sequences.map(() => []);
  const finished = new Array<boolean>(batch).fill(false);
  const kvHeads = 'numKeyValueHeads' in config ? config.numKeyValueHeads : config.numHeads;
  const cache = p.useCache
    ? new StaticKeyValueCache({
        layers: config.numLayers,
        batch,
        kvHeads,
        headDim: config.headDim,
        capacity: sequences[0].length + p.maxNewTokens,
        device: model.parameters()[0]?.data.device,
      })
    : null;
  try {
    for (let step = 0; step < p.maxNewTokens; step++) {
      let logits: Float32Array;
      const attentionMask = p.padded ? masks : null;
      if (cache === null) {
        logits = nextLogits(model, sequences, { attentionMask, positions: p.padded ? positionsFromMask(masks) : null });
      } else {
        const first = step === 0;
        const ids = first ? sequences : sequences.map((row) => [row[row.length - 1]]);
        // Each row counts its own tokens from 0 (transformers' cumsum(mask) - 1), so padding shifts nothing.
        const positions = first ? positionsFromMask(masks) : masks.map((mask) => [mask.reduce((a, m) => a + m, 0) - 1]);
        try {
          logits = nextLogits(model, ids, { attentionMask, positions, cache });
        } catch (error) {
          cache.discardPending();
          throw error;
        }
        cache.advance();
      }
      const tokens = sequences.map((row, b) => {
        if (finished[b]) return p.pad;
        const token = chooseToken(p, logits.subarray(b * vocab, (b + 1) * vocab), row, step, b);
        newTokens[b].push(token);
        if (p.eos.has(token)) finished[b] = true;
        return token;
      });
      tokens.forEach((token, b) => {
        sequences[b].push(token);
        masks[b].push(1);
      });
      yield { index: step, tokens, finished: [...finished] };
      if (finished.every(Boolean)) break;
    }
  } finally {
    cache?.dispose();
  }
  return { sequences, newTokens, finished };
}

/**
 * Generates up to options.maxNewTokens tokens after each row of `ids`
 * ([batch][tokens] or a Tensor), calling options.onStep with each step.
 */
export function generate(model: GenerativeModel, ids: TokenIds, options: GenerateOptions): GenerateOutput {
  const p = plan(model, ids, options, 'generate');
  const steps = decode(p);
  for (;;) {
    const next = steps.next();
    if (next.done) return next.value;
    options.onStep?.(next.value);
  }
}

/**
 * The steps of generate() as an async iterator, one per new token, yielding
 * to the event loop between steps: `for await (const { tokens } of
 * generateStream(model, ids, options))`. Options are checked at the call;
 * leaving the loop early frees the cache.
 */
export function generateStream(
  model: GenerativeModel,
  ids: TokenIds,
  options: GenerateOptions,
): AsyncGenerator<GenerationStep, GenerateOutput, undefined> {
  const p = plan(model, ids, options, 'generateStream');
  if (options.onStep !== undefined && options.onStep !== null) {
    throw new Error('generateStream: onStep is for generate(); the stream yields every step itself');
  }
  const steps = decode(p);
  return (async function* () {
    try {
      for (;;) {
        const next = steps.next();
        if (next.done) return next.value;
        yield next.value;
        await setImmediate();
      }
    } finally {
      steps.return(undefined as never);
    }
  })();
}
