/**
 * What every adapter config shares: which modules it targets (PEFT's rules),
 * and the config class every method's config derives from its field table
 * (fields.ts). adapter_config.json uses PEFT's snake_case names because that
 * is the file format users already know.
 */
import { describeValue } from '../shape';
import {
  type FieldOptions,
  type FieldSpec,
  type FieldValues,
  type Fields,
  type JsonObject,
  type OptionalField,
  fieldsFromJson,
  fieldsToJson,
  readFields,
} from './fields';

/**
 * Which modules to adapt, as in PEFT:
 * - a list of names: a module matches an entry if its full dotted name equals
 *   it or ends with '.' + entry ('q_proj' matches 'layers.0.attn.q_proj');
 * - a regex string or a RegExp (without flags): must match the full name.
 */
export type TargetModules = readonly string[] | string | RegExp;

export type PeftType = 'TERA' | 'VERA' | 'LORA';

function normaliseTargets(value: unknown, what: string): TargetModules {
  if (value instanceof RegExp) {
    if (value.flags !== '') {
      throw new Error(
        `${what}: RegExp flags (/${value.flags}) are not supported; the pattern is saved as a PEFT regex`,
      );
    }
    return value;
  }
  if (typeof value === 'string') {
    if (value === '') throw new Error(`${what}: an empty pattern matches nothing`);
    try {
      new RegExp(value);
    } catch (error) {
      throw new Error(`${what}: '${value}' is not a valid regular expression: ${(error as Error).message}`);
    }
    return value;
  }
  if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'string' && v !== '')) {
    return Object.freeze([...value]);
  }
  throw new Error(
    `${what} must be a non-empty list of module names, a regex string or a RegExp, got ${describeValue(value)}`,
  );
}

function fullMatch(pattern: string | RegExp, name: string): boolean {
  const source = typeof pattern === 'string' ? pattern : pattern.source;
  return new RegExp(`^(?:${source})$`).test(name);
}

/** The entries of `spec` (one for a pattern) with the names each matches. */
export function matchTargets(spec: TargetModules, names: readonly string[]): { entry: string; matched: string[] }[] {
  if (typeof spec === 'string' || spec instanceof RegExp) {
    return [{ entry: String(spec), matched: names.filter((n) => fullMatch(spec, n)) }];
  }
  return spec.map((entry) => ({ entry, matched: names.filter((n) => n === entry || n.endsWith(`.${entry}`)) }));
}

/** 64-bit FNV-1a of a label: the Philox stream of a frozen tensor named by it. */
export function randomStream(label: string): bigint {
  let hash = 0xcbf29ce484222325n;
  for (const byte of Buffer.from(label, 'utf8')) {
    hash ^= BigInt(byte);
    hash = (hash * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return hash;
}

function targetsToJson(spec: TargetModules): string | string[] {
  if (spec instanceof RegExp) return spec.source;
  return typeof spec === 'string' ? spec : [...spec];
}

/** The fields every config has: which modules to adapt, and which of those to leave alone. */
const TARGET_FIELDS = {
  targetModules: {
    json: 'target_modules',
    help: 'the modules to adapt: names (exact or dotted suffix), or a regex matching the whole name',
    check: (value, what) => normaliseTargets(value, what),
    toJson: targetsToJson,
  } satisfies FieldSpec<TargetModules>,
  excludeModules: {
    json: 'exclude_modules',
    default: null,
    help: 'modules to leave alone even if targetModules matches them (same rules)',
    check: (value, what) => (value === null ? null : normaliseTargets(value, what)),
    toJson: (value) => (value === null ? null : targetsToJson(value)),
  } satisfies OptionalField<TargetModules | null>,
};

/** Options every config takes. */
export type TargetOptions = FieldOptions<typeof TARGET_FIELDS>;

/** PEFT's own entries, written for PEFT's loader (we read none of them back). */
const PEFT_BASE_JSON: JsonObject = { base_model_name_or_path: null, task_type: null, inference_mode: true };

/** What configClass() attaches to each config class. */
interface ConfigDescriptor {
  readonly fields: Fields;
  readonly constants: JsonObject;
}

/** Any adapter config (TeraConfig, VeraConfig, LoraConfig): plain data, validated when made. */
export abstract class AdapterConfig {
  declare readonly peftType: PeftType;
  declare readonly targetModules: TargetModules;
  declare readonly excludeModules: TargetModules | null;

  /** The adapter_config.json object: PEFT's entries, then each field under its JSON key. */
  toJson(): JsonObject {
    const { fields, constants } = this.constructor as unknown as ConfigDescriptor;
    const values = fieldsToJson(fields, this as unknown as FieldValues<Fields>);
    const { target_modules, exclude_modules, ...method } = values;
    return { peft_type: this.peftType, target_modules, exclude_modules, ...PEFT_BASE_JSON, ...constants, ...method };
  }
}

/**
 * The base class of one method's config, derived from its field table: the
 * constructor fills in defaults and checks every field, toJson() writes them
 * under their JSON keys (after PEFT's entries and `constants`, fixed entries
 * PEFT expects), and fromJson() reads them back.
 */
export function configClass<P extends PeftType, F extends Fields>(
  peftType: P,
  name: string,
  methodFields: F,
  constants: JsonObject = {},
) {
  const fields = { ...TARGET_FIELDS, ...methodFields };
  type AllFields = typeof fields;

  class Config extends AdapterConfig {
    static readonly fields: AllFields = fields;
    static readonly constants: JsonObject = constants;
    declare readonly peftType: P;

    constructor(options: FieldOptions<AllFields>) {
      super();
      if (options === null || typeof options !== 'object') throw new Error(`${name} needs an options object`);
      Object.assign(this, { peftType }, readFields(fields, options as Record<string, unknown>, name));
    }

    /** Reads adapter_config.json entries (absent or null ones take their defaults). */
    static fromJson<T>(this: new (options: never) => T, json: JsonObject): T {
      return new this(fieldsFromJson(fields, json) as never);
    }
  }
  return Config as unknown as (new (
    options: FieldOptions<AllFields>,
  ) => AdapterConfig & FieldValues<AllFields> & { readonly peftType: P }) & {
    readonly fields: AllFields;
    fromJson<T>(this: new (options: never) => T, json: JsonObject): T;
  };
}
