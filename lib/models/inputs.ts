/**
 * The inputs of a language model's forward pass and loss, checked before
 * anything is computed: token ids (inside the vocabulary), the attention mask
 * (0/1 over cached and new tokens), positions (inside the model's positions),
 * labels (vocabulary ids or -100), and the sequence length against
 * n_positions / max_position_embeddings. Errors name the entry at fault.
 */
import type { AttentionContext, KeyValueCache } from '../nn/attention';
import { describeValue, formatShape } from '../shape';
import { Tensor } from '../tensor/tensor';
import type { ModelConfig } from './config';

/** Integers per token: rows of equal length ([batch][tokens]), or a Tensor [batch, tokens] of integer values. */
export type TokenIds = readonly (readonly number[])[] | Tensor;

/** The label transformers' loss leaves out (padding, prompts). */
export const IGNORE_INDEX = -100;

export interface ForwardOptions {
  /**
   * 1 for a token, 0 for padding, [batch, cached + tokens] (default: all ones).
   * Padded keys are never attended to; left padding needs it.
   */
  attentionMask?: TokenIds | null;
  /**
   * Each token's position, [batch, tokens] (default: cached, cached + 1, ...,
   * as transformers' forward without position_ids). With left padding, pass
   * positionsFromMask(mask) so that each row starts at 0.
   */
  positions?: TokenIds | null;
  /** Past keys and values (generation): the new tokens follow the cached ones. */
  cache?: KeyValueCache | null;
}

/** A checked matrix of integers. */
export interface IntegerMatrix {
  readonly rows: number;
  readonly cols: number;
  /** Row-major values. */
  readonly values: Int32Array;
}

/** `value` as a matrix of integers; `what` names it in errors. */
export function readIntegerMatrix(value: unknown, what: string): IntegerMatrix {
  let rows: number;
  let cols: number;
  let flat: ArrayLike<unknown>;
  if (value instanceof Tensor) {
    if (value.disposed) throw new Error(`${what} ${formatShape(value.shape)} has been disposed`);
    if (value.shape.length !== 2)
      throw new Error(`${what} must be a Tensor [batch, tokens], got ${formatShape(value.shape)}`);
    [rows, cols] = value.shape;
    flat = value.toFloat32Array();
  } else if (Array.isArray(value) && value.length > 0 && value.every((row) => Array.isArray(row))) {
    const matrix = value as unknown[][];
    rows = matrix.length;
    cols = matrix[0].length;
    const ragged = matrix.findIndex((row) => row.length !== cols);
    if (ragged >= 0) {
      throw new Error(
        `${what}: row ${ragged} has ${matrix[ragged].length} entries but row 0 has ${cols}; pad the rows`,
      );
    }
    if (cols === 0) throw new Error(`${what}: the rows are empty`);
    flat = matrix.flat();
  } else {
    throw new Error(
      `${what} must be rows of integers ([batch][tokens], e.g. [[1, 2, 3]]) or a Tensor [batch, tokens], got ${describeValue(value)}`,
    );
  }
  const values = new Int32Array(rows * cols);
  for (let i = 0; i < values.length; i++) {
    const v = flat[i];
    if (typeof v !== 'number' || !Number.isInteger(v) || Math.abs(v) >= 2 ** 31) {
      throw new Error(`${what}: entry [${Math.floor(i / cols)}, ${i % cols}] is ${describeValue(v)}, not an integer`);
    }
    values[i] = v;
  }
  return { rows, cols, values };
}

/** The index [row, col] of the first entry of `m` that fails `ok`, or null. */
function firstBad(m: IntegerMatrix, ok: (v: number) => boolean): [number, number, number] | null {
  const i = m.values.findIndex((v) => !ok(v));
  return i < 0 ? null : [Math.floor(i / m.cols), i % m.cols, m.values[i]];
}

/** A checked batch of token ids with its attention context. */
export interface TokenBatch {
  readonly batch: number;
  readonly tokens: number;
  readonly ids: Int32Array;
  /** Mask over new tokens only (null: no padding), for labels derived from ids. */
  readonly tokenMask: Int32Array | null;
  readonly context: AttentionContext & { readonly positions: Int32Array };
}

/** Checks ids and options against `config` (see ForwardOptions); `what` names the caller in errors. */
export function readTokens(config: ModelConfig, ids: unknown, options: ForwardOptions, what: string): TokenBatch {
  if (options === null || typeof options !== 'object') throw new Error(`${what}: options must be an object`);
  const known = ['attentionMask', 'positions', 'cache'];
  const unknown = Object.keys(options).filter((key) => !known.includes(key));
  if (unknown.length > 0) {
    throw new Error(`${what}: unknown option ${unknown.map((k) => `'${k}'`).join(', ')}; options: ${known.join(', ')}`);
  }
  const m = readIntegerMatrix(ids, `${what}: ids`);
  const vocab = config.vocabSize;
  const badId = firstBad(m, (v) => v >= 0 && v < vocab);
  if (badId !== null) {
    throw new Error(
      `${what}: token id ${badId[2]} at [${badId[0]}, ${badId[1]}] is outside the vocabulary (ids 0..${vocab - 1})`,
    );
  }
  const cache = options.cache ?? null;
  const past = cache === null ? 0 : cache.length;
  if (!Number.isInteger(past) || past < 0) {
    throw new Error(`${what}: the cache's length must be an integer >= 0, got ${describeValue(past)}`);
  }
  const limit = config.maxPositions;
  if (past + m.cols > limit) {
    throw new Error(
      `${what}: ${past > 0 ? `${past} cached and ` : ''}${m.cols} tokens exceed the model's ${limit} positions ` +
        `(${config.modelType === 'gpt2' ? 'n_positions' : 'max_position_embeddings'})`,
    );
  }

  let keyMask: Int32Array | null = null;
  if (options.attentionMask !== undefined && options.attentionMask !== null) {
    const mask = readIntegerMatrix(options.attentionMask, `${what}: attentionMask`);
    if (mask.rows !== m.rows || mask.cols !== past + m.cols) {
      throw new Error(
        `${what}: attentionMask is [${mask.rows}, ${mask.cols}], expected [${m.rows}, ${past + m.cols}]` +
          (past > 0 ? ` (${past} cached and ${m.cols} new tokens)` : ''),
      );
    }
    const bad = firstBad(mask, (v) => v === 0 || v === 1);
    if (bad !== null) throw new Error(`${what}: attentionMask [${bad[0]}, ${bad[1]}] is ${bad[2]}, not 0 or 1`);
    if (mask.values.includes(0)) keyMask = mask.values;
  }

  let positions: Int32Array;
  if (options.positions !== undefined && options.positions !== null) {
    const given = readIntegerMatrix(options.positions, `${what}: positions`);
    if (given.rows !== m.rows || given.cols !== m.cols) {
      throw new Error(`${what}: positions is [${given.rows}, ${given.cols}], expected the ids' [${m.rows}, ${m.cols}]`);
    }
    const bad = firstBad(given, (v) => v >= 0 && v < limit);
    if (bad !== null) {
      throw new Error(
        `${what}: position ${bad[2]} at [${bad[0]}, ${bad[1]}] is outside the model's positions 0..${limit - 1}`,
      );
    }
    positions = given.values;
  } else {
    positions = new Int32Array(m.rows * m.cols);
    for (let i = 0; i < positions.length; i++) positions[i] = past + (i % m.cols);
  }

  let tokenMask: Int32Array | null = null;
  if (keyMask !== null) {
    tokenMask = new Int32Array(m.rows * m.cols);
    for (let b = 0; b < m.rows; b++) {
      tokenMask.set(keyMask.subarray(b * (past + m.cols) + past, (b + 1) * (past + m.cols)), b * m.cols);
    }
  }
  return { batch: m.rows, tokens: m.cols, ids: m.values, tokenMask, context: { positions, keyMask, cache } };
}

/**
 * Positions from an attention mask as transformers' generate() makes them:
 * each row counts its tokens from 0 (cumsum(mask) - 1), padding gets 1.
 * With left padding, this makes a padded row compute what it would alone.
 */
export function positionsFromMask(attentionMask: TokenIds): number[][] {
  const mask = readIntegerMatrix(attentionMask, 'positionsFromMask: attentionMask');
  const out: number[][] = [];
  for (let b = 0; b < mask.rows; b++) {
    let count = 0;
    const row: number[] = [];
    for (let t = 0; t < mask.cols; t++) {
      const v = mask.values[b * mask.cols + t];
      if (v !== 0 && v !== 1) throw new Error(`positionsFromMask: attentionMask [${b}, ${t}] is ${v}, not 0 or 1`);
      count += v;
      row.push(v === 1 ? count - 1 : 1);
    }
    out.push(row);
  }
  return out;
}

/**
 * The labels of the causal-LM loss, shifted as transformers shifts them: the
 * logits at token t are scored against labels[t + 1]; the last token of each
 * row predicts nothing. Labels are vocabulary ids or -100 (left out). Without
 * labels, the ids are the labels and padding (mask 0) is left out.
 */
export function shiftedLabels(config: ModelConfig, batch: TokenBatch, labels: unknown, what: string): Int32Array {
  const { batch: rows, tokens } = batch;
  let values: Int32Array;
  if (labels === undefined || labels === null) {
    values = batch.ids.map((id, i) => (batch.tokenMask !== null && batch.tokenMask[i] === 0 ? IGNORE_INDEX : id));
  } else {
    const m = readIntegerMatrix(labels, `${what}: labels`);
    if (m.rows !== rows || m.cols !== tokens) {
      throw new Error(`${what}: labels are [${m.rows}, ${m.cols}], expected the ids' [${rows}, ${tokens}]`);
    }
    const bad = firstBad(m, (v) => v === IGNORE_INDEX || (v >= 0 && v < config.vocabSize));
    if (bad !== null) {
      throw new Error(
        `${what}: label ${bad[2]} at [${bad[0]}, ${bad[1]}] is neither a vocabulary id (0..${config.vocabSize - 1}) nor ${IGNORE_INDEX}`,
      );
    }
    values = m.values;
  }
  const shifted = new Int32Array(rows * tokens).fill(IGNORE_INDEX);
  for (let b = 0; b < rows; b++) {
    shifted.set(values.subarray(b * tokens + 1, (b + 1) * tokens), b * tokens);
  }
  if (!shifted.some((v) => v !== IGNORE_INDEX)) {
    throw new Error(
      `${what}: no token has a label to predict (every label after the first token of a row is ${IGNORE_INDEX} or padding)`,
    );
  }
  return shifted;
}
