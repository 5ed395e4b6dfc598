/**
 * Adapter files, laid out as PEFT's save_pretrained: adapter_config.json
 * (PEFT's field names) and adapter_model.safetensors with keys
 * 'base_model.model.<module>.<tensor>' ('...q_proj.lora_A.weight',
 * '...vera_lambda_b', '...tera_lambda_1'); the shared frozen tensors only when
 * the config asks (saveFactors / saveProjection), under 'base_model.<name>'.
 *
 * loadAdapter checks the config, every key, dtype and shape (and any stored
 * frozen tensor against its regeneration) before it changes the model.
 *
 * The two files are renamed into place one after the other, so a crash between
 * the renames, or a reader during a re-save, could see the old config with the
 * new weights. The weights file therefore carries a digest of the config file
 * it was saved with (in its metadata, which PEFT ignores), and loadAdapter
 * refuses a pair whose config does not match it. The weights go first: a
 * config is never newer than its weights.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { writeFileAtomic } from '../io/atomic';
import { type LoadedTensor, readSafetensors, writeSafetensors } from '../io/safetensors';
import { Module } from '../nn/module';
import { formatShape, sameShape } from '../shape';
import type { Tensor } from '../tensor/tensor';
import type { PeftType } from './config';
import type { JsonObject } from './fields';
import { type InjectionPlan, METHODS, adapterLayers, adapterState, attachAdapter, planInjection } from './inject';
import type { MethodLayer } from './method';
import { PeftModel } from './peft-model';

export const CONFIG_FILE = 'adapter_config.json';
export const WEIGHTS_FILE = 'adapter_model.safetensors';
/**
 * Metadata key of the weights file: the digest of the config file saved with it
 * (the first 128 bits of its SHA-256, base64url: plenty to tell two saves apart,
 * and short enough that a TeRA file of a 4096 x 4096 layer stays under 1 KiB).
 */
export const CONFIG_DIGEST_KEY = 'tera_peft.config_digest';

function configDigest(bytes: string | Buffer): string {
  return createHash('sha256').update(bytes).digest().subarray(0, 16).toString('base64url');
}

/** The file key of a layer's tensor. */
export function adapterKey(moduleName: string, suffix: string): string {
  return `base_model.model.${moduleName}.${suffix}`;
}

export interface SaveAdapterOptions {
  /** Which adapter to save (default 'default'). */
  adapterName?: string;
}

export interface SavedAdapter {
  configPath: string;
  weightsPath: string;
}

function unwrap(model: Module | PeftModel, what: string): Module {
  const module = model instanceof PeftModel ? model.model : model;
  if (!(module instanceof Module)) throw new Error(`${what}: model must be an nn.Module or a PeftModel`);
  return module;
}

/**
 * Writes `dir`/adapter_config.json and `dir`/adapter_model.safetensors (each
 * atomically; `dir` is created if needed). By default only the trainable
 * tensors are stored: a TeRA adapter of a 4096 x 4096 layer holds 6 x 16 floats.
 */
export function saveAdapter(model: Module | PeftModel, dir: string, options: SaveAdapterOptions = {}): SavedAdapter {
  const module = unwrap(model, 'saveAdapter');
  const adapterName = options.adapterName ?? 'default';
  const record = adapterState(module).adapters.get(adapterName);
  if (record === undefined) {
    const names = [...adapterState(module).adapters.keys()];
    throw new Error(`saveAdapter: no adapter named '${adapterName}'; adapters: ${names.join(', ') || '(none)'}`);
  }
  const tensors: Record<string, { data: Float32Array; shape: number[] }> = {};
  const put = (key: string, t: Tensor) => (tensors[key] = { data: t.toFloat32Array(), shape: [...t.shape] });
  for (const [moduleName, layer] of adapterLayers(module)) {
    const adapter = layer.adapter(adapterName);
    if (adapter === undefined) continue;
    for (const [suffix, p] of adapter.parameters) put(adapterKey(moduleName, suffix), p.data);
    for (const [key, t] of Object.entries(adapter.sharedTensors())) if (!(key in tensors)) put(key, t);
  }
  fs.mkdirSync(dir, { recursive: true });
  const weightsPath = path.join(dir, WEIGHTS_FILE);
  const configPath = path.join(dir, CONFIG_FILE);
  const configText = `${JSON.stringify(record.config.toJson(), null, 2)}\n`;
  writeSafetensors(weightsPath, tensors, { format: 'pt', [CONFIG_DIGEST_KEY]: configDigest(configText) });
  writeFileAtomic(configPath, configText);
  return { configPath, weightsPath };
}

export interface LoadAdapterOptions {
  /** The name the adapter gets in the model (default 'default'). */
  adapterName?: string;
  /** Let its parameters train (default false, as PEFT's is_trainable). */
  isTrainable?: boolean;
  /**
   * Load even when adapter_config.json is not the config the weights were saved
   * with, because you edited it by hand (default false: such a pair is refused as
   * the mix an interrupted save leaves).
   */
  allowEditedConfig?: boolean;
}

function readConfig(file: string, bytes: Buffer) {
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new Error(`loadAdapter: cannot read ${file}: ${(error as Error).message}`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new Error(`loadAdapter: ${file} must hold a JSON object`);
  }
  const peftType = (json as JsonObject).peft_type;
  if (typeof peftType !== 'string' || !Object.hasOwn(METHODS, peftType)) {
    throw new Error(
      `loadAdapter: ${file} has peft_type ${JSON.stringify(peftType)}; supported: ${Object.keys(METHODS).join(', ')}`,
    );
  }
  try {
    return METHODS[peftType as PeftType].configFromJson(json as JsonObject);
  } catch (error) {
    throw new Error(`loadAdapter: ${file}: ${(error as Error).message}`);
  }
}

/** Every way `tensors` differs from what the plan expects. */
function fileProblems(plan: InjectionPlan, tensors: Record<string, LoadedTensor>): string[] {
  const expected = new Map<string, number[]>();
  for (const layer of plan.layers) {
    for (const [suffix, shape] of layer.tensors) expected.set(adapterKey(layer.moduleName, suffix), shape);
  }
  for (const [key, shape] of Object.entries(plan.method.savedSharedShapes(plan.config, plan.layers))) {
    expected.set(key, shape);
  }
  const problems: string[] = [];
  for (const [key, shape] of expected) {
    const t = tensors[key];
    if (t === undefined) problems.push(`missing tensor '${key}'`);
    else if (t.dtype !== 'F32') problems.push(`'${key}' is ${t.dtype}; adapters are stored as F32`);
    else if (!sameShape(t.shape, shape)) {
      problems.push(`'${key}' has shape ${formatShape(t.shape)}, this model needs ${formatShape(shape)}`);
    }
  }
  for (const key of Object.keys(tensors)) if (!expected.has(key)) problems.push(`unexpected tensor '${key}'`);
  return problems;
}

function bytesOf(data: Float32Array): Buffer {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

/** Stored frozen tensors must equal their regeneration from the seed, bit for bit. */
function sharedProblems(layers: MethodLayer[], tensors: Record<string, LoadedTensor>): string[] {
  const problems = new Set<string>();
  for (const layer of layers) {
    for (const [key, t] of Object.entries(layer.sharedTensors())) {
      const stored = tensors[key].data;
      const regenerated = t.toFloat32Array();
      if (!bytesOf(stored).equals(bytesOf(regenerated))) {
        problems.add(
          `'${key}' differs from the frozen tensor its seed generates (a different generator or a changed file)`,
        );
      }
    }
  }
  return [...problems];
}

/**
 * Loads an adapter saved by saveAdapter (or a PEFT LoRA / VeRA adapter for a
 * model with the same module names) into `model`, injecting it as
 * `adapterName`. Any mismatch throws an error listing every problem, and the
 * model is left untouched.
 */
export function loadAdapter(model: Module | PeftModel, dir: string, options: LoadAdapterOptions = {}): PeftModel {
  const module = unwrap(model, 'loadAdapter');
  const adapterName = options.adapterName ?? 'default';
  const configPath = path.join(dir, CONFIG_FILE);
  let configBytes: Buffer;
  try {
    configBytes = fs.readFileSync(configPath);
  } catch (error) {
    throw new Error(`loadAdapter: cannot read ${configPath}: ${(error as Error).message}`);
  }
  const config = readConfig(configPath, configBytes);
  const plan = planInjection(module, config, adapterName);
  const weightsPath = path.join(dir, WEIGHTS_FILE);
  const { tensors, metadata } = readSafetensors(weightsPath);
  const savedWith = metadata[CONFIG_DIGEST_KEY];
  if (savedWith !== undefined && savedWith !== configDigest(configBytes) && options.allowEditedConfig !== true) {
    throw new Error(
      `loadAdapter: ${dir} holds ${CONFIG_FILE} and ${WEIGHTS_FILE} from different saves ` +
        '(a save was interrupted or is in progress): refusing the mix; save the adapter again or retry ' +
        '(if you edited the config by hand on purpose, pass allowEditedConfig: true)',
    );
  }
  const problems = fileProblems(plan, tensors);
  if (problems.length > 0) {
    throw new Error(`loadAdapter: ${weightsPath} does not fit this model:\n  - ${problems.join('\n  - ')}`);
  }
  const built = plan.method.createLayers(config, plan.layers, adapterName);
  try {
    const mismatched = sharedProblems(built, tensors);
    if (mismatched.length > 0) throw new Error(`loadAdapter: ${weightsPath}:\n  - ${mismatched.join('\n  - ')}`);
    built.forEach((layer, i) => {
      for (const [suffix, p] of layer.parameters)
        p.data.set(tensors[adapterKey(plan.layers[i].moduleName, suffix)].data);
    });
  } catch (error) {
    built.forEach((layer) => layer.dispose());
    throw error;
  }
  attachAdapter(module, plan, built, options.isTrainable ?? false);
  return model instanceof PeftModel ? model : new PeftModel(module);
}
