/**
 * Tiny random GPT-2 and LLaMA checkpoints in Hugging Face's layout, written
 * without the library (its own safetensors bytes, names and shapes), so tests of
 * the loader compare against something independent.
 *
 * Every weight is a small integer times a power of two, exactly representable
 * in F32, F16 and BF16, so the float64 values returned are exactly what the
 * file holds in any dtype; a float64 reference model can use them directly.
 * Seeded: the same options give the same bytes.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export type FixtureDtype = 'F32' | 'F16' | 'BF16';

export interface FixtureTensor {
  /** The key stored in the file. */
  key: string;
  dtype: FixtureDtype;
  shape: number[];
  values: Float64Array;
}

export interface TinyCheckpointOptions {
  /** config.json fields overriding the tiny defaults (Hugging Face names). */
  config?: Record<string, unknown>;
  seed?: number;
  dtype?: FixtureDtype;
  /** Split into this many shards with model.safetensors.index.json (default 1: model.safetensors). */
  shards?: number;
  /** GPT-2: store keys with the `transformer.` prefix (default true; real files often lack it). */
  prefix?: boolean;
  /** GPT-2: also store the causal-mask buffers h.N.attn.bias and h.N.attn.masked_bias. */
  maskBuffers?: boolean;
  /** LLaMA: where rope_theta is written (default 'legacy': top-level rope_theta, rope_scaling null). */
  ropeForm?: 'legacy' | 'parameters' | 'absent';
  /** LLaMA: also store rotary_emb.inv_freq buffers, as old conversions did. */
  invFreqBuffers?: boolean;
}

export interface TinyCheckpoint {
  dir: string;
  /** The config.json written. */
  config: Record<string, unknown>;
  /** Every weight by its Hugging Face name (with the model prefix), in float64. */
  weights: Map<string, { shape: number[]; values: Float64Array }>;
  /** Every tensor as stored, buffers included, in the order written. */
  stored: FixtureTensor[];
  files: string[];
}

/** mulberry32: a small seeded generator, enough for fixtures. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Values k * 2^-shift with k uniform in [-range, range] (plus `offset`): exact in BF16 when range <= 127. */
function grid(random: () => number, size: number, range: number, shift: number, offset = 0): Float64Array {
  const out = new Float64Array(size);
  for (let i = 0; i < size; i++) out[i] = offset + (Math.floor(random() * (2 * range + 1)) - range) * 2 ** -shift;
  return out;
}

type Kind = 'embedding' | 'matrix' | 'bias' | 'norm';

function values(random: () => number, shape: number[], kind: Kind): Float64Array {
  const size = shape.reduce((a, b) => a * b, 1);
  switch (kind) {
    case 'embedding':
      return grid(random, size, 32, 6);
    case 'matrix':
      return grid(random, size, 16, 7);
    case 'bias':
      return grid(random, size, 16, 8);
    case 'norm':
      return grid(random, size, 16, 6, 1);
  }
}

/** IEEE half bits of a value that must be exactly representable (the fixtures' values are). */
function exactHalfBits(value: number): number {
  if (value === 0) return Object.is(value, -0) ? 0x8000 : 0;
  const sign = value < 0 ? 0x8000 : 0;
  const magnitude = Math.abs(value);
  const exponent = Math.floor(Math.log2(magnitude));
  const mantissa = (magnitude / 2 ** exponent - 1) * 1024;
  if (exponent < -14 || exponent > 15 || !Number.isInteger(mantissa)) {
    throw new Error(`fixture value ${value} is not exactly representable in F16`);
  }
  return sign | ((exponent + 15) << 10) | mantissa;
}

function encode(tensor: FixtureTensor): Buffer {
  const f32 = Float32Array.from(tensor.values);
  if (tensor.dtype === 'F32') return Buffer.from(f32.buffer);
  const out = Buffer.alloc(f32.length * 2);
  const bits = new Uint32Array(f32.buffer);
  for (let i = 0; i < f32.length; i++) {
    if (tensor.dtype === 'BF16') {
      if ((bits[i] & 0xffff) !== 0) throw new Error(`fixture value ${tensor.values[i]} is not exact in BF16`);
      out.writeUInt16LE(bits[i] >>> 16, i * 2);
    } else {
      out.writeUInt16LE(exactHalfBits(tensor.values[i]), i * 2);
    }
  }
  return out;
}

/**
 * Writes a safetensors file from raw parts: header entries in the given order,
 * data packed in that order, optional metadata. Tests of bad files edit the
 * result or pass `mangleHeader` to rewrite the header object first.
 */
export function writeSafetensorsFixture(
  file: string,
  tensors: FixtureTensor[],
  metadata: Record<string, string> | null = { format: 'pt' },
  mangleHeader?: (header: Record<string, unknown>) => void,
): void {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const data: Buffer[] = [];
  let offset = 0;
  for (const tensor of tensors) {
    const bytes = encode(tensor);
    header[tensor.key] = { dtype: tensor.dtype, shape: tensor.shape, data_offsets: [offset, offset + bytes.length] };
    offset += bytes.length;
    data.push(bytes);
  }
  mangleHeader?.(header);
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  fs.writeFileSync(file, Buffer.concat([length, Buffer.from(json), ...data]));
}

/** Writes the tensors as model.safetensors, or as N shards plus the index, and config.json. */
function writeFolder(dir: string, config: Record<string, unknown>, stored: FixtureTensor[], shards: number): string[] {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  if (shards <= 1) {
    writeSafetensorsFixture(path.join(dir, 'model.safetensors'), stored);
    return ['config.json', 'model.safetensors'];
  }
  const files: string[] = [];
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  const perShard = Math.ceil(stored.length / shards);
  for (let i = 0; i < shards; i++) {
    const name = `model-${String(i + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part = stored.slice(i * perShard, (i + 1) * perShard);
    writeSafetensorsFixture(path.join(dir, name), part);
    for (const tensor of part) {
      weightMap[tensor.key] = name;
      totalSize += encode(tensor).length;
    }
    files.push(name);
  }
  const index = { metadata: { total_size: totalSize }, weight_map: weightMap };
  fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify(index, null, 2));
  return ['config.json', ...files, 'model.safetensors.index.json'];
}

/** Default tiny GPT-2: vocabulary 23, 12 positions, width 8, 2 layers of 2 heads. */
export function writeTinyGpt2(dir: string, options: TinyCheckpointOptions = {}): TinyCheckpoint {
  const config: Record<string, unknown> = {
    model_type: 'gpt2',
    architectures: ['GPT2LMHeadModel'],
    vocab_size: 23,
    n_positions: 12,
    n_embd: 8,
    n_layer: 2,
    n_head: 2,
    bos_token_id: 22,
    eos_token_id: 22,
    ...options.config,
  };
  const v = config.vocab_size as number;
  const p = config.n_positions as number;
  const d = config.n_embd as number;
  const inner = (config.n_inner as number | null | undefined) ?? 4 * d;
  const tied = config.tie_word_embeddings !== false;
  const dtype = options.dtype ?? 'F32';
  const random = seededRandom(options.seed ?? 1);
  const keyPrefix = options.prefix === false ? '' : 'transformer.';

  const weights = new Map<string, { shape: number[]; values: Float64Array }>();
  const stored: FixtureTensor[] = [];
  const add = (name: string, shape: number[], kind: Kind) => {
    const tensor = { key: keyPrefix + name, dtype, shape, values: values(random, shape, kind) };
    weights.set(`transformer.${name}`, { shape, values: tensor.values });
    stored.push(tensor);
  };
  add('wte.weight', [v, d], 'embedding');
  add('wpe.weight', [p, d], 'embedding');
  for (let layer = 0; layer < (config.n_layer as number); layer++) {
    const h = `h.${layer}`;
    add(`${h}.ln_1.weight`, [d], 'norm');
    add(`${h}.ln_1.bias`, [d], 'bias');
    add(`${h}.attn.c_attn.weight`, [d, 3 * d], 'matrix');
    add(`${h}.attn.c_attn.bias`, [3 * d], 'bias');
    add(`${h}.attn.c_proj.weight`, [d, d], 'matrix');
    add(`${h}.attn.c_proj.bias`, [d], 'bias');
    add(`${h}.ln_2.weight`, [d], 'norm');
    add(`${h}.ln_2.bias`, [d], 'bias');
    add(`${h}.mlp.c_fc.weight`, [d, inner], 'matrix');
    add(`${h}.mlp.c_fc.bias`, [inner], 'bias');
    add(`${h}.mlp.c_proj.weight`, [inner, d], 'matrix');
    add(`${h}.mlp.c_proj.bias`, [d], 'bias');
    if (options.maskBuffers) {
      const mask = new Float64Array(p * p);
      for (let i = 0; i < p; i++) for (let j = 0; j <= i; j++) mask[i * p + j] = 1;
      stored.push({ key: `${keyPrefix}${h}.attn.bias`, dtype, shape: [1, 1, p, p], values: mask });
      stored.push({
        key: `${keyPrefix}${h}.attn.masked_bias`,
        dtype: 'F32',
        shape: [],
        values: new Float64Array([-1e4]),
      });
    }
  }
  add('ln_f.weight', [d], 'norm');
  add('ln_f.bias', [d], 'bias');
  if (!tied) {
    const tensor = { key: 'lm_head.weight', dtype, shape: [v, d], values: values(random, [v, d], 'embedding') };
    weights.set('lm_head.weight', { shape: tensor.shape, values: tensor.values });
    stored.push(tensor);
  }
  const files = writeFolder(dir, config, stored, options.shards ?? 1);
  return { dir, config, weights, stored, files };
}

/** Default tiny LLaMA: vocabulary 29, width 16, 2 layers, 4 heads sharing 2 key-value heads (GQA), untied. */
export function writeTinyLlama(dir: string, options: TinyCheckpointOptions = {}): TinyCheckpoint {
  const ropeTheta = 10000;
  const rope: Record<string, unknown> =
    options.ropeForm === 'parameters'
      ? { rope_parameters: { rope_type: 'default', rope_theta: ropeTheta } }
      : options.ropeForm === 'absent'
        ? {}
        : { rope_theta: ropeTheta, rope_scaling: null };
  const config: Record<string, unknown> = {
    model_type: 'llama',
    architectures: ['LlamaForCausalLM'],
    vocab_size: 29,
    hidden_size: 16,
    intermediate_size: 24,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 16,
    rms_norm_eps: 1e-6,
    hidden_act: 'silu',
    tie_word_embeddings: false,
    torch_dtype: 'float32',
    bos_token_id: 1,
    eos_token_id: 2,
    ...rope,
    ...options.config,
  };
  const v = config.vocab_size as number;
  const d = config.hidden_size as number;
  const heads = config.num_attention_heads as number;
  const kvHeads = (config.num_key_value_heads as number | undefined) ?? heads;
  const headDim = (config.head_dim as number | undefined) ?? d / heads;
  const inner = config.intermediate_size as number;
  const attentionBias = config.attention_bias === true;
  const mlpBias = config.mlp_bias === true;
  const dtype = options.dtype ?? 'F32';
  const random = seededRandom(options.seed ?? 2);

  const weights = new Map<string, { shape: number[]; values: Float64Array }>();
  const stored: FixtureTensor[] = [];
  const add = (name: string, shape: number[], kind: Kind) => {
    const tensor = { key: name, dtype, shape, values: values(random, shape, kind) };
    weights.set(name, { shape, values: tensor.values });
    stored.push(tensor);
  };
  const linear = (name: string, outDim: number, inDim: number, bias: boolean) => {
    add(`${name}.weight`, [outDim, inDim], 'matrix');
    if (bias) add(`${name}.bias`, [outDim], 'bias');
  };
  add('model.embed_tokens.weight', [v, d], 'embedding');
  for (let layer = 0; layer < (config.num_hidden_layers as number); layer++) {
    const l = `model.layers.${layer}`;
    linear(`${l}.self_attn.q_proj`, heads * headDim, d, attentionBias);
    linear(`${l}.self_attn.k_proj`, kvHeads * headDim, d, attentionBias);
    linear(`${l}.self_attn.v_proj`, kvHeads * headDim, d, attentionBias);
    linear(`${l}.self_attn.o_proj`, d, heads * headDim, attentionBias);
    linear(`${l}.mlp.gate_proj`, inner, d, mlpBias);
    linear(`${l}.mlp.up_proj`, inner, d, mlpBias);
    linear(`${l}.mlp.down_proj`, d, inner, mlpBias);
    add(`${l}.input_layernorm.weight`, [d], 'norm');
    add(`${l}.post_attention_layernorm.weight`, [d], 'norm');
    if (options.invFreqBuffers) {
      const invFreq = Float64Array.from({ length: headDim / 2 }, (_, i) =>
        Math.fround(ropeTheta ** ((-2 * i) / headDim)),
      );
      stored.push({ key: `${l}.self_attn.rotary_emb.inv_freq`, dtype: 'F32', shape: [headDim / 2], values: invFreq });
    }
  }
  add('model.norm.weight', [d], 'norm');
  if (config.tie_word_embeddings !== true) add('lm_head.weight', [v, d], 'embedding');
  const files = writeFolder(dir, config, stored, options.shards ?? 1);
  return { dir, config, weights, stored, files };
}
