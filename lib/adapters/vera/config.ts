/**
 * VeRA (Kopiczko et al.), as in PEFT: dW = diag(lambda_b) B diag(lambda_d) A
 * with A [r, in] and B [out, r] frozen, random, shared by all adapted layers;
 * only lambda_b [out] (init 0) and lambda_d [r] (init dInitial) train.
 */
import { configClass } from '../config';
import { type OptionalField, checkBoolean, checkFinite, checkInteger, checkSeed } from '../fields';

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
    default: false,
    help: 'store the shared A and B in the adapter file (they regenerate bit-exactly from the seed)',
    check: checkBoolean,
  } satisfies OptionalField<boolean>,
};

/** What PEFT's loader expects besides our fields: the only values we implement. */
const PEFT_CONSTANTS = { vera_dropout: 0, bias: 'none', fan_in_fan_out: false };

export class VeraConfig extends configClass('VERA', 'VeraConfig', VERA_FIELDS, PEFT_CONSTANTS) {}

export type VeraConfigOptions = ConstructorParameters<typeof VeraConfig>[0];
