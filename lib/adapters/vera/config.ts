/**
 * VeRA (Kopiczko et al.), as in PEFT: dW = diag(lambda_b) B diag(lambda_d) A
 * with A [r, in] and B [out, r] frozen, random, shared by all adapted layers;
 * only lambda_b [out] (init 0) and lambda_d [r] (init dInitial) train.
 */
import {
  AdapterConfig,
  type JsonObject,
  type TargetOptions,
  checkBoolean,
  checkFinite,
  checkInteger,
  checkSeed,
  field,
  targetsFromJson,
} from '../config';

export interface VeraConfigOptions extends TargetOptions {
  /** The rank of the shared projections (default 256, as PEFT). */
  r?: number;
  /** The initial value of every lambda_d entry (default 0.1, PEFT's d_initial). */
  dInitial?: number;
  /** Seeds the shared projections (PEFT's projection_prng_key; default 0). */
  seed?: number;
  /**
   * Store the shared A and B in the adapter file (default false). PEFT defaults
   * to true because torch's generator differs across platforms; ours does not,
   * so the projections regenerate bit-exactly from the seed.
   */
  saveProjection?: boolean;
}

export class VeraConfig extends AdapterConfig {
  readonly peftType = 'VERA' as const;
  readonly r: number;
  readonly dInitial: number;
  readonly seed: number;
  readonly saveProjection: boolean;

  constructor(options: VeraConfigOptions) {
    super(options, 'VeraConfig');
    this.r = checkInteger(options.r ?? 256, 'VeraConfig: r', 1);
    this.dInitial = checkFinite(options.dInitial ?? 0.1, 'VeraConfig: dInitial');
    this.seed = checkSeed(options.seed ?? 0, 'VeraConfig: seed');
    this.saveProjection = checkBoolean(options.saveProjection ?? false, 'VeraConfig: saveProjection');
  }

  protected methodJson(): JsonObject {
    return {
      r: this.r,
      d_initial: this.dInitial,
      projection_prng_key: this.seed,
      save_projection: this.saveProjection,
      vera_dropout: 0,
      bias: 'none',
      fan_in_fan_out: false,
    };
  }

  static fromJson(json: JsonObject): VeraConfig {
    return new VeraConfig({
      ...targetsFromJson(json),
      r: field(json, 'r', 256),
      dInitial: field(json, 'd_initial', 0.1),
      seed: field(json, 'projection_prng_key', 0),
      saveProjection: field(json, 'save_projection', false),
    });
  }
}
