/**
 * Logits processors: small steps that rewrite one row of next-token scores
 * before a token is chosen, composable in a list, as transformers' logits
 * processors and warpers (TemperatureLogitsWarper, TopKLogitsWarper,
 * TopPLogitsWarper). Scores are float64, one per vocabulary entry; a removed
 * token gets -Infinity. Each processor checks its own setting when built.
 *
 * Ownership: process() rewrites the caller's array in place.
 */
import { describeValue } from '../shape';

/** One step of turning logits into the scores a token is chosen from. */
export interface LogitsProcessor {
  /**
   * Rewrites `scores` (one row, one entry per vocabulary id) in place; a token
   * set to -Infinity can no longer be chosen. `ids` is the row's sequence so far
   * (prompt and generated tokens), for processors that depend on it.
   */
  process(scores: Float64Array, ids: readonly number[]): void;
}

/** Divides every score by `temperature` (> 0): below 1 sharpens the distribution, above 1 flattens it. */
export class TemperatureWarper implements LogitsProcessor {
  readonly temperature: number;

  constructor(temperature: number) {
    if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature <= 0) {
      throw new Error(`TemperatureWarper: temperature must be a finite number > 0, got ${describeValue(temperature)}`);
    }
    this.temperature = temperature;
  }

  process(scores: Float64Array): void {
    for (let i = 0; i < scores.length; i++) scores[i] /= this.temperature;
  }
}

/**
 * Keeps the `k` highest scores and every score tied with the k-th (as
 * transformers, which removes only scores below the k-th largest); k at least
 * the vocabulary keeps everything.
 */
export class TopKWarper implements LogitsProcessor {
  readonly k: number;

  constructor(k: number) {
    if (!Number.isSafeInteger(k) || k < 1)
      throw new Error(`TopKWarper: k must be an integer >= 1, got ${describeValue(k)}`);
    this.k = k;
  }

  process(scores: Float64Array): void {
    if (this.k >= scores.length) return;
    const threshold = Float64Array.from(scores).sort((a, b) => b - a)[this.k - 1];
    for (let i = 0; i < scores.length; i++) if (scores[i] < threshold) scores[i] = -Infinity;
  }
}

/** Probabilities of `scores` (softmax in float64; -Infinity gives 0). */
export function softmax64(scores: Float64Array): Float64Array {
  let max = -Infinity;
  for (const s of scores) if (s > max) max = s;
  const out = new Float64Array(scores.length);
  if (max === -Infinity) throw new Error('every token was removed: no score is left to choose from');
  let total = 0;
  for (let i = 0; i < scores.length; i++) total += out[i] = Math.exp(scores[i] - max);
  for (let i = 0; i < out.length; i++) out[i] /= total;
  return out;
}

/**
 * Nucleus sampling: keeps the most probable tokens whose probabilities add up
 * to at least `p` (0 < p <= 1), and always the most probable one. Tokens are
 * ranked by probability, ties by lower id first; a token is kept when the
 * tokens ranked before it hold less than `p` (transformers' rule: it removes
 * the tokens whose ascending cumulative probability is at most 1 - p).
 */
export class TopPWarper implements LogitsProcessor {
  readonly p: number;

  constructor(p: number) {
    if (typeof p !== 'number' || !(p > 0 && p <= 1)) {
      throw new Error(`TopPWarper: p must be a number in (0, 1], got ${describeValue(p)}`);
    }
    this.p = p;
  }

  process(scores: Float64Array): void {
    if (this.p === 1) return;
    const probs = softmax64(scores);
    const order = Array.from(probs.keys()).sort((a, b) => probs[b] - probs[a] || a - b);
    let before = 0;
    for (const id of order) {
      if (before >= this.p) scores[id] = -Infinity;
      before += probs[id];
    }
  }
}

/** Applies `processors` in order to one row of scores. */
export function applyProcessors(
  processors: readonly LogitsProcessor[],
  scores: Float64Array,
  ids: readonly number[],
): Float64Array {
  for (const processor of processors) processor.process(scores, ids);
  return scores;
}
