/**
 * Helpers for declaring PEFT's fields that tera-peft does not implement (see
 * PeftOnlyField in fields.ts): which values of them change nothing here.
 */
import type { Json, PeftOnlyField } from './fields';

function sameJson(a: unknown, b: Json): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** Accepts only `values` (compared as JSON); the first is written to files when `write` is true. */
export function only(values: readonly Json[], because: string, write = false): PeftOnlyField {
  return {
    accepts: (value) => values.some((v) => sameJson(value, v)),
    accepted: values.map((v) => JSON.stringify(v)).join(' or '),
    because,
    ...(write ? { write: values[0] } : {}),
  };
}

/** Accepts any value: the field changes nothing computed here (`because` says why). */
export function inert(because: string): PeftOnlyField {
  return { accepts: () => true, accepted: 'any value', because };
}

/**
 * PEFT's fan_in_fan_out: whether the targets store their weight [in, out]
 * (transformers' Conv1D, GPT-2's projections). It describes the layers rather
 * than choosing anything: PEFT sets it from each target's type (with a warning
 * when a config disagrees), and so do we, so either value is read. Files get the
 * value PEFT's own save would hold (saveAdapter writes it from the adapted layers).
 */
export const FAN_IN_FAN_OUT: PeftOnlyField = {
  accepts: (value) => typeof value === 'boolean',
  accepted: 'true or false',
  because: "it follows each target's layer type (Conv1D: true, Linear: false), as in PEFT",
  write: false,
};

/** A number in [0, 1): a dropout probability. */
export function checkProbability(value: unknown, what: string): number {
  if (typeof value !== 'number' || !(value >= 0 && value < 1)) {
    throw new Error(`${what} must be a number in [0, 1), got ${JSON.stringify(value) ?? String(value)}`);
  }
  return value;
}

/** Refuses dropout > 0 for new adapters and for training: there is no dropout here. */
export function dropoutProblem(value: number): string | null {
  return value > 0
    ? `tera-peft has no dropout, so an adapter with dropout ${value} can be loaded for inference ` +
        '(where dropout does nothing) but not made or trained'
    : null;
}
