/**
 * GPT-2 as transformers' GPT2LMHeadModel: a GPT2Model trunk ('transformer':
 * wte, wpe, h.N blocks, ln_f) and lm_head, tied to wte unless the config
 * unties them. Parameter names are transformers' (from expectedParameters).
 */
import { type Input, add } from '../autograd/ops';
import type { Var } from '../autograd/var';
import { Gpt2Block } from '../nn/blocks';
import { Embedding } from '../nn/embedding';
import { type ParameterFactory, childFactory } from '../nn/init';
import { Linear, ModuleList } from '../nn/layers';
import { Module } from '../nn/module';
import { LayerNorm } from '../nn/norm';
import { CausalLM, type ModelOptions, bankFor, checkedConfig } from './causal-lm';
import type { Gpt2Config } from './config';
import { type ForwardOptions, type TokenIds, readTokens } from './inputs';
import { type ParameterBank, buildWith, tiedFactory } from './parameters';

/** transformers' GPT2Model: hidden states of token ids. */
export class GPT2Model extends Module {
  readonly config: Gpt2Config;

  /** @param init makes the parameters by their names below this module ('wte.weight', 'h.0.ln_1.bias', ...). */
  constructor(config: Gpt2Config, init: ParameterFactory) {
    super();
    this.config = config;
    const d = config.hiddenSize;
    this.registerModule('wte', new Embedding(config.vocabSize, d, { init: childFactory(init, 'wte') }));
    this.registerModule('wpe', new Embedding(config.maxPositions, d, { init: childFactory(init, 'wpe') }));
    const blocks = Array.from(
      { length: config.numLayers },
      (_, i) => new Gpt2Block(config, i, { init: childFactory(init, `h.${i}`) }),
    );
    this.registerModule('h', new ModuleList(blocks));
    this.registerModule('ln_f', new LayerNorm(d, { eps: config.layerNormEps, init: childFactory(init, 'ln_f') }));
  }

  /** Final hidden states [batch, tokens, hidden] (after ln_f) of token ids [batch, tokens]. */
  forward(ids: Input | TokenIds, options: ForwardOptions = {}): Var {
    const { batch, tokens, ids: checked, context } = readTokens(this.config, ids, options, 'GPT2Model');
    const shape = [batch, tokens];
    let h = add(
      (this.getSubmodule('wte') as Embedding).forward(checked, shape),
      (this.getSubmodule('wpe') as Embedding).forward(context.positions, shape),
    );
    const blocks = this.getSubmodule('h') as ModuleList;
    for (let i = 0; i < blocks.length; i++) h = (blocks.at(i) as Gpt2Block).forward(h, context);
    return this.getSubmodule('ln_f').forward(h);
  }
}

/** transformers' GPT2LMHeadModel: GPT2Model ('transformer') and lm_head (tied to wte unless the config unties them). */
export class GPT2LMHeadModel extends CausalLM {
  declare readonly config: Gpt2Config;
  readonly trunkName = 'transformer';

  constructor(config: Gpt2Config, options: ModelOptions | ParameterBank = {}) {
    super(checkedConfig(config, ['gpt2'], 'GPT2LMHeadModel'));
    buildWith(bankFor(config, options), (init) => {
      const trunk = this.registerModule('transformer', new GPT2Model(config, childFactory(init, 'transformer')!));
      const wte = (trunk.getSubmodule('wte') as Embedding).weight;
      const head = config.tieWordEmbeddings ? tiedFactory(wte) : childFactory(init, 'lm_head');
      this.registerModule('lm_head', new Linear(config.hiddenSize, config.vocabSize, { bias: false, init: head }));
    });
  }

  get transformer(): GPT2Model {
    return this.getSubmodule('transformer') as GPT2Model;
  }
}
