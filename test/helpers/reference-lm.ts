/**
 * Independent float64 GPT-2 and LLaMA forward passes and the causal-LM loss,
 * written as plain loops over transformers' definitions (modeling_gpt2.py,
 * modeling_llama.py) and fed with a fixture's float64 weights (by Hugging Face
 * name, stored layout: GPT-2's Conv1D weights [in, out], Linear weights
 * [out, in]). Nothing here uses the library, so the models are compared with
 * something that shares none of their code.
 *
 * Masking: query i of row b sees key j when j <= i and attentionMask[b][j] is 1.
 * A query that sees no key (a left-padding position) outputs zeros; its logits
 * mean nothing and tests compare only positions whose mask is 1.
 */

export type ReferenceWeights = ReadonlyMap<string, { shape: readonly number[]; values: Float64Array }>;

export interface ReferenceInput {
  /** Token ids, [batch][tokens]. */
  ids: readonly (readonly number[])[];
  /** 1 for a token, 0 for padding; default all ones. */
  attentionMask?: readonly (readonly number[])[];
  /** Position of each token; default 0, 1, ..., as transformers' forward without position_ids. */
  positions?: readonly (readonly number[])[];
}

function weight(weights: ReferenceWeights, name: string): Float64Array {
  const found = weights.get(name);
  if (found === undefined) throw new Error(`reference: no weight ${name}`);
  return found.values;
}

function optionalWeight(weights: ReferenceWeights, name: string): Float64Array | null {
  return weights.get(name)?.values ?? null;
}

/** y[t] = x[t] W^T + b with W stored [out, in] (nn.Linear). */
function linearOutIn(x: Float64Array, rows: number, w: Float64Array, b: Float64Array | null, out: number) {
  const inF = x.length / rows;
  const y = new Float64Array(rows * out);
  for (let t = 0; t < rows; t++) {
    for (let o = 0; o < out; o++) {
      let acc = b === null ? 0 : b[o];
      for (let i = 0; i < inF; i++) acc += x[t * inF + i] * w[o * inF + i];
      y[t * out + o] = acc;
    }
  }
  return y;
}

/** y[t] = x[t] W + b with W stored [in, out] (GPT-2's Conv1D). */
function linearInOut(x: Float64Array, rows: number, w: Float64Array, b: Float64Array | null, out: number) {
  const inF = x.length / rows;
  const y = new Float64Array(rows * out);
  for (let t = 0; t < rows; t++) {
    for (let o = 0; o < out; o++) {
      let acc = b === null ? 0 : b[o];
      for (let i = 0; i < inF; i++) acc += x[t * inF + i] * w[i * out + o];
      y[t * out + o] = acc;
    }
  }
  return y;
}

function layerNorm(x: Float64Array, rows: number, w: Float64Array, b: Float64Array, eps: number): Float64Array {
  const d = w.length;
  const y = new Float64Array(x.length);
  for (let t = 0; t < rows; t++) {
    let mean = 0;
    for (let i = 0; i < d; i++) mean += x[t * d + i];
    mean /= d;
    let variance = 0;
    for (let i = 0; i < d; i++) variance += (x[t * d + i] - mean) ** 2;
    variance /= d;
    const inv = 1 / Math.sqrt(variance + eps);
    for (let i = 0; i < d; i++) y[t * d + i] = (x[t * d + i] - mean) * inv * w[i] + b[i];
  }
  return y;
}

function rmsNorm(x: Float64Array, rows: number, w: Float64Array, eps: number): Float64Array {
  const d = w.length;
  const y = new Float64Array(x.length);
  for (let t = 0; t < rows; t++) {
    let meanSquare = 0;
    for (let i = 0; i < d; i++) meanSquare += x[t * d + i] ** 2;
    const inv = 1 / Math.sqrt(meanSquare / d + eps);
    for (let i = 0; i < d; i++) y[t * d + i] = x[t * d + i] * inv * w[i];
  }
  return y;
}

/** transformers' gelu_new: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))). */
function geluTanh(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
}

function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

function addInto(target: Float64Array, source: Float64Array): void {
  for (let i = 0; i < target.length; i++) target[i] += source[i];
}

/**
 * Causal attention of one sequence. q [T, H*D], k and v [T, Hkv*D]; query head
 * h reads key-value head floor(h / (H / Hkv)) (transformers' repeat_kv).
 */
function attention(
  q: Float64Array,
  k: Float64Array,
  v: Float64Array,
  tokens: number,
  heads: number,
  kvHeads: number,
  headDim: number,
  scale: number,
  mask: readonly number[],
): Float64Array {
  const out = new Float64Array(tokens * heads * headDim);
  const group = heads / kvHeads;
  for (let h = 0; h < heads; h++) {
    const kvh = Math.floor(h / group);
    for (let i = 0; i < tokens; i++) {
      const visible: number[] = [];
      for (let j = 0; j <= i; j++) if (mask[j] === 1) visible.push(j);
      if (visible.length === 0) continue;
      const scores = visible.map((j) => {
        let dot = 0;
        for (let e = 0; e < headDim; e++)
          dot += q[(i * heads + h) * headDim + e] * k[(j * kvHeads + kvh) * headDim + e];
        return dot * scale;
      });
      const top = Math.max(...scores);
      const weights = scores.map((s) => Math.exp(s - top));
      const total = weights.reduce((a, b) => a + b, 0);
      visible.forEach((j, n) => {
        for (let e = 0; e < headDim; e++) {
          out[(i * heads + h) * headDim + e] += (weights[n] / total) * v[(j * kvHeads + kvh) * headDim + e];
        }
      });
    }
  }
  return out;
}

/** Rotary embedding in place, rotate-half convention, for [T, heads * D] at the given positions. */
function rope(
  x: Float64Array,
  tokens: number,
  heads: number,
  headDim: number,
  positions: readonly number[],
  theta: number,
) {
  const half = headDim / 2;
  for (let t = 0; t < tokens; t++) {
    for (let h = 0; h < heads; h++) {
      const base = (t * heads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const angle = positions[t] * theta ** ((-2 * i) / headDim);
        const [x1, x2] = [x[base + i], x[base + i + half]];
        x[base + i] = x1 * Math.cos(angle) - x2 * Math.sin(angle);
        x[base + i + half] = x2 * Math.cos(angle) + x1 * Math.sin(angle);
      }
    }
  }
}

function rowsOf(input: ReferenceInput, b: number) {
  const ids = input.ids[b];
  return {
    ids,
    mask: input.attentionMask?.[b] ?? ids.map(() => 1),
    positions: input.positions?.[b] ?? ids.map((_, t) => t),
  };
}

function embed(table: Float64Array, ids: readonly number[], d: number): Float64Array {
  const out = new Float64Array(ids.length * d);
  ids.forEach((id, t) => out.set(table.subarray(id * d, (id + 1) * d), t * d));
  return out;
}

function gpt2Sequence(config: Record<string, unknown>, w: ReferenceWeights, input: ReferenceInput, b: number) {
  const d = config.n_embd as number;
  const heads = config.n_head as number;
  const headDim = d / heads;
  const inner = (config.n_inner as number | null | undefined) ?? 4 * d;
  const eps = (config.layer_norm_epsilon as number | undefined) ?? 1e-5;
  const vocab = config.vocab_size as number;
  const { ids, mask, positions } = rowsOf(input, b);
  const T = ids.length;
  const wte = weight(w, 'transformer.wte.weight');
  const h = embed(wte, ids, d);
  addInto(h, embed(weight(w, 'transformer.wpe.weight'), positions, d));
  for (let layer = 0; layer < (config.n_layer as number); layer++) {
    const p = (name: string) => weight(w, `transformer.h.${layer}.${name}`);
    const a = layerNorm(h, T, p('ln_1.weight'), p('ln_1.bias'), eps);
    const qkv = linearInOut(a, T, p('attn.c_attn.weight'), p('attn.c_attn.bias'), 3 * d);
    const [q, k, v] = [0, 1, 2].map((part) => {
      const out = new Float64Array(T * d);
      for (let t = 0; t < T; t++) out.set(qkv.subarray(t * 3 * d + part * d, t * 3 * d + (part + 1) * d), t * d);
      return out;
    });
    const attended = attention(q, k, v, T, heads, heads, headDim, 1 / Math.sqrt(headDim), mask);
    addInto(h, linearInOut(attended, T, p('attn.c_proj.weight'), p('attn.c_proj.bias'), d));
    const m = layerNorm(h, T, p('ln_2.weight'), p('ln_2.bias'), eps);
    const up = linearInOut(m, T, p('mlp.c_fc.weight'), p('mlp.c_fc.bias'), inner).map(geluTanh);
    addInto(h, linearInOut(up, T, p('mlp.c_proj.weight'), p('mlp.c_proj.bias'), d));
  }
  const final = layerNorm(h, T, weight(w, 'transformer.ln_f.weight'), weight(w, 'transformer.ln_f.bias'), eps);
  return linearOutIn(final, T, optionalWeight(w, 'lm_head.weight') ?? wte, null, vocab);
}

function ropeTheta(config: Record<string, unknown>): number {
  const parameters = config.rope_parameters as { rope_theta?: number } | null | undefined;
  return parameters?.rope_theta ?? (config.rope_theta as number | undefined) ?? 10000;
}

function llamaSequence(config: Record<string, unknown>, w: ReferenceWeights, input: ReferenceInput, b: number) {
  const d = config.hidden_size as number;
  const heads = config.num_attention_heads as number;
  const kvHeads = (config.num_key_value_heads as number | undefined) ?? heads;
  const headDim = (config.head_dim as number | undefined) ?? d / heads;
  const inner = config.intermediate_size as number;
  const eps = (config.rms_norm_eps as number | undefined) ?? 1e-6;
  const vocab = config.vocab_size as number;
  const theta = ropeTheta(config);
  const { ids, mask, positions } = rowsOf(input, b);
  const T = ids.length;
  const table = weight(w, 'model.embed_tokens.weight');
  const h = embed(table, ids, d);
  for (let layer = 0; layer < (config.num_hidden_layers as number); layer++) {
    const p = (name: string) => weight(w, `model.layers.${layer}.${name}`);
    const bias = (name: string) => optionalWeight(w, `model.layers.${layer}.${name}`);
    const a = rmsNorm(h, T, p('input_layernorm.weight'), eps);
    const q = linearOutIn(a, T, p('self_attn.q_proj.weight'), bias('self_attn.q_proj.bias'), heads * headDim);
    const k = linearOutIn(a, T, p('self_attn.k_proj.weight'), bias('self_attn.k_proj.bias'), kvHeads * headDim);
    const v = linearOutIn(a, T, p('self_attn.v_proj.weight'), bias('self_attn.v_proj.bias'), kvHeads * headDim);
    rope(q, T, heads, headDim, positions, theta);
    rope(k, T, kvHeads, headDim, positions, theta);
    const attended = attention(q, k, v, T, heads, kvHeads, headDim, 1 / Math.sqrt(headDim), mask);
    addInto(h, linearOutIn(attended, T, p('self_attn.o_proj.weight'), bias('self_attn.o_proj.bias'), d));
    const m = rmsNorm(h, T, p('post_attention_layernorm.weight'), eps);
    const gate = linearOutIn(m, T, p('mlp.gate_proj.weight'), bias('mlp.gate_proj.bias'), inner);
    const up = linearOutIn(m, T, p('mlp.up_proj.weight'), bias('mlp.up_proj.bias'), inner);
    const product = gate.map((g, i) => silu(g) * up[i]);
    addInto(h, linearOutIn(product, T, p('mlp.down_proj.weight'), bias('mlp.down_proj.bias'), d));
  }
  const final = rmsNorm(h, T, weight(w, 'model.norm.weight'), eps);
  return linearOutIn(final, T, optionalWeight(w, 'lm_head.weight') ?? table, null, vocab);
}

/** Logits [batch, tokens, vocab], flattened, of the model `config` (a config.json object) describes. */
export function referenceLogits(
  config: Record<string, unknown>,
  weights: ReferenceWeights,
  input: ReferenceInput,
): Float64Array {
  const sequence = config.model_type === 'gpt2' ? gpt2Sequence : llamaSequence;
  const rows = input.ids.map((_, b) => sequence(config, weights, input, b));
  const out = new Float64Array(rows.reduce((n, r) => n + r.length, 0));
  let offset = 0;
  for (const row of rows) {
    out.set(row, offset);
    offset += row.length;
  }
  return out;
}

/**
 * transformers' causal-LM loss: the logits at token t predict labels[t + 1];
 * labels of -100 are left out; the mean over the rest.
 */
export function referenceLoss(logits: Float64Array, labels: readonly (readonly number[])[], vocab: number): number {
  let total = 0;
  let count = 0;
  labels.forEach((row, b) => {
    const T = row.length;
    for (let t = 0; t + 1 < T; t++) {
      const target = row[t + 1];
      if (target === -100) continue;
      const base = (b * T + t) * vocab;
      let top = -Infinity;
      for (let c = 0; c < vocab; c++) top = Math.max(top, logits[base + c]);
      let sum = 0;
      for (let c = 0; c < vocab; c++) sum += Math.exp(logits[base + c] - top);
      total += top + Math.log(sum) - logits[base + target];
      count++;
    }
  });
  return total / count;
}

/**
 * A copy of `weights` with the [out, in] matrix `name` replaced (an adapter's
 * effective weight); GPT-2's Conv1D weights are stored transposed, [in, out].
 */
export function withWeight(
  weights: ReferenceWeights,
  name: string,
  outIn: Float64Array,
  storedInOut: boolean,
): Map<string, { shape: readonly number[]; values: Float64Array }> {
  const original = weights.get(name);
  if (original === undefined) throw new Error(`reference: no weight ${name}`);
  const [rows, cols] = original.shape;
  let values = Float64Array.from(outIn);
  if (storedInOut) {
    // Stored [in, out] = [rows, cols]: the [out, in] matrix is [cols, rows].
    values = new Float64Array(rows * cols);
    for (let i = 0; i < rows; i++) for (let o = 0; o < cols; o++) values[i * cols + o] = outIn[o * rows + i];
  }
  return new Map([...weights, [name, { shape: original.shape, values }]]);
}
