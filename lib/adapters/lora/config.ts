/**
 * LoRA (Hu et al.), as in PEFT: dW = (alpha / r) B A with A [r, in]
 * Kaiming-uniform and B [out, r] zero, both trainable.
 */
import { configClass } from '../config';
import { type OptionalField, checkFinite, checkInteger, checkSeed } from '../fields';

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
    help: "the scaling numerator: dW is multiplied by alpha / r (PEFT's lora_alpha)",
    check: checkFinite,
  } satisfies OptionalField<number>,
  seed: {
    json: 'seed',
    default: 0,
    help: 'seeds the Kaiming-uniform initialisation of A',
    check: checkSeed,
  } satisfies OptionalField<number>,
};

/** What PEFT's loader expects besides our fields: the only values we implement. */
const PEFT_CONSTANTS = {
  lora_dropout: 0,
  bias: 'none',
  fan_in_fan_out: false,
  init_lora_weights: true,
  use_rslora: false,
};

export class LoraConfig extends configClass('LORA', 'LoraConfig', LORA_FIELDS, PEFT_CONSTANTS) {
  /** The factor alpha / r applied to B A. */
  get scaling(): number {
    return this.alpha / this.r;
  }
}

export type LoraConfigOptions = ConstructorParameters<typeof LoraConfig>[0];
