/**
 * LoRA (Hu et al.), as in PEFT: dW = (alpha / r) B A with A [r, in]
 * Kaiming-uniform and B [out, r] zero, both trainable.
 */
import {
  AdapterConfig,
  type JsonObject,
  type TargetOptions,
  checkFinite,
  checkInteger,
  checkSeed,
  field,
  targetsFromJson,
} from '../config';

export interface LoraConfigOptions extends TargetOptions {
  /** The rank (default 8, as PEFT). */
  r?: number;
  /** The scaling numerator: dW is multiplied by alpha / r (default 8, as PEFT's lora_alpha). */
  alpha?: number;
  /** Seeds the Kaiming-uniform initialisation of A (default 0). */
  seed?: number;
}

export class LoraConfig extends AdapterConfig {
  readonly peftType = 'LORA' as const;
  readonly r: number;
  readonly alpha: number;
  readonly seed: number;

  constructor(options: LoraConfigOptions) {
    super(options, 'LoraConfig');
    this.r = checkInteger(options.r ?? 8, 'LoraConfig: r', 1);
    this.alpha = checkFinite(options.alpha ?? 8, 'LoraConfig: alpha');
    this.seed = checkSeed(options.seed ?? 0, 'LoraConfig: seed');
  }

  /** The factor alpha / r applied to B A. */
  get scaling(): number {
    return this.alpha / this.r;
  }

  protected methodJson(): JsonObject {
    return {
      r: this.r,
      lora_alpha: this.alpha,
      lora_dropout: 0,
      bias: 'none',
      fan_in_fan_out: false,
      init_lora_weights: true,
      use_rslora: false,
      seed: this.seed,
    };
  }

  static fromJson(json: JsonObject): LoraConfig {
    return new LoraConfig({
      ...targetsFromJson(json),
      r: field(json, 'r', 8),
      alpha: field(json, 'lora_alpha', 8),
      seed: field(json, 'seed', 0),
    });
  }
}
