/**
 * Config fields declared once, as PEFT's dataclasses do: each field names its
 * option (the key of the table), its adapter_config.json key, its default, its
 * check and a line of help. The constructor's defaults and checks, the JSON
 * writer and the JSON reader are all derived from the table, so they cannot
 * drift apart.
 */
import { describeValue } from '../shape';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

/** One option of a config. `T` is the stored value, `I` what a caller may pass. */
export interface FieldSpec<T, I = T> {
  /** Its key in adapter_config.json (PEFT's name where PEFT has the option); null: not stored in the file. */
  readonly json: string | null;
  /** One line saying what it does, for error messages and docs. */
  readonly help: string;
  /** Validates a given value (or the default) and returns the stored form; `what` names it in errors. */
  check(value: unknown, what: string): T;
  /** Its JSON form (default: the stored value itself). */
  toJson?(value: T): Json;
  /** Why new adapters cannot be made with `value` (only a loaded file may hold it), or null. */
  forInjection?(value: T): string | null;
  /** Why an adapter with `value` cannot train here, or null. */
  forTraining?(value: T): string | null;
  /** Phantom member carrying the caller's type `I`; never set. */
  readonly input?: I;
}

/** A field with a default: the option may be left out (undefined or null). */
export interface OptionalField<T, I = T> extends FieldSpec<T, I> {
  readonly default: T;
}

export type Fields = Record<string, FieldSpec<unknown, unknown>>;

/**
 * A field of PEFT's config that tera-peft does not implement: accepted from a
 * file only at values that change nothing here, and written (when `write` is
 * set) so that PEFT's loader reads what we computed.
 */
export interface PeftOnlyField {
  /** Whether a file's value changes nothing here. */
  accepts(value: unknown): boolean;
  /** What we accept, for the refusal: 'false', 'null', '"none"'. */
  readonly accepted: string;
  /** Why other values are not supported. */
  readonly because: string;
  /** The value written into adapter_config.json (absent: not written). */
  readonly write?: Json;
}

type InputOf<S> = S extends FieldSpec<unknown, infer I> ? I : never;
type ValueOf<S> = S extends FieldSpec<infer T, unknown> ? T : never;

/** The options object a constructor takes: fields without a default are required. */
export type FieldOptions<F extends Fields> = {
  [K in keyof F as F[K] extends OptionalField<unknown, unknown> ? never : K]: InputOf<F[K]>;
} & {
  [K in keyof F as F[K] extends OptionalField<unknown, unknown> ? K : never]?: InputOf<F[K]> | null;
};

/** The values a config holds, one readonly property per field. */
export type FieldValues<F extends Fields> = { readonly [K in keyof F]: ValueOf<F[K]> };

function hasDefault(spec: FieldSpec<unknown, unknown>): spec is OptionalField<unknown, unknown> {
  return 'default' in spec;
}

/**
 * Checks every field of `options` (defaults filled in) and returns the values;
 * `what` prefixes errors, which name each field by `label` (default: its option
 * name). An option the table does not have is refused.
 */
export function readFields<F extends Fields>(
  fields: F,
  options: Record<string, unknown>,
  what: string,
  label: (name: string, spec: FieldSpec<unknown, unknown>) => string = (name) => name,
): FieldValues<F> {
  const unknown = Object.keys(options).filter((key) => !Object.hasOwn(fields, key));
  if (unknown.length > 0) {
    const known = Object.entries(fields).map(([name, spec]) => `${name} (${spec.help})`);
    throw new Error(
      `${what} has no option ${unknown.map((k) => `'${k}'`).join(', ')}; its options: ${known.join('; ')}`,
    );
  }
  const values: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(fields)) {
    const given = options[name];
    const value = (given === undefined || given === null) && hasDefault(spec) ? spec.default : given;
    values[name] = spec.check(value, `${what}: ${label(name, spec)}`);
  }
  return values as FieldValues<F>;
}

/** The adapter_config.json entries of checked values (fields stored in the file only). */
export function fieldsToJson<F extends Fields>(fields: F, values: FieldValues<F>): JsonObject {
  const out: JsonObject = {};
  for (const [name, spec] of Object.entries(fields)) {
    if (spec.json === null) continue;
    const value = values[name as keyof F];
    out[spec.json] = spec.toJson ? spec.toJson(value) : (value as Json);
  }
  return out;
}

/**
 * Constructor options from adapter_config.json entries (absent keys stay
 * absent, so defaults apply). Every other key must be one of `ignored` (PEFT's
 * bookkeeping, which changes nothing here) or a PEFT-only field at a value we
 * honour: anything else is refused, every problem in one error.
 */
export function fieldsFromJson<F extends Fields>(
  fields: F,
  peftOnly: Readonly<Record<string, PeftOnlyField>>,
  ignored: readonly string[],
  json: JsonObject,
  what: string,
): Record<string, unknown> {
  const byKey = new Map<string, string>();
  for (const [name, spec] of Object.entries(fields)) if (spec.json !== null) byKey.set(spec.json, name);
  const options: Record<string, unknown> = {};
  const problems: string[] = [];
  for (const [key, value] of Object.entries(json)) {
    const name = byKey.get(key);
    if (name !== undefined) {
      options[name] = value;
    } else if (Object.hasOwn(peftOnly, key)) {
      const field = peftOnly[key];
      if (!field.accepts(value)) {
        problems.push(
          `${key} is ${JSON.stringify(value)}; tera-peft supports only ${field.accepted} (${field.because})`,
        );
      }
    } else if (!ignored.includes(key)) {
      problems.push(`${key} is not a field tera-peft knows for ${what}; refusing it rather than ignoring it`);
    }
  }
  if (problems.length > 0) throw new Error(`${what}:\n  - ${problems.join('\n  - ')}`);
  return options;
}

/** Why `values` cannot make new adapters ('forInjection') or train ('forTraining'), one line each. */
export function fieldProblems<F extends Fields>(
  fields: F,
  values: FieldValues<F>,
  use: 'forInjection' | 'forTraining',
): string[] {
  return Object.entries(fields).flatMap(([name, spec]) => {
    const problem = spec[use]?.(values[name as keyof F]) ?? null;
    return problem === null ? [] : [`${name}: ${problem}`];
  });
}

// The checks fields use.

export function checkInteger(value: unknown, what: string, min: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw new Error(`${what} must be an integer >= ${min}, got ${describeValue(value)}`);
  }
  return value;
}

export function checkSeed(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new Error(`${what} must be a non-negative safe integer, got ${describeValue(value)}`);
  }
  return value;
}

export function checkFinite(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw new Error(`${what} must be a finite number, got ${describeValue(value)}`);
  }
  return value;
}

export function checkBoolean(value: unknown, what: string): boolean {
  if (typeof value !== 'boolean') throw new Error(`${what} must be true or false, got ${describeValue(value)}`);
  return value;
}

/** A list of positive integers, frozen, or null. */
export function checkDims(value: unknown, what: string): readonly number[] | null {
  if (value === null) return null;
  if (!Array.isArray(value) || value.length === 0) {
    throw new Error(`${what} must be a non-empty array of integers, got ${describeValue(value)}`);
  }
  value.forEach((d, i) => checkInteger(d, `${what}[${i}]`, 1));
  return Object.freeze([...value]);
}

/** JSON form of a frozen list (or null). */
export function dimsToJson(value: readonly number[] | null): Json {
  return value === null ? null : [...value];
}
