/**
 * What GPT-2 and LLaMA language models share: the trunk ('transformer' or
 * 'model', token ids to final hidden states) plus lm_head, the forward pass
 * to logits, transformers' causal-LM loss, and save_pretrained. The families
 * (gpt2.ts, llama.ts) only build their trunks.
 *
 * GPT-2's Conv1D projections keep their weight [out, in] in memory like every
 * Linear (so adapters treat them alike); fromPretrained and savePretrained
 * transpose them from and to the checkpoint's [in, out]. stateDict() gives
 * the in-memory layout.
 */
import { type Input, reshape } from '../autograd/ops';
import { crossEntropy, split } from '../autograd/transformer';
import type { Var } from '../autograd/var';
import { AdapterLinear } from '../adapters/layer';
import {
  type GenerateOptions,
  type GenerateOutput,
  type GenerationStep,
  generate,
  generateStream,
} from '../generation/generate';
import type { WritableDtype } from '../io/safetensors';
import { Conv1D } from '../nn/layers';
import { Module } from '../nn/module';
import type { DeviceRequest } from '../tensor/device';
import type { Tensor } from '../tensor/tensor';
import { type TensorValues, writeCheckpoint } from './checkpoint';
import type { ModelConfig } from './config';
import { type ForwardOptions, IGNORE_INDEX, type TokenIds, readTokens, shiftedLabels } from './inputs';
import { ParameterBank, transposeMatrix } from './parameters';

/** How a model constructor makes its parameters: transformers' initialisation, on a device, seeded. */
export interface ModelOptions {
  device?: DeviceRequest;
  /** Seeds the initialisation (default: the global seed of nn.manualSeed). */
  seed?: number | bigint;
}

/** `config` if it is a parsed config of one of `modelTypes`; `what` names the constructor in errors. */
export function checkedConfig<C extends ModelConfig>(config: C, modelTypes: readonly string[], what: string): C {
  const type = (config as { modelType?: unknown } | null)?.modelType;
  if (config === null || typeof config !== 'object' || typeof type !== 'string' || !('json' in config)) {
    throw new Error(`${what} needs a config from tera.models.parseModelConfig or readModelConfig`);
  }
  if (!modelTypes.includes(type)) {
    throw new Error(`${what} needs a ${modelTypes.join(' or ')} config, got model_type '${type}'`);
  }
  return config;
}

/** The bank a model constructor builds from: the loader's, or one initialising as `options` say. */
export function bankFor(config: ModelConfig, options: ModelOptions | ParameterBank): ParameterBank {
  if (options instanceof ParameterBank) return options;
  if (options === null || typeof options !== 'object') throw new Error('model options must be an object');
  const unknown = Object.keys(options).filter((key) => key !== 'device' && key !== 'seed');
  if (unknown.length > 0) throw new Error(`model options: unknown option ${unknown.join(', ')}; options: device, seed`);
  return ParameterBank.initialised(config, options);
}

export interface LossOptions {
  /** 1 for a token, 0 for padding, [batch, tokens]; padded tokens are never attended to nor predicted by default. */
  attentionMask?: TokenIds | null;
  /** Each token's position, [batch, tokens] (see ForwardOptions). */
  positions?: TokenIds | null;
}

export interface SavePretrainedOptions {
  /** Largest shard in bytes or a size such as '5GB' / '500MiB' (default '5GB', as save_pretrained). */
  maxShardSize?: number | string;
  /** Stored dtype (default 'F32'); BF16 and F16 round to nearest even. */
  dtype?: WritableDtype;
}

/** The trunk of a language model: token ids in, final hidden states [batch, tokens, hidden] out. */
export interface Trunk extends Module {
  forward(ids: Input | TokenIds, options?: ForwardOptions): Var;
}

/** The parameters whose checkpoint layout is [in, out] (Conv1D weights). */
export function storedTransposedNames(model: Module): Set<string> {
  return new Set(
    model
      .namedModules()
      .filter(([, module]) => module instanceof Conv1D)
      .map(([name]) => `${name}.weight`),
  );
}

export abstract class CausalLM extends Module {
  readonly config: ModelConfig;
  /** The trunk's module name: 'transformer' (GPT-2) or 'model' (LLaMA). */
  abstract readonly trunkName: string;

  protected constructor(config: ModelConfig) {
    super();
    this.config = config;
  }

  override outputEmbeddingsName(): string {
    return 'lm_head';
  }

  /**
   * Logits [batch, tokens, vocab] for token ids [batch, tokens]. Every input
   * is checked first (ids inside the vocabulary, the length inside the model's
   * positions, mask and positions of the right shape and values); see
   * ForwardOptions for the mask, positions and the KV cache.
   */
  forward(ids: Input | TokenIds, options: ForwardOptions = {}): Var {
    const trunk = this.getSubmodule(this.trunkName) as Trunk;
    return this.getSubmodule('lm_head').forward(trunk.forward(ids, options));
  }

  /**
   * Logits [batch, vocab] of each row's last token only (transformers'
   * logits_to_keep=1): what generation chooses the next token from, without
   * running lm_head over the whole prompt. Options as forward().
   */
  lastTokenLogits(ids: Input | TokenIds, options: ForwardOptions = {}): Var {
    const trunk = this.getSubmodule(this.trunkName) as Trunk;
    const hidden = trunk.forward(ids, options);
    const [batch, tokens, width] = hidden.shape;
    const last = tokens === 1 ? hidden : split(hidden, [tokens - 1, 1], 1)[1];
    return this.getSubmodule('lm_head').forward(reshape(last, [batch, width]));
  }

  /**
   * Generates up to options.maxNewTokens tokens after each row of `ids`: greedy
   * at temperature 0, else sampled (topK, topP, seed), with a KV cache, left
   * padding through options.attentionMask, stopping at eos_token_id. See
   * generation/generate.ts and docs/language-models.md.
   */
  generate(ids: TokenIds, options: GenerateOptions): GenerateOutput {
    return generate(this, ids, options);
  }

  /** generate() as an async iterator of steps, one per new token: `for await (const step of model.generateStream(...))`. */
  generateStream(ids: TokenIds, options: GenerateOptions): AsyncGenerator<GenerationStep, GenerateOutput, undefined> {
    return generateStream(this, ids, options);
  }

  /**
   * transformers' causal-LM loss: the mean cross-entropy of the logits at
   * token t against labels[t + 1], leaving out labels of -100. `labels`
   * [batch, tokens] defaults to the ids themselves with padding (mask 0) left
   * out. A batch with nothing to predict is refused.
   */
  loss(ids: Input | TokenIds, labels?: TokenIds | null, options: LossOptions = {}): Var {
    if (options === null || typeof options !== 'object') throw new Error('loss: options must be an object');
    if ('cache' in options) throw new Error('loss: a KV cache is for generation, not for the loss');
    const batch = readTokens(this.config, ids, options, 'loss');
    const targets = shiftedLabels(this.config, batch, labels, 'loss');
    const logits = this.forward(ids, options);
    const vocab = this.config.vocabSize;
    return crossEntropy(reshape(logits, [batch.batch * batch.tokens, vocab]), targets, { ignoreIndex: IGNORE_INDEX });
  }

  /**
   * Writes config.json and the weights in transformers' layout (model.safetensors,
   * or shards with model.safetensors.index.json past maxShardSize), replacing a
   * checkpoint in `folder` in one step and keeping its other files (a
   * tokenizer). A model with adapters is refused: save them with saveAdapter,
   * or merge them in first with mergeAndUnload().
   */
  savePretrained(folder: string, options: SavePretrainedOptions = {}): { files: string[]; totalSize: number } {
    const adapted = this.namedModules()
      .filter(([, module]) => module instanceof AdapterLinear)
      .map(([name]) => name);
    if (adapted.length > 0) {
      throw new Error(
        `savePretrained: the model has adapters on ${adapted.join(', ')}: save them with saveAdapter(), ` +
          'or merge them into the weights first with mergeAndUnload()',
      );
    }
    const transposed = storedTransposedNames(this);
    const tensors = new Map<string, Tensor | TensorValues>();
    for (const [name, p] of this.namedParameters()) {
      if (!transposed.has(name)) {
        tensors.set(name, p.data);
        continue;
      }
      const [rows, cols] = p.shape;
      tensors.set(name, { shape: [cols, rows], values: () => transposeMatrix(p.data.toFloat32Array(), rows, cols) });
    }
    return writeCheckpoint(folder, this.config, tensors, options);
  }
}
