/**
 * What every adapter config shares: which modules it targets (PEFT's rules)
 * and the JSON helpers for adapter_config.json, whose field names follow PEFT
 * (snake_case) because that is the file format users already know.
 */

/**
 * Which modules to adapt, as in PEFT:
 * - a list of names: a module matches an entry if its full dotted name equals
 *   it or ends with '.' + entry ('q_proj' matches 'layers.0.attn.q_proj');
 * - a regex string or a RegExp (without flags): must match the full name.
 */
export type TargetModules = readonly string[] | string | RegExp;

export type PeftType = 'TERA' | 'VERA' | 'LORA';

export interface TargetOptions {
  targetModules: TargetModules;
  /** Modules to leave alone even if targetModules matches them (same rules). */
  excludeModules?: TargetModules | null;
}

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

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
    `${what} must be a non-empty list of module names, a regex string or a RegExp, got ${describe(value)}`,
  );
}

function describe(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map((v) => JSON.stringify(v)).join(', ')}]`;
  return value === null ? 'null' : typeof value === 'object' ? 'an object' : JSON.stringify(value);
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

export function checkInteger(value: unknown, what: string, min: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw new Error(`${what} must be an integer >= ${min}, got ${describe(value)}`);
  }
  return value;
}

export function checkSeed(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new Error(`${what} must be a non-negative safe integer, got ${describe(value)}`);
  }
  return value;
}

export function checkFinite(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new Error(`${what} must be a finite number`);
  return value;
}

export function checkBoolean(value: unknown, what: string): boolean {
  if (typeof value !== 'boolean') throw new Error(`${what} must be true or false, got ${describe(value)}`);
  return value;
}

/** The fields every config has; subclasses add their method's fields. */
export abstract class AdapterConfig {
  abstract readonly peftType: PeftType;
  readonly targetModules: TargetModules;
  readonly excludeModules: TargetModules | null;

  constructor(options: TargetOptions, what: string) {
    if (options === null || typeof options !== 'object') throw new Error(`${what} needs an options object`);
    this.targetModules = normaliseTargets(options.targetModules, `${what}: targetModules`);
    this.excludeModules =
      options.excludeModules === undefined || options.excludeModules === null
        ? null
        : normaliseTargets(options.excludeModules, `${what}: excludeModules`);
  }

  /** The adapter_config.json object (PEFT's field names). */
  toJson(): JsonObject {
    return {
      peft_type: this.peftType,
      target_modules: targetsToJson(this.targetModules),
      exclude_modules: this.excludeModules === null ? null : targetsToJson(this.excludeModules),
      base_model_name_or_path: null,
      task_type: null,
      inference_mode: true,
      ...this.methodJson(),
    };
  }

  protected abstract methodJson(): JsonObject;
}

function targetsToJson(spec: TargetModules): Json {
  if (spec instanceof RegExp) return spec.source;
  return typeof spec === 'string' ? spec : [...spec];
}

/** Reads the target fields of adapter_config.json. */
export function targetsFromJson(json: JsonObject): TargetOptions {
  return {
    targetModules: json.target_modules as TargetModules,
    excludeModules: (json.exclude_modules ?? null) as TargetModules | null,
  };
}

/** Reads a field of adapter_config.json, using `fallback` when it is absent or null. */
export function field<T>(json: JsonObject, key: string, fallback: T): T {
  const value = json[key];
  return value === undefined || value === null ? fallback : (value as T);
}
