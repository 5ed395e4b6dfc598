/**
 * VeRA (Kopiczko et al.), as in PEFT: dW = diag(lambda_b) B diag(lambda_d) A
 * with A [r, in] and B [out, r] frozen, random, shared by all adapted layers;
 * only lambda_b [out] (init 0) and lambda_d [r] (init dInitial) train.
 */
import { configClass } from '../config';
import { type OptionalField, checkBoolean, checkFinite, checkInteger, checkSeed } from '../fields';
import { FAN_IN_FAN_OUT, checkProbability, dropoutProblem, only } from '../peft-fields';

const VERA_FIELDS = {
  r: {
    json: 'r',
    default: 256,
    help: 'the rank of the shared projections (as PEFT)',
    check: (value, what) => checkInteger(value, what, 1),
  } satisfies OptionalField<number>,
  dInitial: {
    json: 'd_initial',
    default: 0.1,
    help: "the initial value of every lambda_d entry (PEFT's d_initial)",
    check: checkFinite,
  } satisfies OptionalField<number>,
  seed: {
    json: 'projection_prng_key',
    default: 0,
    help: "seeds the shared projections (PEFT's projection_prng_key)",
    check: checkSeed,
  } satisfies OptionalField<number>,
  saveProjection: {
    json: 'save_projection',
    default: true,
    help: "store the shared A and B in the adapter file (as PEFT's default; needed for PEFT to load it)",
    check: checkBoolean,
  } satisfies OptionalField<boolean>,
  dropout: {
    json: 'vera_dropout',
    default: 0,
    help: 'dropout on the adapter input; only 0 can be made or trained here (files with more load for inference)',
    check: checkProbability,
    forTraining: dropoutProblem,
  } satisfies OptionalField<number>,
  initWeights: {
    json: 'init_weights',
    default: true,
    help: "PEFT's default initialisation (lambda_b = 0, lambda_d = dInitial); false is accepted in loaded files only",
    check: checkBoolean,
    forInjection: (value) => (value ? null : 'init_weights false is not implemented (files with it load)'),
  } satisfies OptionalField<boolean>,
};

const PEFT_ONLY = {
  fan_in_fan_out: FAN_IN_FAN_OUT,
  bias: only(['none'], 'training biases (all / vera_only) is not implemented', true),
  modules_to_save: only([null, []], 'whole trained modules are not stored or loaded'),
  layers_to_transform: only([null], 'select layers with target_modules instead'),
  layers_pattern: only([null, []], 'select layers with target_modules instead'),
};

export class VeraConfig extends configClass('VERA', 'VeraConfig', VERA_FIELDS, {
  peftOnly: PEFT_ONLY,
  peftReadsExclude: false,
}) {}

export type VeraConfigOptions = ConstructorParameters<typeof VeraConfig>[0];
