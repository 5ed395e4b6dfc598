/**
 * Causal self-attention of decoder-only language models, with the parameter
 * names of transformers: GPT-2's GPT2Attention (one fused projection c_attn to
 * q, k and v, then c_proj) and LLaMA's LlamaAttention (q_proj, k_proj, v_proj,
 * o_proj, rotary positions, grouped-query heads). Both run one core (attend):
 * heads split out to [batch, heads, tokens, headDim], the KV cache if any, the
 * native attention op, heads merged back.
 *
 * KV cache hook: a forward pass may carry a KeyValueCache (as transformers'
 * past_key_values). Each attention layer hands the cache its keys and values
 * for the new tokens and attends over what the cache returns: every token so
 * far. The new queries sit at offset cache.length among those keys (the
 * causal mask counts from there), their positions continue from it, and the
 * keep-mask covers the cached tokens and the new ones. The cache decides how it
 * stores them (concatenation, or preallocated buffers written in place whose
 * unwritten tail the causal mask gives zero weight); see docs/language-models.md.
 *
 * Projections are looked up by name at every call (not held in fields), so
 * adapters injected in their place (AdapterLinear) take effect.
 */
import { type Input, reshape } from '../autograd/ops';
import { type IntegerInput, attention, permute, rope, split } from '../autograd/transformer';
import type { Var } from '../autograd/var';
import { formatShape } from '../shape';
import type { DeviceRequest } from '../tensor/device';
import { type ParameterFactory, childFactory } from './init';
import { Conv1D, Linear } from './layers';
import { Module } from './module';

/** Past keys and values of every attention layer, for decoding one step at a time. */
export interface KeyValueCache {
  /** How many tokens the cache holds before this forward pass: the new queries' offset. */
  readonly length: number;
  /**
   * Stores layer `layer`'s keys and values of the new tokens, each [batch,
   * kvHeads, tokens, headDim], and returns the keys and values of all tokens:
   * [batch, kvHeads, keyLength, headDim] with the first length + tokens
   * positions filled (a longer, finite tail gets zero weight). What it returns
   * stays the cache's.
   */
  update(layer: number, keys: Var, values: Var): { keys: Input; values: Input };
}

/** What every attention layer of one forward pass needs besides its input. */
export interface AttentionContext {
  /** Positions of the new tokens, [batch, tokens] row-major: RoPE's angles (LLaMA). */
  readonly positions: IntegerInput;
  /**
   * 1 for a token, 0 for padding, over the cached and the new tokens: [batch,
   * cache length + tokens] row-major; null when every key is a token.
   */
  readonly keyMask: Int32Array | null;
  readonly cache: KeyValueCache | null;
}

/** Positions 0..tokens-1 in every row, no padding, no cache: a plain causal pass. */
export function plainContext(batch: number, tokens: number): AttentionContext {
  const positions = new Int32Array(batch * tokens);
  for (let i = 0; i < positions.length; i++) positions[i] = i % tokens;
  return { positions, keyMask: null, cache: null };
}

/** [batch, tokens, heads * headDim] -> [batch, heads, tokens, headDim]. */
function splitHeads(x: Var, heads: number): Var {
  const [batch, tokens, width] = x.shape;
  return permute(reshape(x, [batch, tokens, heads, width / heads]), [0, 2, 1, 3]);
}

/** [batch, heads, tokens, headDim] -> [batch, tokens, heads * headDim]. */
function mergeHeads(x: Var): Var {
  const [batch, heads, tokens, headDim] = x.shape;
  return reshape(permute(x, [0, 2, 1, 3]), [batch, tokens, heads * headDim]);
}

/** `mask` [batch, known] widened to [batch, keyLength] with zeros (a cache's unwritten tail). */
function widenMask(mask: Int32Array, batch: number, keyLength: number): Int32Array {
  const known = mask.length / batch;
  if (known === keyLength) return mask;
  const out = new Int32Array(batch * keyLength);
  for (let b = 0; b < batch; b++) out.set(mask.subarray(b * known, (b + 1) * known), b * keyLength);
  return out;
}

/** Causal attention of q [B, H, T, D] over k, v [B, Hkv, T, D] (and the cache's), merged to [B, T, H * D]. */
function attend(q: Var, k: Var, v: Var, context: AttentionContext, layer: number, scale: number): Var {
  const { cache } = context;
  let keys: Input = k;
  let values: Input = v;
  const offset = cache?.length ?? 0;
  if (cache !== null) ({ keys, values } = cache.update(layer, k, v));
  const [batch, , keyLength] = keys.shape;
  const tokens = q.shape[2];
  if (!(keyLength >= offset + tokens)) {
    throw new Error(
      `attention layer ${layer}: the cache returned ${keyLength} keys for ${offset} cached and ${tokens} new tokens`,
    );
  }
  let keyMask: Int32Array | undefined;
  if (context.keyMask !== null) {
    if (context.keyMask.length !== batch * (offset + tokens)) {
      throw new Error(
        `attention layer ${layer}: the key mask has ${context.keyMask.length} entries, expected ${batch} x ${offset + tokens}`,
      );
    }
    keyMask = widenMask(context.keyMask, batch, keyLength);
  }
  return mergeHeads(attention(q, keys, values, { causal: true, keyMask, queryOffset: offset, scale }));
}

export interface AttentionModuleOptions {
  device?: DeviceRequest;
  /** Makes the projections' parameters ('c_attn.weight', 'q_proj.weight', ...) instead of initialising them. */
  init?: ParameterFactory;
}

export interface Gpt2AttentionConfig {
  readonly hiddenSize: number;
  readonly numHeads: number;
  /** Multiplies q·k: 1 / sqrt(headDim), or 1 without scale_attn_weights. */
  readonly attentionScale: number;
}

function checkHeads(what: string, width: number, heads: number): void {
  if (!Number.isInteger(heads) || heads < 1 || width % heads !== 0) {
    throw new Error(`${what}: ${width} features do not split into ${heads} heads`);
  }
}

function checkInput(what: string, x: Input, width: number): void {
  if (x.shape.length !== 3 || x.shape[2] !== width) {
    throw new Error(`${what}: input must be [batch, tokens, ${width}], got ${formatShape(x.shape)}`);
  }
}

/** transformers' GPT2Attention: c_attn (Conv1D d -> 3d) gives q, k and v, then c_proj (Conv1D d -> d). */
export class Gpt2Attention extends Module {
  readonly config: Gpt2AttentionConfig;
  readonly layerIndex: number;

  constructor(config: Gpt2AttentionConfig, layerIndex: number, options: AttentionModuleOptions = {}) {
    super();
    checkHeads('Gpt2Attention', config.hiddenSize, config.numHeads);
    this.config = config;
    this.layerIndex = layerIndex;
    const d = config.hiddenSize;
    const { device, init } = options;
    this.registerModule('c_attn', new Conv1D(d, 3 * d, { device, init: childFactory(init, 'c_attn') }));
    this.registerModule('c_proj', new Conv1D(d, d, { device, init: childFactory(init, 'c_proj') }));
  }

  forward(input: Input, context?: AttentionContext): Var {
    const { hiddenSize: d, numHeads: heads, attentionScale } = this.config;
    checkInput('Gpt2Attention', input, d);
    const [batch, tokens] = input.shape;
    const qkv = this.getSubmodule('c_attn').forward(input);
    // [B, T, 3, H, D] -> [3, B, H, T, D]: q, k and v with their heads split out, in one copy.
    const parts = permute(reshape(qkv, [batch, tokens, 3, heads, d / heads]), [2, 0, 3, 1, 4]);
    const [q, k, v] = split(parts, [1, 1, 1], 0).map((part) => reshape(part, [batch, heads, tokens, d / heads]));
    const merged = attend(q, k, v, context ?? plainContext(batch, tokens), this.layerIndex, attentionScale);
    return this.getSubmodule('c_proj').forward(merged);
  }
}

export interface LlamaAttentionConfig {
  readonly hiddenSize: number;
  readonly numHeads: number;
  readonly numKeyValueHeads: number;
  readonly headDim: number;
  readonly ropeTheta: number;
  readonly attentionBias: boolean;
  readonly attentionScale: number;
}

/** transformers' LlamaAttention: q/k/v projections, RoPE on q and k, grouped-query attention, o_proj. */
export class LlamaAttention extends Module {
  readonly config: LlamaAttentionConfig;
  readonly layerIndex: number;

  constructor(config: LlamaAttentionConfig, layerIndex: number, options: AttentionModuleOptions = {}) {
    super();
    const { hiddenSize: d, numHeads: heads, numKeyValueHeads: kvHeads, headDim } = config;
    if (!Number.isInteger(kvHeads) || kvHeads < 1 || heads % kvHeads !== 0) {
      throw new Error(`LlamaAttention: ${heads} query heads cannot share ${kvHeads} key-value heads`);
    }
    this.config = config;
    this.layerIndex = layerIndex;
    const { device, init } = options;
    const bias = config.attentionBias;
    const projection = (name: string, inF: number, outF: number) =>
      this.registerModule(name, new Linear(inF, outF, { bias, device, init: childFactory(init, name) }));
    projection('q_proj', d, heads * headDim);
    projection('k_proj', d, kvHeads * headDim);
    projection('v_proj', d, kvHeads * headDim);
    projection('o_proj', heads * headDim, d);
  }

  forward(input: Input, context?: AttentionContext): Var {
    const { numHeads: heads, numKeyValueHeads: kvHeads, ropeTheta: theta, attentionScale } = this.config;
    checkInput('LlamaAttention', input, this.config.hiddenSize);
    const [batch, tokens] = input.shape;
    const ctx = context ?? plainContext(batch, tokens);
    const project = (name: string, count: number) => splitHeads(this.getSubmodule(name).forward(input), count);
    const q = rope(project('q_proj', heads), ctx.positions, { theta });
    const k = rope(project('k_proj', kvHeads), ctx.positions, { theta });
    const merged = attend(q, k, project('v_proj', kvHeads), ctx, this.layerIndex, attentionScale);
    return this.getSubmodule('o_proj').forward(merged);
  }
}
