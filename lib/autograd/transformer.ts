/**
 * Differentiable transformer ops: embedding lookup, LayerNorm and RMSNorm,
 * softmax, scaled-dot-product attention (causal, padding masks, grouped-query
 * heads, KV-cache offsets), rotary position embeddings, permute, split and
 * concat, and cross-entropy with an ignore index. Every forward and backward
 * pass is native kernels with CPU and CUDA twins; this file checks arguments
 * and handles shapes and scalars only. As in ops.ts, a gradient is computed,
 * and its buffer allocated, only for an input that requires it: a frozen
 * embedding table or norm weight costs no scatter-add and no column sums.
 *
 * Ownership: each result Var owns its data. Tensors an op saves for its
 * backward pass (attention probabilities, norm statistics, a copy of integer
 * inputs) are freed by the graph after backward() or with the result when no
 * gradient is needed. Integer inputs given as Tensors stay the caller's.
 */
import type { NormName } from '../../binding';
import { copyAlongAxis, normalizeAxis } from '../kernels/slices';
import { native } from '../native/loader';
import { describeValue, formatShape } from '../shape';
import { Tensor, shapeSize, uninitialized, zeros } from '../tensor/tensor';
import { type IntegerInput, MAX_EXACT_INTEGER, integerTensor } from './integers';
import { type Input, asVar, crossEntropyLoss, lastDim, sameDevice } from './ops';
import { Var, needsGrad, passOn, record } from './var';

export type { IntegerInput } from './integers';

/** The ids' copy an op keeps for its backward pass: its own, so later changes to the caller's tensor cannot skew it. */
function keepForBackward(checked: { tensor: Tensor; owned: boolean }, keep: boolean): Tensor | null {
  if (!keep) {
    if (checked.owned) checked.tensor.dispose();
    return null;
  }
  return checked.owned ? checked.tensor : checked.tensor.clone();
}

/** Refuses option keys an op does not know: a misspelt `causal` must not give non-causal attention. */
function knownOptions(op: string, options: object, known: readonly string[]): void {
  if (options === null || typeof options !== 'object') {
    throw new Error(`${op}: options must be an object, got ${describeValue(options)}`);
  }
  const unknown = Object.keys(options).filter((key) => !known.includes(key));
  if (unknown.length > 0) throw new Error(`${op}: unknown option ${unknown.join(', ')}; options: ${known.join(', ')}`);
}

function checkFinite(op: string, name: string, value: number, minimum = -Infinity): void {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < minimum) {
    throw new Error(
      `${op}: ${name} must be a finite number${minimum > -Infinity ? ` >= ${minimum}` : ''}, got ${describeValue(value)}`,
    );
  }
}

/**
 * Rows of `weight` [vocab, dim] picked by token ids: the result has shape [...idsShape, dim]. ids
 * (idsShape.length entries in all, e.g. [batch, tokens]) are integers in [0, vocab). The weight's
 * gradient is a scatter-add of the output gradient (tokens summed in order, so it is deterministic on
 * both devices), computed only when the weight requires gradients.
 */
export function embedding(weight: Input, ids: IntegerInput, idsShape: readonly number[]): Var {
  const w = asVar(weight, 'embedding: weight');
  if (w.shape.length !== 2) throw new Error(`embedding: weight must be [vocab, dim], got ${formatShape(w.shape)}`);
  const [vocab, dim] = w.shape;
  const count = shapeSize(idsShape, 'embedding: idsShape');
  const checked = integerTensor('embedding', 'ids', ids, count, w.device, {
    limit: vocab,
    what: 'token id',
    unit: 'position',
    kind: 'a token index',
    countOf: `positions ${formatShape(idsShape)}`,
  });
  const out = uninitialized([...idsShape, dim], { device: w.device });
  try {
    native().embeddingForward(out.storage, w.data.storage, checked.tensor.storage, count, vocab, dim);
  } catch (error) {
    out.dispose();
    if (checked.owned) checked.tensor.dispose();
    throw error;
  }
  let saved = keepForBackward(checked, needsGrad(w));
  return record(
    out,
    [w],
    (g, sink) => {
      const dw = zeros(w.shape, { device: w.device });
      native().embeddingBackward(dw.storage, g.storage, saved!.storage, count, vocab, dim);
      sink(w, dw);
    },
    () => {
      saved?.dispose();
      saved = null;
    },
  );
}

export interface NormOptions {
  /** Added to the variance (LayerNorm, default 1e-5 as torch) or the mean square (RMSNorm, default 1e-6 as Llama). */
  eps?: number;
}

function norm(kind: NormName, op: string, x: Input, weight: Input | null, bias: Input | null, eps: number): Var {
  const xv = asVar(x, `${op}: x`);
  const [rows, cols] = lastDim(xv);
  const params: [Var | null, string][] = [
    [weight === null ? null : asVar(weight, `${op}: weight`), 'weight'],
    [bias === null ? null : asVar(bias, `${op}: bias`), 'bias'],
  ];
  for (const [p, name] of params) {
    if (p !== null && (p.shape.length !== 1 || p.shape[0] !== cols)) {
      throw new Error(
        `${op}: ${name} has shape ${formatShape(p.shape)}, expected [${cols}] for x ${formatShape(xv.shape)}`,
      );
    }
  }
  const [w, b] = params.map(([p]) => p);
  sameDevice(op, [[xv, 'x'], ...params]);
  checkFinite(op, 'eps', eps, 0);
  const device = xv.device;
  const y = uninitialized(xv.shape, { device });
  let stats: Tensor | null = needsGrad(xv, w, b) ? uninitialized([2, rows], { device }) : null;
  native().normForward(
    kind,
    y.storage,
    stats?.storage ?? null,
    xv.data.storage,
    w?.data.storage ?? null,
    b?.data.storage ?? null,
    rows,
    cols,
    eps,
  );
  return record(
    y,
    [xv, w, b],
    (g, sink) => {
      const dw = w?.requiresGrad ? uninitialized([cols], { device }) : null;
      const db = b?.requiresGrad ? uninitialized([cols], { device }) : null;
      // dx overwrites g, which is ours until this closure returns.
      const dx = xv.requiresGrad ? g : null;
      native().normBackward(
        kind,
        dx?.storage ?? null,
        dw?.storage ?? null,
        db?.storage ?? null,
        g.storage,
        xv.data.storage,
        w?.data.storage ?? null,
        stats!.storage,
        rows,
        cols,
      );
      if (dx !== null) sink(xv, passOn(dx));
      if (dw !== null) sink(w!, dw);
      if (db !== null) sink(b!, db);
    },
    () => {
      stats?.dispose();
      stats = null;
    },
  );
}

/**
 * torch.nn.functional.layer_norm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias with
 * the biased variance; weight and bias may be null (ones and zeros).
 */
export function layerNorm(x: Input, weight: Input | null, bias: Input | null, options: NormOptions = {}): Var {
  knownOptions('layerNorm', options, ['eps']);
  return norm('layer', 'layerNorm', x, weight, bias, options.eps ?? 1e-5);
}

/** Hugging Face's LlamaRMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * weight (weight null: ones). */
export function rmsNorm(x: Input, weight: Input | null, options: NormOptions = {}): Var {
  knownOptions('rmsNorm', options, ['eps']);
  return norm('rms', 'rmsNorm', x, weight, null, options.eps ?? 1e-6);
}

/** Softmax over the last dimension, in float32 with the row maximum subtracted first. */
export function softmax(x: Input): Var {
  const xv = asVar(x, 'softmax: x');
  const [rows, cols] = lastDim(xv);
  const y = uninitialized(xv.shape, { device: xv.device });
  native().softmaxRows(y.storage, xv.data.storage, rows, cols);
  return record(y, [xv], (g, sink) => {
    native().softmaxBackward(g.storage, y.storage, g.storage, rows, cols);
    sink(xv, passOn(g));
  });
}

export interface AttentionOptions {
  /** Query i attends only keys j <= queryOffset + i (default false). */
  causal?: boolean;
  /**
   * A keep-mask [batch, Tk] of 0 (padding: never attended to) and 1, as a Tensor or an array of batch * Tk
   * numbers. A query row left with no key to attend to gets zero weights and a zero output (as Hugging Face's
   * SDPA path gives left-padded rows), never NaN.
   */
  keyMask?: IntegerInput;
  /**
   * The position of q's first row among the keys, for decoding with a KV cache (default 0; causal only):
   * queryOffset + Tq <= Tk. Keys past a row's position get exactly zero weight, so a preallocated cache may
   * hold a longer, zero-filled tail (its entries must be finite: they are multiplied by those zeros).
   */
  queryOffset?: number;
  /** Multiplies q k^T before the softmax (default 1 / sqrt(headDim)). */
  scale?: number;
}

function rank4(op: string, name: string, v: Var): readonly number[] {
  if (v.shape.length !== 4) {
    throw new Error(`${op}: ${name} must be [batch, heads, tokens, headDim], got ${formatShape(v.shape)}`);
  }
  return v.shape;
}

/**
 * Multi-head scaled-dot-product attention softmax(scale q k^T + mask) v with grouped-query heads:
 * q [B, H, Tq, D], k and v [B, Hkv, Tk, D] with H a multiple of Hkv; query head h uses key/value head
 * h / (H / Hkv). Returns [B, H, Tq, D]. The softmax runs in float32 and masked positions get exactly zero
 * weight (see AttentionOptions). Computed as strided-batched GEMMs around a masked row softmax; the
 * probabilities [B, H, Tq, Tk] are kept for the backward pass, which gives q, k and v their gradients.
 */
export function attention(q: Input, k: Input, v: Input, options: AttentionOptions = {}): Var {
  const op = 'attention';
  const [qv, kv, vv] = [asVar(q, `${op}: q`), asVar(k, `${op}: k`), asVar(v, `${op}: v`)];
  const [batch, heads, queryLength, headDim] = rank4(op, 'q', qv);
  const [kBatch, kvHeads, keyLength, kDim] = rank4(op, 'k', kv);
  rank4(op, 'v', vv);
  if (kBatch !== batch || kDim !== headDim) {
    throw new Error(
      `${op}: k ${formatShape(kv.shape)} must have q's batch ${batch} and headDim ${headDim} (q is ${formatShape(qv.shape)})`,
    );
  }
  if (vv.shape.some((d, i) => d !== kv.shape[i])) {
    throw new Error(`${op}: v ${formatShape(vv.shape)} must have k's shape ${formatShape(kv.shape)}`);
  }
  if (heads % kvHeads !== 0) {
    throw new Error(`${op}: ${heads} query heads cannot share ${kvHeads} key/value heads (heads must be a multiple)`);
  }
  sameDevice(op, [
    [qv, 'q'],
    [kv, 'k'],
    [vv, 'v'],
  ]);
  knownOptions(op, options, ['causal', 'keyMask', 'queryOffset', 'scale']);
  const { causal = false, queryOffset = 0, keyMask } = options;
  const scale = options.scale ?? 1 / Math.sqrt(headDim);
  if (typeof causal !== 'boolean') throw new Error(`${op}: causal must be a boolean, got ${describeValue(causal)}`);
  if (!Number.isInteger(queryOffset) || queryOffset < 0) {
    throw new Error(`${op}: queryOffset must be an integer >= 0, got ${describeValue(queryOffset)}`);
  }
  if (!causal && queryOffset !== 0) {
    throw new Error(`${op}: queryOffset only applies to causal attention (pass causal: true)`);
  }
  if (causal && queryOffset + queryLength > keyLength) {
    throw new Error(
      `${op}: causal queries at positions ${queryOffset}..${queryOffset + queryLength - 1} need ${queryOffset + queryLength} keys, got ${keyLength}`,
    );
  }
  checkFinite(op, 'scale', scale);
  if (
    keyMask instanceof Tensor &&
    (keyMask.shape.length !== 2 || keyMask.shape[0] !== batch || keyMask.shape[1] !== keyLength)
  ) {
    throw new Error(`${op}: keyMask has shape ${formatShape(keyMask.shape)}, expected [${batch}, ${keyLength}]`);
  }
  const device = qv.device;
  const mask =
    keyMask === undefined
      ? null
      : integerTensor(op, 'keyMask', keyMask, batch * keyLength, device, {
          limit: 2,
          what: 'keyMask entry',
          unit: 'index',
          kind: 'a 0/1 value',
          countOf: `keys [${batch}, ${keyLength}]`,
        });
  const shape = [batch, heads, kvHeads, queryLength, keyLength, headDim] as const;
  let probs: Tensor | null = uninitialized([batch, heads, queryLength, keyLength], { device });
  const out = uninitialized([batch, heads, queryLength, headDim], { device });
  try {
    native().attentionForward(
      qv.data.storage,
      kv.data.storage,
      vv.data.storage,
      mask?.tensor.storage ?? null,
      probs.storage,
      out.storage,
      ...shape,
      queryOffset,
      causal,
      scale,
    );
  } catch (error) {
    probs.dispose();
    out.dispose();
    throw error;
  } finally {
    if (mask?.owned) mask.tensor.dispose();
  }
  return record(
    out,
    [qv, kv, vv],
    (g, sink) => {
      const grads = [qv, kv, vv].map((x) => (x.requiresGrad ? uninitialized(x.shape, { device }) : null));
      const [dq, dk, dv] = grads;
      const workspace = dq !== null || dk !== null ? uninitialized(probs!.shape, { device }) : null;
      try {
        native().attentionBackward(
          qv.data.storage,
          kv.data.storage,
          vv.data.storage,
          probs!.storage,
          g.storage,
          workspace?.storage ?? null,
          dq?.storage ?? null,
          dk?.storage ?? null,
          dv?.storage ?? null,
          ...shape,
          scale,
        );
      } finally {
        workspace?.dispose();
      }
      if (dq !== null) sink(qv, dq);
      if (dk !== null) sink(kv, dk);
      if (dv !== null) sink(vv, dv);
    },
    () => {
      probs?.dispose();
      probs = null;
    },
  );
}

export interface RopeOptions {
  /** The base of the frequencies (Hugging Face's rope_theta, e.g. 10000 or 500000). */
  theta: number;
  /** Rotate only the first rotaryDim features of each head (even, <= headDim; default headDim), as partial_rotary_factor. */
  rotaryDim?: number;
}

/**
 * Rotary position embedding in Hugging Face's rotate-half convention: x [B, H, T, D] with, for i < r / 2
 * (r = rotaryDim) and angle = position * theta^(-2i / r) (float32, as HF's tables), features (i, i + r/2)
 * rotated by that angle; features from r on pass through. positions are integers in [0, 2^24): B * T of
 * them (one row per batch entry, so left-padded batches and cache offsets work) or T shared by every row.
 * The backward pass is the inverse rotation.
 */
export function rope(x: Input, positions: IntegerInput, options: RopeOptions): Var {
  const op = 'rope';
  const xv = asVar(x, `${op}: x`);
  const [batch, heads, tokens, headDim] = rank4(op, 'x', xv);
  knownOptions(op, options, ['theta', 'rotaryDim']);
  const { theta, rotaryDim = headDim } = options;
  checkFinite(op, 'theta', theta);
  if (!(theta > 0)) throw new Error(`${op}: theta must be positive, got ${theta}`);
  if (!Number.isInteger(rotaryDim) || rotaryDim < 2 || rotaryDim % 2 !== 0 || rotaryDim > headDim) {
    throw new Error(`${op}: rotaryDim must be an even integer in [2, ${headDim}], got ${describeValue(rotaryDim)}`);
  }
  const count = positions instanceof Tensor ? positions.size : positions.length;
  const perBatch = count === batch * tokens;
  if (!perBatch && count !== tokens) {
    throw new Error(
      `${op}: ${count} positions for x ${formatShape(xv.shape)}; give ${batch * tokens} ([batch, tokens]) or ${tokens}`,
    );
  }
  const checked = integerTensor(op, 'positions', positions, count, xv.device, {
    limit: MAX_EXACT_INTEGER,
    what: 'position',
    unit: 'index',
    kind: 'a position',
    countOf: 'positions',
  });
  const args = [batch, heads, tokens, headDim, rotaryDim, theta, perBatch] as const;
  const y = uninitialized(xv.shape, { device: xv.device });
  try {
    native().rope(y.storage, xv.data.storage, checked.tensor.storage, ...args, false);
  } catch (error) {
    y.dispose();
    if (checked.owned) checked.tensor.dispose();
    throw error;
  }
  let saved = keepForBackward(checked, needsGrad(xv));
  return record(
    y,
    [xv],
    (g, sink) => {
      native().rope(g.storage, g.storage, saved!.storage, ...args, true);
      sink(xv, passOn(g));
    },
    () => {
      saved?.dispose();
      saved = null;
    },
  );
}

/** x with its axes reordered (torch.permute): axis a of the result is axis dims[a] of x; rank 1 to 8. */
export function permute(x: Input, dims: readonly number[]): Var {
  const xv = asVar(x, 'permute: x');
  const rank = xv.shape.length;
  if (!Array.isArray(dims) || dims.length !== rank || rank < 1 || rank > 8) {
    throw new Error(
      `permute: dims ${describeValue(dims)} must list the ${rank} axes of x ${formatShape(xv.shape)} (rank 1 to 8)`,
    );
  }
  const axes = dims.map((d) => normalizeAxis('permute', d, rank));
  if (new Set(axes).size !== rank) {
    throw new Error(`permute: dims [${dims.join(', ')}] must name each axis of x ${formatShape(xv.shape)} once`);
  }
  const inverse = new Array<number>(rank);
  axes.forEach((d, a) => (inverse[d] = a));
  const y = uninitialized(
    axes.map((d) => xv.shape[d]),
    { device: xv.device },
  );
  native().permute(y.storage, xv.data.storage, [...xv.shape], axes);
  return record(y, [xv], (g, sink) => {
    const dx = uninitialized(xv.shape, { device: xv.device });
    native().permute(dx.storage, g.storage, [...g.shape], inverse);
    sink(xv, dx);
  });
}

/**
 * x cut along `axis` into pieces of the given sizes (torch.split with a list), e.g. a fused QKV
 * [B, T, 3d] into three [B, T, d]. Each piece is a copy; a piece's gradient flows back into its slot.
 */
export function split(x: Input, sizes: readonly number[], axis: number): Var[] {
  const xv = asVar(x, 'split: x');
  const a = normalizeAxis('split', axis, xv.shape.length);
  if (!Array.isArray(sizes) || sizes.length === 0 || sizes.some((s) => !Number.isInteger(s) || s < 1)) {
    throw new Error(`split: sizes must be a non-empty array of positive integers, got ${describeValue(sizes)}`);
  }
  const total = sizes.reduce((p, s) => p + s, 0);
  if (total !== xv.shape[a]) {
    throw new Error(
      `split: sizes [${sizes.join(', ')}] add up to ${total}, but axis ${a} of x ${formatShape(xv.shape)} has ${xv.shape[a]}`,
    );
  }
  let start = 0;
  return sizes.map((size) => {
    const from = start;
    start += size;
    const shape = [...xv.shape];
    shape[a] = size;
    const piece = uninitialized(shape, { device: xv.device });
    copyAlongAxis(piece, 0, xv.data, from, a, size);
    return record(piece, [xv], (g, sink) => {
      const dx = zeros(xv.shape, { device: xv.device });
      copyAlongAxis(dx, from, g, 0, a, size);
      sink(xv, dx);
    });
  });
}

/** The inputs joined along `axis` (torch.cat); every other dimension must match. */
export function concat(xs: readonly Input[], axis: number): Var {
  if (!Array.isArray(xs) || xs.length === 0)
    throw new Error(`concat: expected a non-empty array of inputs, got ${describeValue(xs)}`);
  const vars = xs.map((x, i) => asVar(x, `concat: xs[${i}]`));
  const first = vars[0];
  const a = normalizeAxis('concat', axis, first.shape.length);
  vars.forEach((v, i) => {
    const sameElsewhere =
      v.shape.length === first.shape.length && v.shape.every((d, j) => j === a || d === first.shape[j]);
    if (!sameElsewhere) {
      throw new Error(
        `concat: xs[${i}] ${formatShape(v.shape)} must match xs[0] ${formatShape(first.shape)} except along axis ${a}`,
      );
    }
  });
  sameDevice(
    'concat',
    vars.map((v, i): [Var, string] => [v, `xs[${i}]`]),
  );
  const shape = [...first.shape];
  shape[a] = vars.reduce((p, v) => p + v.shape[a], 0);
  const out = uninitialized(shape, { device: first.device });
  const starts: number[] = [];
  let start = 0;
  for (const v of vars) {
    starts.push(start);
    copyAlongAxis(out, start, v.data, 0, a, v.shape[a]);
    start += v.shape[a];
  }
  return record(out, vars, (g, sink) => {
    vars.forEach((v, i) => {
      if (!v.requiresGrad) return;
      const d = uninitialized(v.shape, { device: v.device });
      copyAlongAxis(d, 0, g, starts[i], a, v.shape[a]);
      sink(v, d);
    });
  });
}

export interface CrossEntropyOptions {
  /** Rows whose label equals it are left out of the mean (default -100, as torch); it may be a class index. */
  ignoreIndex?: number;
}

/**
 * Mean cross-entropy of softmax(logits [N, V]) against labels [N] (integers in [0, V), or ignoreIndex) over
 * the rows not ignored, as torch.nn.functional.cross_entropy. When every row is ignored the loss is NaN, as
 * torch's mean over nothing, and the gradient is zero. Only logits get a gradient.
 */
export function crossEntropy(logits: Input, labels: IntegerInput, options: CrossEntropyOptions = {}): Var {
  knownOptions('crossEntropy', options, ['ignoreIndex']);
  return crossEntropyLoss('crossEntropy', logits, labels, options.ignoreIndex ?? -100);
}
