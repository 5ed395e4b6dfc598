/**
 * Model configurations read from a Hugging Face `config.json`: GPT-2 ('gpt2') and
 * LLaMA-style decoders ('llama', and 'mistral' where it computes the same thing).
 *
 * Every field that changes the math is read with transformers' default when it is
 * absent and checked; a value we do not implement (a rope scaling type, an
 * activation, scale_attn_by_inverse_layer_idx, cross attention...) is refused with
 * an error naming the field, never ignored. Fields that do not change the math
 * (architectures, torch_dtype, token ids, use_cache, dropout rates, which only act
 * in training mode and which we do not apply) are kept as they were, so a saved
 * config.json is the one that was read, with every honoured field written out.
 *
 * `parseModelConfig(json)` is the one way to make a config: the typed fields and
 * `json` (the completed config.json) come from the same reading, so
 * `parseModelConfig(config.json)` equals `config` (round trip identity).
 *
 * `expectedParameters(config)` lists the model's tensors, in state-dict order,
 * with Hugging Face's names and shapes: loading, saving and the model classes all
 * take their names from it.
 */
import * as fs from 'node:fs';

export type ModelType = 'gpt2' | 'llama' | 'mistral';

interface CommonConfig {
  readonly vocabSize: number;
  readonly hiddenSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly headDim: number;
  readonly intermediateSize: number;
  /** Longest sequence the model accepts (n_positions / max_position_embeddings). */
  readonly maxPositions: number;
  /** Multiplies q·k before the softmax. */
  readonly attentionScale: number;
  /** lm_head shares the token embedding's weight (and is not stored). */
  readonly tieWordEmbeddings: boolean;
  /** The completed config.json: every honoured field written out, other fields as read. */
  readonly json: Readonly<Record<string, unknown>>;
}

export interface Gpt2Config extends CommonConfig {
  readonly modelType: 'gpt2';
  /** GELU in the tanh form (transformers' gelu_new / gelu_pytorch_tanh). */
  readonly activation: 'gelu_tanh';
  readonly layerNormEps: number;
}

export interface LlamaConfig extends CommonConfig {
  readonly modelType: 'llama' | 'mistral';
  readonly activation: 'silu';
  readonly numKeyValueHeads: number;
  readonly rmsNormEps: number;
  /** RoPE base, rotate-half convention, no scaling. */
  readonly ropeTheta: number;
  /** q, k, v and o projections have biases. */
  readonly attentionBias: boolean;
  /** gate, up and down projections have biases. */
  readonly mlpBias: boolean;
}

export type ModelConfig = Gpt2Config | LlamaConfig;

/** One tensor of a model: Hugging Face's name and its shape. */
export interface ParameterSpec {
  readonly name: string;
  readonly shape: readonly number[];
}

type Json = Record<string, unknown>;

function isPlainObject(value: unknown): value is Json {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A JSON value as it appears in the file, shortened for an error message. */
function describeJson(value: unknown): string {
  const text = value === undefined ? 'nothing' : JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/**
 * Reads fields of one config object, filling transformers' defaults into `out`
 * and collecting every problem, so one error lists them all.
 */
class FieldReader {
  readonly problems: string[] = [];

  constructor(
    private readonly json: Json,
    readonly out: Json,
  ) {}

  has(key: string): boolean {
    return Object.prototype.hasOwnProperty.call(this.json, key);
  }

  raw(key: string): unknown {
    return this.has(key) ? this.json[key] : undefined;
  }

  problem(key: string, message: string): void {
    this.problems.push(`${key} ${message}`);
  }

  /** An integer >= `min`; `nullMeansDefault` where transformers replaces null by the default. */
  int(key: string, fallback: number, min = 1, nullMeansDefault = false): number {
    const given = this.has(key) ? this.json[key] : fallback;
    const value = given === null && nullMeansDefault ? fallback : given;
    this.out[key] = value;
    if (!Number.isSafeInteger(value) || (value as number) < min) {
      this.problem(key, `must be an integer >= ${min}, got ${describeJson(value)}`);
      return min;
    }
    return value as number;
  }

  /** An integer, or null meaning "derived": returns null then. */
  optionalInt(key: string): number | null {
    const value = this.raw(key) ?? null;
    this.out[key] = value;
    if (value === null) return null;
    if (!Number.isSafeInteger(value) || (value as number) < 1) {
      this.problem(key, `must be a positive integer or null, got ${describeJson(value)}`);
      return 1;
    }
    return value as number;
  }

  /** A finite number >= 0 (or > 0 when `positive`). */
  number(key: string, fallback: number, positive = false): number {
    const value = this.has(key) ? this.json[key] : fallback;
    this.out[key] = value;
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0 || (positive && value === 0)) {
      this.problem(key, `must be a finite number ${positive ? '> 0' : '>= 0'}, got ${describeJson(value)}`);
      return fallback;
    }
    return value;
  }

  bool(key: string, fallback: boolean): boolean {
    const value = this.has(key) ? this.json[key] : fallback;
    this.out[key] = value;
    if (typeof value !== 'boolean') {
      this.problem(key, `must be true or false, got ${describeJson(value)}`);
      return fallback;
    }
    return value;
  }

  /** A boolean of which only `supported` is implemented. */
  onlyBool(key: string, fallback: boolean, supported: boolean, why: string): void {
    if (this.bool(key, fallback) !== supported) this.problem(key, `${String(!supported)} is not supported (${why})`);
  }

  /** A string mapped through `allowed` (transformers' name -> ours). */
  choice<T extends string>(key: string, fallback: string, allowed: Record<string, T>): T {
    const value = this.has(key) ? this.json[key] : fallback;
    this.out[key] = value;
    const mapped =
      typeof value === 'string' && Object.prototype.hasOwnProperty.call(allowed, value) ? allowed[value] : null;
    if (mapped === null) {
      this.problem(key, `${describeJson(value)} is not supported (supported: ${Object.keys(allowed).join(', ')})`);
      return Object.values(allowed)[0];
    }
    return mapped;
  }
}

const GPT2_ACTIVATIONS = { gelu_new: 'gelu_tanh', gelu_pytorch_tanh: 'gelu_tanh' } as const;
const LLAMA_ACTIVATIONS = { silu: 'silu', swish: 'silu' } as const;

/** transformers' GPT2Config defaults for the fields we honour. */
function readGpt2(fields: FieldReader): Omit<Gpt2Config, 'json'> {
  const vocabSize = fields.int('vocab_size', 50257);
  const maxPositions = fields.int('n_positions', 1024);
  const hiddenSize = fields.int('n_embd', 768);
  const numLayers = fields.int('n_layer', 12);
  const numHeads = fields.int('n_head', 12);
  const intermediateSize = fields.optionalInt('n_inner') ?? 4 * hiddenSize;
  const activation = fields.choice('activation_function', 'gelu_new', GPT2_ACTIVATIONS);
  const layerNormEps = fields.number('layer_norm_epsilon', 1e-5);
  const tieWordEmbeddings = fields.bool('tie_word_embeddings', true);
  const scaleAttnWeights = fields.bool('scale_attn_weights', true);
  fields.onlyBool('scale_attn_by_inverse_layer_idx', false, false, 'per-layer attention scaling is not implemented');
  // Upcasting only changes half-precision rounding; we compute attention in float32 either way.
  fields.bool('reorder_and_upcast_attn', false);
  fields.onlyBool('add_cross_attention', false, false, 'decoder-only models have no cross attention');
  if (hiddenSize % numHeads !== 0) {
    fields.problem('n_embd', `(${hiddenSize}) must be divisible by n_head (${numHeads})`);
  }
  const headDim = Math.max(1, Math.floor(hiddenSize / numHeads));
  return {
    modelType: 'gpt2',
    vocabSize,
    maxPositions,
    hiddenSize,
    numLayers,
    numHeads,
    headDim,
    intermediateSize,
    activation,
    layerNormEps,
    tieWordEmbeddings,
    attentionScale: scaleAttnWeights ? 1 / Math.sqrt(headDim) : 1,
  };
}

/**
 * RoPE base from either form of the config: top-level rope_theta / rope_scaling
 * (transformers 4) or rope_parameters (transformers 5, which prefers
 * rope_parameters.rope_theta and takes a non-null rope_scaling over rope_parameters).
 * Only the default (unscaled) rotary embedding is implemented; the completed JSON
 * writes both forms so either version of transformers reads the same base.
 */
function readRope(fields: FieldReader): number {
  const scaling = fields.raw('rope_scaling') ?? null;
  const parameters = fields.raw('rope_parameters') ?? null;
  const topLevel = fields.raw('rope_theta');
  let theta: unknown = topLevel ?? 10000;
  for (const [key, value] of [
    ['rope_scaling', scaling],
    ['rope_parameters', parameters],
  ] as const) {
    if (value === null) continue;
    if (!isPlainObject(value)) {
      fields.problem(key, `must be an object or null, got ${describeJson(value)}`);
      continue;
    }
    const type = value.rope_type ?? value.type ?? 'default';
    if (type !== 'default') {
      fields.problem(key, `has rope type ${describeJson(type)}; only 'default' (no scaling) is supported`);
    }
    const extra = Object.keys(value).filter((k) => !['rope_type', 'type', 'rope_theta'].includes(k));
    if (extra.length > 0)
      fields.problem(key, `has ${extra.join(', ')}, which the default rotary embedding does not take`);
    if (value.rope_theta !== undefined) {
      if (topLevel !== undefined && value.rope_theta !== topLevel) {
        fields.problem(
          key,
          `.rope_theta (${describeJson(value.rope_theta)}) disagrees with rope_theta (${describeJson(topLevel)})`,
        );
      }
      theta = value.rope_theta;
    }
  }
  const partial = fields.raw('partial_rotary_factor');
  if (partial !== undefined && partial !== null && partial !== 1) {
    fields.problem(
      'partial_rotary_factor',
      `${describeJson(partial)} is not supported (rotary embedding on the whole head only)`,
    );
  }
  if (typeof theta !== 'number' || !Number.isFinite(theta) || theta <= 0) {
    fields.problem('rope_theta', `must be a finite number > 0, got ${describeJson(theta)}`);
    theta = 10000;
  }
  fields.out.rope_theta = theta;
  fields.out.rope_parameters = { rope_type: 'default', rope_theta: theta };
  if (fields.has('rope_scaling')) fields.out.rope_scaling = scaling;
  return theta as number;
}

/** Defaults where MistralConfig differs from LlamaConfig. */
const LLAMA_DEFAULTS = {
  llama: { intermediateSize: 11008, numKeyValueHeads: null, maxPositions: 2048 },
  mistral: { intermediateSize: 14336, numKeyValueHeads: 8, maxPositions: 4096 * 32 },
} as const;

function readLlama(fields: FieldReader, modelType: 'llama' | 'mistral'): Omit<LlamaConfig, 'json'> {
  const defaults = LLAMA_DEFAULTS[modelType];
  const vocabSize = fields.int('vocab_size', 32000);
  const hiddenSize = fields.int('hidden_size', 4096);
  const intermediateSize = fields.int('intermediate_size', defaults.intermediateSize);
  const numLayers = fields.int('num_hidden_layers', 32);
  const numHeads = fields.int('num_attention_heads', 32);
  // Absent: the family's default; null: one key-value head per attention head.
  const kvDefault = fields.raw('num_key_value_heads') === null ? numHeads : (defaults.numKeyValueHeads ?? numHeads);
  const numKeyValueHeads = fields.int('num_key_value_heads', kvDefault, 1, true);
  const explicitHeadDim = fields.optionalInt('head_dim');
  if (explicitHeadDim === null && hiddenSize % numHeads !== 0) {
    fields.problem(
      'hidden_size',
      `(${hiddenSize}) must be divisible by num_attention_heads (${numHeads}) when head_dim is not given`,
    );
  }
  const headDim = explicitHeadDim ?? Math.max(1, Math.floor(hiddenSize / numHeads));
  fields.out.head_dim = headDim;
  if (headDim % 2 !== 0) fields.problem('head_dim', `(${headDim}) must be even for the rotary embedding`);
  if (numHeads % numKeyValueHeads !== 0) {
    fields.problem(
      'num_attention_heads',
      `(${numHeads}) must be a multiple of num_key_value_heads (${numKeyValueHeads})`,
    );
  }
  const activation = fields.choice('hidden_act', 'silu', LLAMA_ACTIVATIONS);
  const maxPositions = fields.int('max_position_embeddings', defaults.maxPositions);
  const rmsNormEps = fields.number('rms_norm_eps', 1e-6);
  const tieWordEmbeddings = fields.bool('tie_word_embeddings', false);
  const ropeTheta = readRope(fields);
  // pretraining_tp > 1 only splits the same matrix products into slices in transformers.
  fields.int('pretraining_tp', 1);
  let attentionBias = false;
  let mlpBias = false;
  if (modelType === 'llama') {
    attentionBias = fields.bool('attention_bias', false);
    mlpBias = fields.bool('mlp_bias', false);
  } else {
    // MistralConfig has neither field; a config that sets one is ambiguous.
    for (const key of ['attention_bias', 'mlp_bias']) {
      if (fields.has(key) && fields.raw(key) !== false)
        fields.problem(key, `is not a Mistral option (its projections have no biases)`);
    }
    const window = fields.has('sliding_window') ? fields.raw('sliding_window') : 4096;
    fields.out.sliding_window = window;
    if (window !== null && !(Number.isSafeInteger(window) && (window as number) >= maxPositions)) {
      fields.problem(
        'sliding_window',
        `${describeJson(window)} is not supported: sliding-window attention is not implemented ` +
          `(null, or a window >= max_position_embeddings (${maxPositions}), computes full causal attention)`,
      );
    }
  }
  return {
    modelType,
    vocabSize,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKeyValueHeads,
    headDim,
    activation,
    maxPositions,
    rmsNormEps,
    ropeTheta,
    attentionBias,
    mlpBias,
    tieWordEmbeddings,
    attentionScale: 1 / Math.sqrt(headDim),
  };
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null) {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}

/**
 * A typed, validated config from the parsed contents of a config.json. `source`
 * names the file in errors. Throws one error listing every problem.
 */
export function parseModelConfig(json: unknown, source = 'config.json'): ModelConfig {
  if (!isPlainObject(json))
    throw new Error(`${source}: a model config must be a JSON object, got ${describeJson(json)}`);
  const modelType = json.model_type;
  if (modelType !== 'gpt2' && modelType !== 'llama' && modelType !== 'mistral') {
    throw new Error(
      `${source}: model_type ${describeJson(modelType)} is not supported (supported: gpt2, llama, mistral)`,
    );
  }
  const out: Json = structuredClone(json);
  const fields = new FieldReader(json, out);
  const typed = modelType === 'gpt2' ? readGpt2(fields) : readLlama(fields, modelType);
  if (fields.problems.length > 0) {
    throw new Error(`${source}: unsupported or invalid ${modelType} config: ${fields.problems.join('; ')}`);
  }
  return deepFreeze({ ...typed, json: out } as ModelConfig);
}

/** Reads and parses a config.json file. */
export function readModelConfig(file: string): ModelConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read the model config ${file}: ${(err as Error).message}`, { cause: err });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new Error(`${file}: not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  return parseModelConfig(json, file);
}

/** config.json's text as transformers writes it (2-space indent, keys sorted, trailing newline). */
export function modelConfigToJson(config: ModelConfig): string {
  return `${JSON.stringify(sortKeys(config.json), null, 2)}\n`;
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (!isPlainObject(value)) return value;
  return Object.fromEntries(
    Object.keys(value)
      .sort()
      .map((key) => [key, sortKeys(value[key])]),
  );
}

/** The model's tensors in state-dict order, with Hugging Face's names and shapes. */
export function expectedParameters(config: ModelConfig): ParameterSpec[] {
  return config.modelType === 'gpt2' ? gpt2Parameters(config) : llamaParameters(config);
}

function gpt2Parameters(c: Gpt2Config): ParameterSpec[] {
  const d = c.hiddenSize;
  const out: ParameterSpec[] = [
    { name: 'transformer.wte.weight', shape: [c.vocabSize, d] },
    { name: 'transformer.wpe.weight', shape: [c.maxPositions, d] },
  ];
  for (let layer = 0; layer < c.numLayers; layer++) {
    const p = `transformer.h.${layer}`;
    // Conv1D stores its weight [in, out].
    out.push(
      { name: `${p}.ln_1.weight`, shape: [d] },
      { name: `${p}.ln_1.bias`, shape: [d] },
      { name: `${p}.attn.c_attn.weight`, shape: [d, 3 * d] },
      { name: `${p}.attn.c_attn.bias`, shape: [3 * d] },
      { name: `${p}.attn.c_proj.weight`, shape: [d, d] },
      { name: `${p}.attn.c_proj.bias`, shape: [d] },
      { name: `${p}.ln_2.weight`, shape: [d] },
      { name: `${p}.ln_2.bias`, shape: [d] },
      { name: `${p}.mlp.c_fc.weight`, shape: [d, c.intermediateSize] },
      { name: `${p}.mlp.c_fc.bias`, shape: [c.intermediateSize] },
      { name: `${p}.mlp.c_proj.weight`, shape: [c.intermediateSize, d] },
      { name: `${p}.mlp.c_proj.bias`, shape: [d] },
    );
  }
  out.push({ name: 'transformer.ln_f.weight', shape: [d] }, { name: 'transformer.ln_f.bias', shape: [d] });
  if (!c.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [c.vocabSize, d] });
  return out;
}

function llamaParameters(c: LlamaConfig): ParameterSpec[] {
  const d = c.hiddenSize;
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKeyValueHeads * c.headDim;
  const out: ParameterSpec[] = [{ name: 'model.embed_tokens.weight', shape: [c.vocabSize, d] }];
  // nn.Linear stores its weight [out, in].
  const linear = (name: string, outDim: number, inDim: number, bias: boolean) => {
    out.push({ name: `${name}.weight`, shape: [outDim, inDim] });
    if (bias) out.push({ name: `${name}.bias`, shape: [outDim] });
  };
  for (let layer = 0; layer < c.numLayers; layer++) {
    const p = `model.layers.${layer}`;
    linear(`${p}.self_attn.q_proj`, qDim, d, c.attentionBias);
    linear(`${p}.self_attn.k_proj`, kvDim, d, c.attentionBias);
    linear(`${p}.self_attn.v_proj`, kvDim, d, c.attentionBias);
    linear(`${p}.self_attn.o_proj`, d, qDim, c.attentionBias);
    linear(`${p}.mlp.gate_proj`, c.intermediateSize, d, c.mlpBias);
    linear(`${p}.mlp.up_proj`, c.intermediateSize, d, c.mlpBias);
    linear(`${p}.mlp.down_proj`, d, c.intermediateSize, c.mlpBias);
    out.push(
      { name: `${p}.input_layernorm.weight`, shape: [d] },
      { name: `${p}.post_attention_layernorm.weight`, shape: [d] },
    );
  }
  out.push({ name: 'model.norm.weight', shape: [d] });
  if (!c.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [c.vocabSize, d] });
  return out;
}
