/**
 * LLaMA-style decoders as transformers' LlamaForCausalLM (also Mistral
 * without a sliding window): a LlamaModel trunk ('model': embed_tokens,
 * layers.N, norm) and lm_head, untied unless the config ties it. Rotary
 * positions (rope_theta from either config form) and grouped-query attention
 * live in LlamaAttention. Parameter names are transformers'.
 */
import type { Input } from '../autograd/ops';
import type { Var } from '../autograd/var';
import { LlamaDecoderLayer } from '../nn/blocks';
import { Embedding } from '../nn/embedding';
import { type ParameterFactory, childFactory } from '../nn/init';
import { Linear, ModuleList } from '../nn/layers';
import { Module } from '../nn/module';
import { RMSNorm } from '../nn/norm';
import { CausalLM, type ModelOptions, bankFor, checkedConfig } from './causal-lm';
import type { LlamaConfig } from './config';
import { type ForwardOptions, type TokenIds, readTokens } from './inputs';
import { type ParameterBank, buildWith, tiedFactory } from './parameters';

/** transformers' LlamaModel: hidden states of token ids. */
export class LlamaModel extends Module {
  readonly config: LlamaConfig;

  /** @param init makes the parameters by their names below this module ('embed_tokens.weight', ...). */
  constructor(config: LlamaConfig, init: ParameterFactory) {
    super();
    this.config = config;
    const d = config.hiddenSize;
    this.registerModule(
      'embed_tokens',
      new Embedding(config.vocabSize, d, { init: childFactory(init, 'embed_tokens') }),
    );
    const layers = Array.from(
      { length: config.numLayers },
      (_, i) => new LlamaDecoderLayer(config, i, { init: childFactory(init, `layers.${i}`) }),
    );
    this.registerModule('layers', new ModuleList(layers));
    this.registerModule('norm', new RMSNorm(d, { eps: config.rmsNormEps, init: childFactory(init, 'norm') }));
  }

  /** Final hidden states [batch, tokens, hidden] (after norm) of token ids [batch, tokens]. */
  forward(ids: Input | TokenIds, options: ForwardOptions = {}): Var {
    const { batch, tokens, ids: checked, context } = readTokens(this.config, ids, options, 'LlamaModel');
    let h = (this.getSubmodule('embed_tokens') as Embedding).forward(checked, [batch, tokens]);
    const layers = this.getSubmodule('layers') as ModuleList;
    for (let i = 0; i < layers.length; i++) h = (layers.at(i) as LlamaDecoderLayer).forward(h, context);
    return this.getSubmodule('norm').forward(h);
  }
}

/** transformers' LlamaForCausalLM: LlamaModel ('model') and lm_head. */
export class LlamaForCausalLM extends CausalLM {
  declare readonly config: LlamaConfig;
  readonly trunkName = 'model';

  constructor(config: LlamaConfig, options: ModelOptions | ParameterBank = {}) {
    super(checkedConfig(config, ['llama', 'mistral'], 'LlamaForCausalLM'));
    buildWith(bankFor(config, options), (init) => {
      const trunk = this.registerModule('model', new LlamaModel(config, childFactory(init, 'model')!));
      const table = (trunk.getSubmodule('embed_tokens') as Embedding).weight;
      const head = config.tieWordEmbeddings ? tiedFactory(table) : childFactory(init, 'lm_head');
      this.registerModule('lm_head', new Linear(config.hiddenSize, config.vocabSize, { bias: false, init: head }));
    });
  }

  get model(): LlamaModel {
    return this.getSubmodule('model') as LlamaModel;
  }
}
