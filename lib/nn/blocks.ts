/**
 * The transformer blocks of GPT-2 and LLaMA with transformers' parameter
 * names: GPT2MLP (c_fc, gelu_new, c_proj), GPT2Block (ln_1, attn, ln_2, mlp),
 * LlamaMLP (SwiGLU: down_proj(silu(gate_proj x) * up_proj x)) and
 * LlamaDecoderLayer (input_layernorm, self_attn, post_attention_layernorm,
 * mlp). Both blocks are pre-norm with residual additions. Children are looked
 * up by name at every call, so adapters injected in their place take effect.
 */
import { type Input, add, mul } from '../autograd/ops';
import { geluTanh, silu } from '../autograd/ops';
import type { Var } from '../autograd/var';
import type { DeviceRequest } from '../tensor/device';
import {
  type AttentionContext,
  Gpt2Attention,
  type Gpt2AttentionConfig,
  LlamaAttention,
  type LlamaAttentionConfig,
} from './attention';
import { type ParameterFactory, childFactory } from './init';
import { Conv1D, Linear } from './layers';
import { Module } from './module';
import { LayerNorm, RMSNorm } from './norm';

export interface BlockOptions {
  device?: DeviceRequest;
  /** Makes the block's parameters (by their names below it, 'mlp.c_fc.weight') instead of initialising them. */
  init?: ParameterFactory;
}

export interface Gpt2BlockConfig extends Gpt2AttentionConfig {
  readonly intermediateSize: number;
  readonly layerNormEps: number;
}

/** c_fc (Conv1D d -> inner), GELU in its tanh form, c_proj (Conv1D inner -> d). */
export class Gpt2MLP extends Module {
  constructor(hiddenSize: number, intermediateSize: number, options: BlockOptions = {}) {
    super();
    const { device, init } = options;
    this.registerModule('c_fc', new Conv1D(hiddenSize, intermediateSize, { device, init: childFactory(init, 'c_fc') }));
    this.registerModule(
      'c_proj',
      new Conv1D(intermediateSize, hiddenSize, { device, init: childFactory(init, 'c_proj') }),
    );
  }

  forward(input: Input): Var {
    return this.getSubmodule('c_proj').forward(geluTanh(this.getSubmodule('c_fc').forward(input)));
  }
}

/** h + attn(ln_1 h), then h + mlp(ln_2 h). */
export class Gpt2Block extends Module {
  constructor(config: Gpt2BlockConfig, layerIndex: number, options: BlockOptions = {}) {
    super();
    const { device, init } = options;
    const eps = config.layerNormEps;
    const d = config.hiddenSize;
    this.registerModule('ln_1', new LayerNorm(d, { eps, device, init: childFactory(init, 'ln_1') }));
    this.registerModule('attn', new Gpt2Attention(config, layerIndex, { device, init: childFactory(init, 'attn') }));
    this.registerModule('ln_2', new LayerNorm(d, { eps, device, init: childFactory(init, 'ln_2') }));
    this.registerModule('mlp', new Gpt2MLP(d, config.intermediateSize, { device, init: childFactory(init, 'mlp') }));
  }

  forward(input: Input, context?: AttentionContext): Var {
    const attn = this.getSubmodule('attn') as Gpt2Attention;
    const h = add(input, attn.forward(this.getSubmodule('ln_1').forward(input), context));
    return add(h, this.getSubmodule('mlp').forward(this.getSubmodule('ln_2').forward(h)));
  }
}

export interface LlamaBlockConfig extends LlamaAttentionConfig {
  readonly intermediateSize: number;
  readonly rmsNormEps: number;
  readonly mlpBias: boolean;
}

/** SwiGLU: down_proj(silu(gate_proj x) * up_proj x). */
export class LlamaMLP extends Module {
  constructor(hiddenSize: number, intermediateSize: number, bias: boolean, options: BlockOptions = {}) {
    super();
    const { device, init } = options;
    const projection = (name: string, inF: number, outF: number) =>
      this.registerModule(name, new Linear(inF, outF, { bias, device, init: childFactory(init, name) }));
    projection('gate_proj', hiddenSize, intermediateSize);
    projection('up_proj', hiddenSize, intermediateSize);
    projection('down_proj', intermediateSize, hiddenSize);
  }

  forward(input: Input): Var {
    const gate = silu(this.getSubmodule('gate_proj').forward(input));
    return this.getSubmodule('down_proj').forward(mul(gate, this.getSubmodule('up_proj').forward(input)));
  }
}

/** h + self_attn(input_layernorm h), then h + mlp(post_attention_layernorm h). */
export class LlamaDecoderLayer extends Module {
  constructor(config: LlamaBlockConfig, layerIndex: number, options: BlockOptions = {}) {
    super();
    const { device, init } = options;
    const eps = config.rmsNormEps;
    const d = config.hiddenSize;
    const child = (name: string) => ({ device, init: childFactory(init, name) });
    this.registerModule('self_attn', new LlamaAttention(config, layerIndex, child('self_attn')));
    this.registerModule('mlp', new LlamaMLP(d, config.intermediateSize, config.mlpBias, child('mlp')));
    this.registerModule('input_layernorm', new RMSNorm(d, { eps, ...child('input_layernorm') }));
    this.registerModule('post_attention_layernorm', new RMSNorm(d, { eps, ...child('post_attention_layernorm') }));
  }

  forward(input: Input, context?: AttentionContext): Var {
    const attn = this.getSubmodule('self_attn') as LlamaAttention;
    const h = add(input, attn.forward(this.getSubmodule('input_layernorm').forward(input), context));
    return add(h, this.getSubmodule('mlp').forward(this.getSubmodule('post_attention_layernorm').forward(h)));
  }
}
