/**
 * LoRA (Hu et al.), as in PEFT: dW = s B A with A [r, in] and B [out, r], both
 * trainable, s = alpha / r (alpha / sqrt(r) with use_rslora), and r and alpha
 * per module from rank_pattern / alpha_pattern (PEFT's get_pattern_key).
 */
import { configClass } from '../config';
import { type OptionalField, checkBoolean, checkFinite, checkInteger, checkSeed } from '../fields';
import { FAN_IN_FAN_OUT, checkProbability, dropoutProblem, inert, only } from '../peft-fields';
import { type PatternValues, checkPatternValues, lookupPattern } from '../patterns';

/** init_lora_weights values PEFT has; the first three are implemented here. */
export type LoraInit = true | false | 'gaussian' | 'eva' | 'orthogonal';

const IMPLEMENTED_INITS: readonly unknown[] = [true, false, 'gaussian'];
const LOAD_ONLY_INITS: readonly unknown[] = ['eva', 'orthogonal'];

function checkInit(value: unknown, what: string): LoraInit {
  if (IMPLEMENTED_INITS.includes(value) || LOAD_ONLY_INITS.includes(value)) return value as LoraInit;
  if (typeof value === 'string' && /^(pissa|olora|corda|loftq)/.test(value)) {
    throw new Error(
      `${what} is '${value}': that initialisation changes the base weights, so the adapter does not apply ` +
        "to the original base model; convert it with PEFT's path_initial_model_for_weight_conversion first",
    );
  }
  throw new Error(`${what} must be true, false, 'gaussian', 'eva' or 'orthogonal', got ${JSON.stringify(value)}`);
}

const LORA_FIELDS = {
  r: {
    json: 'r',
    default: 8,
    help: 'the rank (as PEFT)',
    check: (value, what) => checkInteger(value, what, 1),
  } satisfies OptionalField<number>,
  alpha: {
    json: 'lora_alpha',
    default: 8,
    help: "the scaling numerator (PEFT's lora_alpha)",
    check: checkFinite,
  } satisfies OptionalField<number>,
  useRslora: {
    json: 'use_rslora',
    default: false,
    help: 'scale by alpha / sqrt(r) instead of alpha / r (rank-stabilised LoRA)',
    check: checkBoolean,
  } satisfies OptionalField<boolean>,
  rankPattern: {
    json: 'rank_pattern',
    default: {},
    help: 'per-module ranks: {pattern: r}, the first pattern naming a module wins',
    check: (value, what) => checkPatternValues(value, what, (v, w) => checkInteger(v, w, 1)),
    toJson: (value) => ({ ...value }),
  } satisfies OptionalField<PatternValues>,
  alphaPattern: {
    json: 'alpha_pattern',
    default: {},
    help: 'per-module alphas: {pattern: alpha}, likewise',
    check: (value, what) => checkPatternValues(value, what, checkFinite),
    toJson: (value) => ({ ...value }),
  } satisfies OptionalField<PatternValues>,
  dropout: {
    json: 'lora_dropout',
    default: 0,
    help: 'dropout on the adapter input; only 0 can be made or trained here (files with more load for inference)',
    check: checkProbability,
    forTraining: dropoutProblem,
  } satisfies OptionalField<number>,
  initLoraWeights: {
    json: 'init_lora_weights',
    default: true as LoraInit,
    help:
      "true: A Kaiming-uniform, B = 0 (PEFT's default); false: A and B random; 'gaussian': A ~ N(0, 1/r^2), B = 0 " +
      "('eva' and 'orthogonal' are accepted in loaded files only)",
    check: checkInit,
    forInjection: (value) =>
      LOAD_ONLY_INITS.includes(value) ? `'${value}' initialisation is not implemented (files with it load)` : null,
  } satisfies OptionalField<LoraInit>,
  seed: {
    json: null,
    default: 0,
    help: 'seeds the random initialisation (not stored: a saved adapter holds A and B themselves)',
    check: checkSeed,
  } satisfies OptionalField<number>,
};

const PEFT_ONLY = {
  fan_in_fan_out: FAN_IN_FAN_OUT,
  bias: only(['none'], 'training biases (all / lora_only) is not implemented', true),
  modules_to_save: only([null, []], 'whole trained modules are not stored or loaded'),
  layers_to_transform: only([null], 'select layers with target_modules instead'),
  layers_pattern: only([null, []], 'select layers with target_modules instead'),
  use_dora: only([false], 'DoRA is not implemented'),
  lora_bias: only([false], "a bias on LoRA's B is not implemented"),
  layer_replication: only([null], 'layer replication changes the model, which tera-peft does not do'),
  trainable_token_indices: only([null], 'trainable tokens are not implemented'),
  target_parameters: only([null, []], 'adapting bare parameters is not implemented'),
  use_qalora: only([false], 'QA-LoRA is not implemented'),
  alora_invocation_tokens: only([null], 'activated LoRA is not implemented'),
  arrow_config: only([null], 'Arrow routing is not implemented'),
  megatron_config: only([null], 'Megatron parallel layers are not implemented'),
  loftq_config: only([{}, null], 'LoftQ is not implemented'),
  megatron_core: inert('used only with megatron_config'),
  qalora_group_size: inert('used only with use_qalora'),
  eva_config: inert("used only to initialise ('eva'), which a loaded file does not need"),
  corda_config: inert('used only to initialise'),
  ensure_weight_tying: inert('used only with modules_to_save / trainable tokens'),
  runtime_config: inert('runtime settings, which PEFT itself does not read from files'),
};

export class LoraConfig extends configClass('LORA', 'LoraConfig', LORA_FIELDS, { peftOnly: PEFT_ONLY }) {
  /** The rank of `moduleName`: rank_pattern's first matching key, else r. */
  rankOf(moduleName: string): number {
    return lookupPattern(this.rankPattern, moduleName) ?? this.r;
  }

  /** The alpha of `moduleName`: alpha_pattern's first matching key, else alpha. */
  alphaOf(moduleName: string): number {
    return lookupPattern(this.alphaPattern, moduleName) ?? this.alpha;
  }

  /** The factor s applied to B A on `moduleName`: alpha / r, or alpha / sqrt(r) with useRslora. */
  scalingOf(moduleName: string): number {
    const r = this.rankOf(moduleName);
    return this.alphaOf(moduleName) / (this.useRslora ? Math.sqrt(r) : r);
  }
}

export type LoraConfigOptions = ConstructorParameters<typeof LoraConfig>[0];
