/**
 * What every adapter config shares: which modules it targets (PEFT's rules),
 * and the config class every method's config derives from its field table
 * (fields.ts). adapter_config.json uses PEFT's snake_case names because that
 * is the file format users already know.
 */
import { describeValue } from '../shape';
import { compilePattern } from './patterns';
import {
  type FieldOptions,
  type FieldSpec,
  type FieldValues,
  type Fields,
  type JsonObject,
  type OptionalField,
  type PeftOnlyField,
  fieldProblems,
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
    compilePattern(value.source, what);
    return value;
  }
  if (typeof value === 'string') {
    if (value === '') throw new Error(`${what}: an empty pattern matches nothing`);
    compilePattern(value, what);
    return value;
  }
  if (Array.isArray(value) && value.length > 0 && value.every((v) => typeof v === 'string' && v !== '')) {
    return Object.freeze([...value]);
  }
  throw new Error(
    `${what} must be a non-empty list of module names, a regex string or a RegExp, got ${describeValue(value)}`,
  );
}

/** PEFT's shorthand for every Linear layer but the output layer. */
export const ALL_LINEAR = 'all-linear';

/** Whether `spec` is PEFT's 'all-linear' shorthand (any letter case, as PEFT). */
export function isAllLinear(spec: TargetModules): boolean {
  return typeof spec === 'string' && spec.toLowerCase() === ALL_LINEAR;
}

/** The entries of `spec` (one for a pattern) with the names each matches. */
export function matchTargets(spec: TargetModules, names: readonly string[]): { entry: string; matched: string[] }[] {
  if (typeof spec === 'string' || spec instanceof RegExp) {
    const matches = compilePattern(typeof spec === 'string' ? spec : spec.source, 'targets');
    return [{ entry: String(spec), matched: names.filter(matches) }];
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

/** PEFT's own entries, written for PEFT's loader. */
const PEFT_BASE_JSON: JsonObject = { base_model_name_or_path: null, task_type: null, inference_mode: true };

/** PEFT's bookkeeping in adapter_config.json: read and ignored, as they change nothing computed here. */
const PEFT_BOOKKEEPING = [
  'peft_type',
  'base_model_name_or_path',
  'revision',
  'task_type',
  'inference_mode',
  'auto_mapping',
  'peft_version',
];

/** What configClass() attaches to each config class. */
interface ConfigDescriptor {
  readonly fields: Fields;
  readonly peftOnly: Readonly<Record<string, PeftOnlyField>>;
  readonly peftReadsExclude: boolean;
}

export interface ConfigClassOptions {
  /** PEFT's fields this method does not implement, accepted only at values that change nothing. */
  peftOnly?: Readonly<Record<string, PeftOnlyField>>;
  /** Whether PEFT's reader of this method knows exclude_modules (default true; VeRA's does not). */
  peftReadsExclude?: boolean;
}

function descriptorOf(config: AdapterConfig): ConfigDescriptor {
  return config.constructor as unknown as ConfigDescriptor;
}

/** Any adapter config (TeraConfig, VeraConfig, LoraConfig): plain data, validated when made. */
export abstract class AdapterConfig {
  declare readonly peftType: PeftType;
  declare readonly targetModules: TargetModules;
  declare readonly excludeModules: TargetModules | null;

  /** Whether PEFT's reader of this method knows exclude_modules (saveAdapter resolves it otherwise). */
  get peftReadsExclude(): boolean {
    return descriptorOf(this).peftReadsExclude;
  }

  /**
   * The adapter_config.json object: PEFT's entries, the PEFT-only fields at the
   * values we implement, then each field under its JSON key.
   */
  toJson(): JsonObject {
    const { fields, peftOnly } = descriptorOf(this);
    const values = fieldsToJson(fields, this as unknown as FieldValues<Fields>);
    const { target_modules, exclude_modules, ...method } = values;
    const fixed: JsonObject = {};
    for (const [key, field] of Object.entries(peftOnly)) if (field.write !== undefined) fixed[key] = field.write;
    return { peft_type: this.peftType, target_modules, exclude_modules, ...PEFT_BASE_JSON, ...fixed, ...method };
  }

  /** Why this config cannot make new adapters (values only a loaded file may hold), one line each. */
  injectionProblems(): string[] {
    const values = this as unknown as FieldValues<Fields>;
    return [
      ...fieldProblems(descriptorOf(this).fields, values, 'forInjection'),
      ...fieldProblems(descriptorOf(this).fields, values, 'forTraining'),
    ];
  }

  /** Why an adapter with this config cannot train here, one line each. */
  trainingProblems(): string[] {
    return fieldProblems(descriptorOf(this).fields, this as unknown as FieldValues<Fields>, 'forTraining');
  }
}

/**
 * The base class of one method's config, derived from its field table: the
 * constructor fills in defaults and checks every field (refusing options it
 * does not have), toJson() writes them under their JSON keys, and fromJson()
 * reads them back, refusing any entry whose value would not be honoured.
 */
export function configClass<P extends PeftType, F extends Fields>(
  peftType: P,
  name: string,
  methodFields: F,
  options: ConfigClassOptions = {},
) {
  const fields = { ...TARGET_FIELDS, ...methodFields };
  type AllFields = typeof fields;
  const peftOnly = options.peftOnly ?? {};

  class Config extends AdapterConfig {
    static readonly fields: AllFields = fields;
    static readonly peftOnly = peftOnly;
    static readonly peftReadsExclude = options.peftReadsExclude ?? true;
    declare readonly peftType: P;

    constructor(options: FieldOptions<AllFields>) {
      super();
      if (options === null || typeof options !== 'object') throw new Error(`${name} needs an options object`);
      Object.assign(this, { peftType }, readFields(fields, options as Record<string, unknown>, name));
    }

    /** Reads adapter_config.json entries (absent or null ones take their defaults); errors name the JSON keys. */
    static fromJson<T>(this: new (options: never) => T, json: JsonObject): T {
      const options = fieldsFromJson(fields, peftOnly, PEFT_BOOKKEEPING, json, name);
      const values = readFields(fields, options, name, (field, spec) => spec.json ?? field);
      return Object.assign(Object.create(this.prototype) as T & object, { peftType }, values);
    }
  }
  return Config as unknown as (new (
    options: FieldOptions<AllFields>,
  ) => AdapterConfig & FieldValues<AllFields> & { readonly peftType: P }) & {
    readonly fields: AllFields;
    fromJson<T>(this: new (options: never) => T, json: JsonObject): T;
  };
}
