/**
 * The transformer ops (lib/autograd/transformer.ts, geluTanh and silu in ops.ts, narrow and
 * writeSlice in lib/kernels): each forward pass against a float64 loop written here, each
 * gradient against central finite differences of that loop in float64; masks with left
 * padding and fully masked rows, KV-cache offsets, grouped-query heads; refused input; and
 * the frozen-base rule (no gradient kernel and no buffer for an input that needs none).
 */
import * as tera from '../lib';
import { autograd as ag } from '../lib';
import { native } from '../lib/native/loader';
import { erf, product, randomArray, rng } from './helpers/reference';
import { expectAllClose, expectDiffer, isClose } from './helpers/tolerance';

type Var = tera.autograd.Var;
type Ref = (inputs: Float64Array[]) => Float64Array;

interface InputSpec {
  shape: number[];
  requiresGrad?: boolean;
  /** Values uniform in [-scale, scale) (default 1). */
  scale?: number;
}

const next = rng(32);

function makeInput(spec: InputSpec): { v: Var; values: Float64Array } {
  const data = randomArray(product(spec.shape), next).map((x) => x * (spec.scale ?? 1));
  const v = new ag.Var(tera.tensor(data, spec.shape), { requiresGrad: spec.requiresGrad ?? true });
  return { v, values: Float64Array.from(data) };
}

/**
 * Runs `op` on random inputs and checks its output against the float64 `ref`; then back-propagates
 * L = sum(out * W) for random W and compares each input's gradient with central differences of L
 * through `ref`. Inputs that do not require gradients must end with grad null.
 */
function checkOp(specs: InputSpec[], op: (vars: Var[]) => Var, ref: Ref): void {
  const inputs = specs.map(makeInput);
  const out = op(inputs.map((i) => i.v));
  const expected = ref(inputs.map((i) => i.values));
  const got = out.toFloat32Array();
  expectAllClose(got, expected, { rtol: 1e-5, atol: 1e-5, what: 'forward' });

  const weights = randomArray(got.length, next);
  out.backward(tera.tensor(weights, out.shape));
  const loss = (values: Float64Array[]) => ref(values).reduce((s, y, i) => s + y * weights[i], 0);
  const h = 1e-6;
  inputs.forEach((input, k) => {
    if (!input.v.requiresGrad) {
      expect(input.v.grad).toBeNull();
      return;
    }
    const grad = input.v.grad!.toFloat32Array();
    const probe = inputs.map((p) => Float64Array.from(p.values));
    for (let i = 0; i < input.values.length; i++) {
      probe[k][i] = input.values[i] + h;
      const up = loss(probe);
      probe[k][i] = input.values[i] - h;
      const down = loss(probe);
      probe[k][i] = input.values[i];
      const fd = (up - down) / (2 * h);
      if (!isClose(grad[i], fd, 2e-4, 2e-4)) {
        throw new Error(`input ${k} element ${i}: autograd ${grad[i]} vs finite difference ${fd}`);
      }
    }
  });
}

/** Row-wise map over the last dimension. */
function rowwise(values: Float64Array, cols: number, f: (row: Float64Array) => ArrayLike<number>): Float64Array {
  const out = new Float64Array(values.length);
  for (let r = 0; r < values.length / cols; r++) out.set(f(values.subarray(r * cols, (r + 1) * cols)), r * cols);
  return out;
}

function softmaxRef(row: ArrayLike<number>, keep: (j: number) => boolean = () => true): Float64Array {
  const out = new Float64Array(row.length);
  let peak = -Infinity;
  for (let j = 0; j < row.length; j++) if (keep(j)) peak = Math.max(peak, row[j]);
  if (peak === -Infinity) return out; // nothing kept: zeros
  let total = 0;
  for (let j = 0; j < row.length; j++) if (keep(j)) total += Math.exp(row[j] - peak);
  for (let j = 0; j < row.length; j++) out[j] = keep(j) ? Math.exp(row[j] - peak) / total : 0;
  return out;
}

describe('activations: forward vs float64, gradients vs finite differences', () => {
  it("geluTanh (GPT-2's gelu_new)", () => {
    checkOp(
      [{ shape: [3, 7], scale: 4 }],
      ([x]) => ag.geluTanh(x),
      ([x]) => x.map((v) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)))),
    );
  });

  it('silu', () => {
    checkOp(
      [{ shape: [3, 7], scale: 6 }],
      ([x]) => ag.silu(x),
      ([x]) => x.map((v) => v / (1 + Math.exp(-v))),
    );
  });

  it('geluTanh stays close to the exact gelu, as it should', () => {
    const x = tera.tensor(Float32Array.from([-3, -1, -0.2, 0, 0.5, 2, 4]));
    const exact = Array.from(x.toFloat32Array()).map((v) => 0.5 * v * (1 + erf(v / Math.SQRT2)));
    expectAllClose(ag.geluTanh(x).toFloat32Array(), exact, { atol: 1e-3, rtol: 0 });
  });
});

describe('embedding', () => {
  it('looks rows up and scatter-adds repeated ids into the weight gradient', () => {
    const [vocab, dim] = [6, 5];
    const ids = [3, 0, 3, 5, 3, 1];
    checkOp(
      [{ shape: [vocab, dim] }],
      ([w]) => ag.embedding(w, ids, [2, 3]),
      ([w]) => {
        const out = new Float64Array(ids.length * dim);
        ids.forEach((id, i) => out.set(w.subarray(id * dim, (id + 1) * dim), i * dim));
        return out;
      },
    );
  });

  it('takes ids as an Int32Array or a Tensor, and gives [...idsShape, dim]', () => {
    const w = tera.tensor(
      Float32Array.from({ length: 12 }, (_, i) => i),
      [4, 3],
    );
    const fromArray = ag.embedding(w, Int32Array.of(2, 1), [1, 2]);
    const fromTensor = ag.embedding(w, tera.tensor(Float32Array.of(2, 1), [1, 2]), [1, 2]);
    expect(fromArray.shape).toEqual([1, 2, 3]);
    expect(Array.from(fromArray.toFloat32Array())).toEqual([6, 7, 8, 3, 4, 5]);
    expect(Array.from(fromTensor.toFloat32Array())).toEqual([6, 7, 8, 3, 4, 5]);
  });
});

describe('layerNorm and rmsNorm', () => {
  const eps = 1e-5;
  const layerRef =
    (cols: number, affine: boolean): Ref =>
    ([x, w, b]) =>
      rowwise(x, cols, (row) => {
        const mean = row.reduce((s, v) => s + v, 0) / cols;
        const variance = row.reduce((s, v) => s + (v - mean) ** 2, 0) / cols;
        return row.map((v, j) => ((v - mean) / Math.sqrt(variance + eps)) * (affine ? w[j] : 1) + (affine ? b[j] : 0));
      });

  it('layerNorm with weight and bias over a 3-D input', () => {
    checkOp(
      [{ shape: [2, 3, 7], scale: 3 }, { shape: [7] }, { shape: [7] }],
      ([x, w, b]) => ag.layerNorm(x, w, b, { eps }),
      layerRef(7, true),
    );
  });

  it('layerNorm without weight and bias, one column pair and odd widths', () => {
    checkOp([{ shape: [4, 2] }], ([x]) => ag.layerNorm(x, null, null, { eps }), layerRef(2, false));
    checkOp([{ shape: [1, 5] }], ([x]) => ag.layerNorm(x, null, null, { eps }), layerRef(5, false));
  });

  it('rmsNorm as LlamaRMSNorm, with and without weight', () => {
    const rmsRef =
      (cols: number, weighted: boolean, epsilon: number): Ref =>
      ([x, w]) =>
        rowwise(x, cols, (row) => {
          const rstd = 1 / Math.sqrt(row.reduce((s, v) => s + v * v, 0) / cols + epsilon);
          return row.map((v, j) => v * rstd * (weighted ? w[j] : 1));
        });
    checkOp([{ shape: [3, 9] }, { shape: [9] }], ([x, w]) => ag.rmsNorm(x, w), rmsRef(9, true, 1e-6));
    checkOp([{ shape: [2, 1, 4] }], ([x]) => ag.rmsNorm(x, null, { eps: 0.1 }), rmsRef(4, false, 0.1));
  });
});

describe('softmax', () => {
  it('over the last dimension, large values included', () => {
    checkOp(
      [{ shape: [2, 3, 6], scale: 30 }],
      ([x]) => ag.softmax(x),
      ([x]) => rowwise(x, 6, (row) => softmaxRef(row)),
    );
    checkOp(
      [{ shape: [1] }],
      ([x]) => ag.softmax(x),
      () => Float64Array.of(1),
    );
  });
});

interface AttentionCase {
  batch: number;
  heads: number;
  kvHeads: number;
  queryLength: number;
  keyLength: number;
  headDim: number;
  causal?: boolean;
  queryOffset?: number;
  keyMask?: number[];
  scale?: number;
}

/** Attention in float64 straight from the definition, one (batch, head, query) row at a time. */
function attentionRef(c: AttentionCase): Ref {
  const { batch, heads, kvHeads, queryLength: tq, keyLength: tk, headDim: d } = c;
  const scale = c.scale ?? 1 / Math.sqrt(d);
  const offset = c.queryOffset ?? 0;
  return ([q, k, v]) => {
    const out = new Float64Array(batch * heads * tq * d);
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        const kvh = Math.floor(h / (heads / kvHeads));
        const kBase = (b * kvHeads + kvh) * tk * d;
        for (let i = 0; i < tq; i++) {
          const qBase = ((b * heads + h) * tq + i) * d;
          const scores = new Float64Array(tk);
          for (let j = 0; j < tk; j++) {
            let dot = 0;
            for (let e = 0; e < d; e++) dot += q[qBase + e] * k[kBase + j * d + e];
            scores[j] = scale * dot;
          }
          const keep = (j: number) => (!c.causal || j <= offset + i) && (c.keyMask?.[b * tk + j] ?? 1) === 1;
          const p = softmaxRef(scores, keep);
          for (let e = 0; e < d; e++) {
            let acc = 0;
            for (let j = 0; j < tk; j++) acc += p[j] * v[kBase + j * d + e];
            out[qBase + e] = acc;
          }
        }
      }
    }
    return out;
  };
}

function runAttention(c: AttentionCase, [q, k, v]: Var[]): Var {
  return ag.attention(q, k, v, { causal: c.causal, queryOffset: c.queryOffset, keyMask: c.keyMask, scale: c.scale });
}

function attentionSpecs(c: AttentionCase, requiresGrad: [boolean, boolean, boolean] = [true, true, true]): InputSpec[] {
  return [
    { shape: [c.batch, c.heads, c.queryLength, c.headDim], scale: 2, requiresGrad: requiresGrad[0] },
    { shape: [c.batch, c.kvHeads, c.keyLength, c.headDim], scale: 2, requiresGrad: requiresGrad[1] },
    { shape: [c.batch, c.kvHeads, c.keyLength, c.headDim], requiresGrad: requiresGrad[2] },
  ];
}

describe('attention: forward vs float64, q/k/v gradients vs finite differences', () => {
  const cases: [string, AttentionCase][] = [
    ['one head, T = 1', { batch: 1, heads: 1, kvHeads: 1, queryLength: 1, keyLength: 1, headDim: 4 }],
    [
      'causal, B = 2, GQA ratio 1',
      { batch: 2, heads: 2, kvHeads: 2, queryLength: 4, keyLength: 4, headDim: 3, causal: true },
    ],
    [
      'causal, GQA ratio 2, odd headDim',
      { batch: 2, heads: 4, kvHeads: 2, queryLength: 3, keyLength: 3, headDim: 5, causal: true },
    ],
    [
      'causal, GQA ratio 4 (multi-query), scale given',
      { batch: 1, heads: 4, kvHeads: 1, queryLength: 3, keyLength: 3, headDim: 2, causal: true, scale: 0.9 },
    ],
    ['not causal, Tq != Tk', { batch: 2, heads: 2, kvHeads: 1, queryLength: 2, keyLength: 5, headDim: 3 }],
    [
      'KV-cache decoding: queryOffset > 0, one new token per row',
      { batch: 2, heads: 2, kvHeads: 1, queryLength: 1, keyLength: 5, headDim: 3, causal: true, queryOffset: 4 },
    ],
    [
      'queryOffset with a longer cache tail that causality hides',
      { batch: 1, heads: 2, kvHeads: 2, queryLength: 2, keyLength: 6, headDim: 3, causal: true, queryOffset: 2 },
    ],
    [
      'left padding, causal: rows that see only padding are exactly zero',
      {
        batch: 2,
        heads: 2,
        kvHeads: 1,
        queryLength: 4,
        keyLength: 4,
        headDim: 3,
        causal: true,
        keyMask: [0, 0, 1, 1, 1, 1, 1, 1],
      },
    ],
    [
      'padding mask without causality, GQA ratio 2',
      { batch: 2, heads: 2, kvHeads: 1, queryLength: 3, keyLength: 4, headDim: 2, keyMask: [1, 0, 1, 1, 0, 0, 0, 1] },
    ],
  ];
  it.each(cases)('%s', (_, c) => {
    checkOp(attentionSpecs(c), (vars) => runAttention(c, vars), attentionRef(c));
  });

  it('gives zeros, not NaN, for a fully masked row, and no gradient flows through it', () => {
    const c: AttentionCase = {
      batch: 1,
      heads: 1,
      kvHeads: 1,
      queryLength: 3,
      keyLength: 3,
      headDim: 2,
      causal: true,
      keyMask: [0, 1, 1],
    };
    const [q, k, v] = attentionSpecs(c).map(makeInput);
    const out = runAttention(c, [q.v, k.v, v.v]);
    expect(Array.from(out.toFloat32Array().subarray(0, 2))).toEqual([0, 0]); // query 0 sees only key 0, padding
    expect(out.toFloat32Array().every(Number.isFinite)).toBe(true);
    ag.sum(out).backward();
    expect(Array.from(q.v.grad!.toFloat32Array().subarray(0, 2))).toEqual([0, 0]);
    expect(Array.from(v.v.grad!.toFloat32Array().subarray(0, 2))).toEqual([0, 0]); // padded key 0 gets nothing
    expect(k.v.grad!.toFloat32Array().every(Number.isFinite)).toBe(true);
  });

  it('only the inputs that require gradients get them', () => {
    const c: AttentionCase = { batch: 1, heads: 2, kvHeads: 1, queryLength: 2, keyLength: 2, headDim: 3, causal: true };
    checkOp(attentionSpecs(c, [true, false, false]), (vars) => runAttention(c, vars), attentionRef(c));
    checkOp(attentionSpecs(c, [false, false, true]), (vars) => runAttention(c, vars), attentionRef(c));
  });

  it('decodes with a KV cache (writeSlice + queryOffset) exactly as attention over the whole sequence', () => {
    const [batch, heads, kvHeads, total, headDim, capacity] = [2, 4, 2, 5, 3, 8];
    const q = tera.tensor(randomArray(batch * heads * total * headDim, next), [batch, heads, total, headDim]);
    const k = tera.tensor(randomArray(batch * kvHeads * total * headDim, next), [batch, kvHeads, total, headDim]);
    const v = tera.tensor(randomArray(batch * kvHeads * total * headDim, next), [batch, kvHeads, total, headDim]);
    const keyMask = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1];
    const full = ag.attention(q, k, v, { causal: true, keyMask }).toFloat32Array();
    // Prefill 3 tokens, then decode 2 one at a time, into zero-filled caches of 8 positions.
    const kCache = tera.zeros([batch, kvHeads, capacity, headDim]);
    const vCache = tera.zeros([batch, kvHeads, capacity, headDim]);
    const cacheMask = [...keyMask.slice(0, 5), 1, 1, 1, ...keyMask.slice(5), 1, 1, 1];
    const rows: Float32Array[] = [];
    for (const [start, length] of [
      [0, 3],
      [3, 1],
      [4, 1],
    ]) {
      tera.kernels.writeSlice(kCache, tera.kernels.narrow(k, 2, start, length), 2, start);
      tera.kernels.writeSlice(vCache, tera.kernels.narrow(v, 2, start, length), 2, start);
      const step = ag.attention(tera.kernels.narrow(q, 2, start, length), kCache, vCache, {
        causal: true,
        queryOffset: start,
        keyMask: cacheMask,
      });
      rows.push(step.toFloat32Array());
    }
    // Reassemble [batch, heads, total, headDim] from the three steps and compare.
    const assembled = new Float32Array(full.length);
    let at = 0;
    [3, 1, 1].forEach((length, s) => {
      for (let bh = 0; bh < batch * heads; bh++) {
        assembled.set(
          rows[s].subarray(bh * length * headDim, (bh + 1) * length * headDim),
          (bh * total + at) * headDim,
        );
      }
      at += length;
    });
    expectAllClose(assembled, full, { rtol: 1e-6, atol: 1e-6, what: 'cached decoding' });
  });
});

/**
 * HF's float32 rotary tables: inv_freq and the angle rounded to float32 (`f`) as torch computes them
 * (pass the identity for exact float64 angles).
 */
function ropeRef(
  shape: number[],
  positions: number[],
  theta: number,
  rotaryDim: number,
  f: (v: number) => number = Math.fround,
): Ref {
  const [batch, heads, tokens, headDim] = shape;
  const half = rotaryDim / 2;
  const invFreq = Array.from({ length: half }, (_, i) => f(1 / f(f(theta) ** f((2 * i) / rotaryDim))));
  return ([x]) => {
    const out = Float64Array.from(x);
    for (let b = 0; b < batch; b++) {
      for (let h = 0; h < heads; h++) {
        for (let t = 0; t < tokens; t++) {
          const position = positions.length === tokens ? positions[t] : positions[b * tokens + t];
          const base = ((b * heads + h) * tokens + t) * headDim;
          for (let i = 0; i < half; i++) {
            const angle = f(position * invFreq[i]);
            const [c, s] = [Math.cos(angle), Math.sin(angle)];
            out[base + i] = x[base + i] * c - x[base + i + half] * s;
            out[base + i + half] = x[base + i + half] * c + x[base + i] * s;
          }
        }
      }
    }
    return out;
  };
}

describe('rope (rotate-half, as Hugging Face)', () => {
  it('per-batch positions (left padding), full rotary width', () => {
    const shape = [2, 2, 3, 4];
    const positions = [1, 1, 0, 0, 1, 2];
    checkOp([{ shape }], ([x]) => ag.rope(x, positions, { theta: 10000 }), ropeRef(shape, positions, 10000, 4));
  });

  it('positions shared by the batch, partial rotary width with an odd headDim, large theta', () => {
    const shape = [2, 1, 3, 7];
    const positions = [5, 6, 7];
    checkOp(
      [{ shape }],
      ([x]) => ag.rope(x, Int32Array.from(positions), { theta: 500000, rotaryDim: 4 }),
      ropeRef(shape, positions, 500000, 4),
    );
  });

  it('matches float32 tables at large positions, where a float64 angle would differ', () => {
    const shape = [1, 1, 2, 64];
    const positions = [4000, 8191];
    const x = makeInput({ shape, requiresGrad: false });
    const got = ag.rope(x.v, positions, { theta: 10000 }).toFloat32Array();
    expectAllClose(got, ropeRef(shape, positions, 10000, 64)([x.values]), { rtol: 1e-5, atol: 2e-6 });
    // The same rotation with exact float64 angles is measurably different: the tables' rounding matters here.
    const exactAngles = ropeRef(shape, positions, 10000, 64, (v) => v)([x.values]);
    expectDiffer(got, exactAngles, 1e-5);
  });
});

describe('permute, split and concat', () => {
  it('permute [B, T, H, D] -> [B, H, T, D] and a general rank-4 permutation', () => {
    const shape = [2, 3, 2, 4];
    const permuteRef =
      (dims: number[]): Ref =>
      ([x]) => {
        const outShape = dims.map((d) => shape[d]);
        const strides = shape.map((_, a) => product(shape.slice(a + 1)));
        const out = new Float64Array(x.length);
        for (let i = 0; i < out.length; i++) {
          let rest = i;
          let offset = 0;
          for (let a = outShape.length - 1; a >= 0; a--) {
            offset += (rest % outShape[a]) * strides[dims[a]];
            rest = Math.floor(rest / outShape[a]);
          }
          out[i] = x[offset];
        }
        return out;
      };
    checkOp([{ shape }], ([x]) => ag.permute(x, [0, 2, 1, 3]), permuteRef([0, 2, 1, 3]));
    checkOp([{ shape }], ([x]) => ag.permute(x, [3, 1, -4, 2]), permuteRef([3, 1, 0, 2]));
  });

  it('split a fused QKV [B, T, 3d] and concat along another axis', () => {
    const [b, t, d] = [2, 3, 4];
    // out = concat([k, q, v], axis 1): [B, 3T, d]; gradients reach x through every piece.
    checkOp(
      [{ shape: [b, t, 3 * d] }],
      ([x]) => {
        const [q, k, v] = ag.split(x, [d, d, d], -1);
        return ag.concat([k, q, v], 1);
      },
      ([x]) => {
        const out = new Float64Array(x.length);
        let at = 0;
        for (let batch = 0; batch < b; batch++) {
          for (const piece of [1, 0, 2]) {
            for (let token = 0; token < t; token++) {
              for (let e = 0; e < d; e++) out[at++] = x[(batch * t + token) * 3 * d + piece * d + e];
            }
          }
        }
        return out;
      },
    );
  });

  it('a split piece that is never used passes a zero gradient to its slot', () => {
    const x = new ag.Var(tera.tensor(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3]), { requiresGrad: true });
    const [, right] = ag.split(x, [1, 2], 1);
    ag.sum(right).backward();
    expect(Array.from(x.grad!.toFloat32Array())).toEqual([0, 1, 1, 0, 1, 1]);
  });
});

describe('crossEntropy', () => {
  const ceRef =
    (labels: number[], classes: number, ignoreIndex: number): Ref =>
    ([x]) => {
      let total = 0;
      let counted = 0;
      labels.forEach((label, r) => {
        if (label === ignoreIndex) return;
        const row = Array.from(x.subarray(r * classes, (r + 1) * classes));
        const peak = Math.max(...row);
        total += peak + Math.log(row.reduce((s, v) => s + Math.exp(v - peak), 0)) - row[label];
        counted++;
      });
      return Float64Array.of(total / counted);
    };

  it('is the mean over the rows not ignored (default ignoreIndex -100)', () => {
    const labels = [2, -100, 0, 4, -100];
    checkOp([{ shape: [5, 5], scale: 3 }], ([x]) => ag.crossEntropy(x, labels), ceRef(labels, 5, -100));
  });

  it('takes a class index as ignoreIndex (a pad token id) and labels as a Tensor', () => {
    const labels = [1, 0, 3, 0];
    checkOp(
      [{ shape: [4, 4] }],
      ([x]) => ag.crossEntropy(x, tera.tensor(Float32Array.from(labels)), { ignoreIndex: 0 }),
      ceRef(labels, 4, 0),
    );
  });

  it('gives NaN when every row is ignored (as torch), with a zero gradient', () => {
    const logits = new ag.Var(tera.tensor(randomArray(6, next), [2, 3]), { requiresGrad: true });
    const loss = ag.crossEntropy(logits, [-100, -100]);
    expect(Number.isNaN(loss.item())).toBe(true);
    loss.backward();
    expect(Array.from(logits.grad!.toFloat32Array())).toEqual([0, 0, 0, 0, 0, 0]);
  });
});

describe('narrow and writeSlice', () => {
  it('narrow takes the last position of logits [B, T, V]', () => {
    const logits = tera.tensor(
      Float32Array.from({ length: 24 }, (_, i) => i),
      [2, 3, 4],
    );
    const last = tera.kernels.narrow(logits, 1, 2, 1);
    expect(last.shape).toEqual([2, 1, 4]);
    expect(Array.from(last.toFloat32Array())).toEqual([8, 9, 10, 11, 20, 21, 22, 23]);
  });

  it('writeSlice writes a block at a time offset and leaves the rest', () => {
    const cache = tera.zeros([1, 2, 4, 2]);
    tera.kernels.writeSlice(cache, tera.tensor(Float32Array.of(1, 2, 3, 4), [1, 2, 1, 2]), 2, 3);
    expect(Array.from(cache.toFloat32Array())).toEqual([0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 3, 4]);
  });
});

describe('a frozen base: no gradient kernel and no gradient buffer for an input that needs none', () => {
  /** Storages created while fn runs (native().Storage is swapped for a counting proxy meanwhile). */
  function countAllocations(fn: () => void): number {
    const binding = native();
    const original = binding.Storage;
    let count = 0;
    binding.Storage = new Proxy(original, {
      construct(target, args: ConstructorParameters<typeof original>) {
        count++;
        return new target(...args);
      },
    });
    try {
      fn();
      return count;
    } finally {
      binding.Storage = original;
    }
  }

  it('a frozen embedding table gets no scatter-add', () => {
    const table = new ag.Parameter(tera.tensor(randomArray(12, next), [4, 3]), { requiresGrad: false });
    const spy = jest.spyOn(native(), 'embeddingBackward');
    try {
      const hidden = new ag.Var(tera.tensor(randomArray(6, next), [1, 2, 3]), { requiresGrad: true });
      ag.sum(ag.mul(ag.embedding(table, [1, 2], [1, 2]), hidden)).backward();
      expect(spy).not.toHaveBeenCalled();
      expect(table.grad).toBeNull();
    } finally {
      spy.mockRestore();
    }
  });

  it('layerNorm with frozen weight and bias computes only dx, in the incoming gradient, allocating nothing', () => {
    const x = new ag.Var(tera.tensor(randomArray(12, next), [3, 4]), { requiresGrad: true });
    const weight = new ag.Parameter(tera.ones([4]), { requiresGrad: false });
    const bias = new ag.Parameter(tera.zeros([4]), { requiresGrad: false });
    const spy = jest.spyOn(native(), 'normBackward');
    try {
      const y = ag.layerNorm(x, weight, bias);
      const seed = tera.tensor(randomArray(12, next), [3, 4]);
      // backward() copies the seed once; the op itself allocates nothing.
      expect(countAllocations(() => y.backward(seed))).toBe(1);
      const [, dx, dweight, dbias] = spy.mock.calls[0];
      expect(dx).not.toBeNull();
      expect([dweight, dbias]).toEqual([null, null]);
    } finally {
      spy.mockRestore();
    }
    expect(weight.grad).toBeNull();
    expect(bias.grad).toBeNull();
  });

  it('attention from frozen keys and values computes only dq', () => {
    const c: AttentionCase = { batch: 1, heads: 2, kvHeads: 1, queryLength: 2, keyLength: 2, headDim: 3, causal: true };
    const [q, k, v] = attentionSpecs(c, [true, false, false]).map(makeInput);
    const spy = jest.spyOn(native(), 'attentionBackward');
    try {
      const out = runAttention(c, [q.v, k.v, v.v]);
      const seed = tera.ones(out.shape);
      // backward() copies the seed; attention adds dq and its workspace, nothing for k and v.
      expect(countAllocations(() => out.backward(seed))).toBe(3);
      const [, , , , , workspace, dq, dk, dv] = spy.mock.calls[0];
      expect(workspace).not.toBeNull();
      expect(dq).not.toBeNull();
      expect([dk, dv]).toEqual([null, null]);
    } finally {
      spy.mockRestore();
    }
    expect(k.v.grad).toBeNull();
    expect(v.v.grad).toBeNull();
  });

  it('nothing is kept for a backward pass when no input requires gradients', () => {
    const x = tera.tensor(randomArray(24, next), [1, 2, 3, 4]);
    const before = countAllocations(() => ag.noGrad(() => ag.attention(x, x, x, { causal: true })));
    expect(before).toBe(2); // the output and the probabilities, freed at once
    const ropeAllocations = countAllocations(() => ag.rope(x, [0, 1, 2], { theta: 10000 }));
    expect(ropeAllocations).toBe(2); // the output and the uploaded positions, freed at once
  });
});

describe('results do not depend on the thread count', () => {
  it('gradients of embedding, layerNorm, attention and crossEntropy are bit-identical on 1 and 3 threads', () => {
    const inputs = {
      table: randomArray(40 * 24, next),
      hidden: randomArray(2 * 300 * 24, next),
      gamma: randomArray(24, next),
      ids: Array.from({ length: 600 }, () => Math.floor(next() * 40)),
    };
    const run = (threads: number): Float32Array[] => {
      const previous = tera.getNumThreads();
      tera.setNumThreads(threads);
      try {
        const table = new ag.Parameter(tera.tensor(inputs.table, [40, 24]));
        const gamma = new ag.Parameter(tera.tensor(inputs.gamma, [24]));
        const hidden = new ag.Var(tera.tensor(inputs.hidden, [2, 300, 24]), { requiresGrad: true });
        const x = ag.add(ag.embedding(table, inputs.ids, [2, 300]), hidden);
        const normed = ag.reshape(ag.layerNorm(x, gamma, null), [2, 300, 2, 12]);
        const heads = ag.permute(normed, [0, 2, 1, 3]);
        const mixed = ag.attention(heads, heads, heads, { causal: true });
        const logits = ag.reshape(ag.permute(mixed, [0, 2, 1, 3]), [600, 24]);
        const loss = ag.crossEntropy(
          logits,
          inputs.ids.map((id) => (id % 7 === 0 ? -100 : id % 24)),
        );
        loss.backward();
        return [loss.data, table.grad!, gamma.grad!, hidden.grad!].map((t) => t.toFloat32Array());
      } finally {
        tera.setNumThreads(previous);
      }
    };
    const [one, three] = [run(1), run(3)];
    one.forEach((values, i) => expect(Array.from(three[i])).toEqual(Array.from(values)));
  });
});

describe('refused input: a message naming the problem, nothing changed', () => {
  function unchanged(t: tera.Tensor, fn: () => unknown, message: RegExp): void {
    const before = t.toFloat32Array();
    expect(fn).toThrow(message);
    expect(Array.from(t.toFloat32Array())).toEqual(Array.from(before));
  }
  const w = tera.tensor(randomArray(12, next), [4, 3]);
  const x = tera.tensor(randomArray(24, next), [1, 2, 3, 4]);

  it('embedding', () => {
    unchanged(
      w,
      () => ag.embedding(w, [0, 4], [2]),
      /embedding: token id 4 at position 1 is not a token index in \[0, 4\)/,
    );
    unchanged(w, () => ag.embedding(w, [0, 1.5], [2]), /token id 1.5 at position 1/);
    unchanged(w, () => ag.embedding(w, [-1], [1]), /token id -1 at position 0/);
    unchanged(w, () => ag.embedding(w, [0, 1], [3]), /2 ids for 3 positions \[3\]/);
    unchanged(w, () => ag.embedding(w, tera.tensor(Float32Array.of(0, 9)), [2]), /token id 9 at position 1/);
    expect(() => ag.embedding(tera.zeros([4]), [0], [1])).toThrow(/weight must be \[vocab, dim\]/);
    expect(() => ag.embedding(w, 'abc' as unknown as number[], [3])).toThrow(
      /ids must be a Tensor, an Int32Array or an array/,
    );
  });

  it('the native kernels refuse what the TypeScript checks would (direct binding calls)', () => {
    const out = tera.zeros([1, 3]);
    unchanged(
      out,
      () => native().embeddingForward(out.storage, w.storage, tera.tensor(Float32Array.of(7)).storage, 1, 4, 3),
      /embedding: token id 7 at position 0 is not a token index in \[0, 4\)/,
    );
    unchanged(
      out,
      () => native().copyBlocks(out.storage, 1, 3, w.storage, 0, 3, 1, 3),
      /dst block ends at element 4 of a storage of 3/,
    );
    unchanged(
      x,
      () => native().permute(tera.zeros([24]).storage, x.storage, [1, 2, 3, 4], [0, 1, 1, 3]),
      /each axis 0..3 exactly once/,
    );
    unchanged(
      x,
      () =>
        native().attentionForward(
          x.storage,
          x.storage,
          x.storage,
          null,
          tera.zeros([18]).storage,
          x.storage,
          1,
          2,
          2,
          3,
          3,
          4,
          0,
          true,
          0.5,
        ),
      /output tensor must not also be an input/,
    );
  });

  it('norms', () => {
    unchanged(x, () => ag.layerNorm(x, tera.ones([3]), null), /layerNorm: weight has shape \[3\], expected \[4\]/);
    unchanged(x, () => ag.layerNorm(x, null, null, { eps: -1 }), /eps must be a finite number >= 0/);
    unchanged(x, () => ag.rmsNorm(x, tera.ones([4], {}), { eps: NaN }), /eps must be a finite number/);
    unchanged(x, () => ag.layerNorm(x, null, null, { epsilon: 1 } as never), /layerNorm: unknown option epsilon/);
  });

  it('attention', () => {
    const k = tera.tensor(randomArray(12, next), [1, 1, 3, 4]);
    const k3 = tera.zeros([1, 3, 3, 4]);
    unchanged(x, () => ag.attention(x, k3, k3), /2 query heads cannot share 3 key\/value heads/);
    unchanged(x, () => ag.attention(x, tera.zeros([1, 1, 3, 5]), tera.zeros([1, 1, 3, 5])), /headDim 4/);
    unchanged(x, () => ag.attention(x, k, tera.zeros([1, 1, 2, 4])), /v \[1, 1, 2, 4\] must have k's shape/);
    unchanged(x, () => ag.attention(x, k, k, { causal: true, queryOffset: 1 }), /positions 1..3 need 4 keys, got 3/);
    unchanged(x, () => ag.attention(x, k, k, { queryOffset: 1 }), /queryOffset only applies to causal attention/);
    unchanged(x, () => ag.attention(x, k, k, { keyMask: [1, 2, 1] }), /keyMask entry 2 at index 1 is not a 0\/1 value/);
    unchanged(x, () => ag.attention(x, k, k, { keyMask: [1, 1] }), /2 keyMask for 3 keys \[1, 3\]/);
    unchanged(
      x,
      () => ag.attention(x, k, k, { keyMask: tera.ones([3, 1]) }),
      /keyMask has shape \[3, 1\], expected \[1, 3\]/,
    );
    unchanged(x, () => ag.attention(x, k, k, { scale: Infinity }), /scale must be a finite number/);
    const misspelt = { casual: true } as unknown as tera.autograd.AttentionOptions;
    unchanged(x, () => ag.attention(x, k, k, misspelt), /attention: unknown option casual; options: causal, keyMask/);
    unchanged(x, () => ag.attention(tera.zeros([2, 3, 4]), k, k), /q must be \[batch, heads, tokens, headDim\]/);
  });

  it('rope', () => {
    unchanged(
      x,
      () => ag.rope(x, [0, 1, 2], { theta: 10000, rotaryDim: 3 }),
      /rotaryDim must be an even integer in \[2, 4\]/,
    );
    unchanged(x, () => ag.rope(x, [0, 1, 2], { theta: 10000, rotaryDim: 6 }), /rotaryDim must be an even integer/);
    unchanged(x, () => ag.rope(x, [0, 1], { theta: 10000 }), /2 positions for x \[1, 2, 3, 4\]; give 3/);
    unchanged(x, () => ag.rope(x, [0, -1, 2], { theta: 10000 }), /position -1 at index 1 is not a position/);
    unchanged(x, () => ag.rope(x, [0, 0.5, 2], { theta: 10000 }), /position 0.5 at index 1/);
    unchanged(x, () => ag.rope(x, [0, 1, 2], { theta: 0 }), /theta must be positive/);
    unchanged(x, () => ag.rope(x, [0, 1, 2], undefined as unknown as { theta: number }), /options must be an object/);
    unchanged(x, () => ag.rope(x, [0, 1, 2], { base: 10 } as unknown as { theta: number }), /unknown option base/);
  });

  it('permute, split, concat', () => {
    unchanged(x, () => ag.permute(x, [0, 1, 1, 3]), /must name each axis of x \[1, 2, 3, 4\] once/);
    unchanged(x, () => ag.permute(x, [0, 1, 2]), /must list the 4 axes/);
    unchanged(x, () => ag.permute(x, [0, 1, 2, 4]), /axis 4 is out of range for rank 4/);
    unchanged(x, () => ag.split(x, [2, 1], 3), /sizes \[2, 1\] add up to 3, but axis 3 of x \[1, 2, 3, 4\] has 4/);
    unchanged(x, () => ag.split(x, [4, 0], 3), /sizes must be a non-empty array of positive integers/);
    unchanged(
      x,
      () => ag.concat([x, tera.zeros([1, 2, 2, 3])], 2),
      /xs\[1\] \[1, 2, 2, 3\] must match xs\[0\] \[1, 2, 3, 4\] except along axis 2/,
    );
    expect(() => ag.concat([], 0)).toThrow(/non-empty array/);
  });

  it('crossEntropy', () => {
    const logits = tera.tensor(randomArray(6, next), [2, 3]);
    unchanged(
      logits,
      () => ag.crossEntropy(logits, [0, 3]),
      /crossEntropy: label 3 at row 1 is not a class index in \[0, 3\)/,
    );
    unchanged(logits, () => ag.crossEntropy(logits, [0, -1]), /label -1 at row 1/);
    unchanged(logits, () => ag.crossEntropy(logits, [0, 1], { ignoreIndex: 0.5 }), /ignoreIndex must be an integer/);
    unchanged(
      logits,
      () => ag.crossEntropy(logits, [0, 1], { ignore_index: 1 } as never),
      /unknown option ignore_index/,
    );
    unchanged(logits, () => ag.crossEntropy(logits, [0]), /1 labels for 2 rows/);
    unchanged(logits, () => ag.crossEntropy(tera.zeros([6]), [0]), /logits must be \[rows, classes\]/);
  });

  it('narrow and writeSlice', () => {
    const cache = tera.zeros([1, 2, 4, 2]);
    unchanged(
      cache,
      () => tera.kernels.writeSlice(cache, tera.zeros([1, 2, 2, 2]), 2, 3),
      /entries 3..3\+2 do not fit in axis 2 of size 4/,
    );
    unchanged(
      cache,
      () => tera.kernels.writeSlice(cache, tera.zeros([1, 1, 1, 2]), 2, 0),
      /must match target \[1, 2, 4, 2\] except along axis 2/,
    );
    unchanged(cache, () => tera.kernels.writeSlice(cache, cache, 2, 0), /must not share memory/);
    unchanged(cache, () => tera.kernels.narrow(cache, 4, 0, 1), /axis 4 is out of range for rank 4/);
    unchanged(cache, () => tera.kernels.narrow(cache, 2, 1, 0), /do not fit/);
  });
});
