/**
 * The fine-tuning methods the demos compare, as plain data: an AdapterSpec
 * names the method and its size; methodHandlers turns it into what a demo
 * needs (make the trainable parameters, save them, load them back) for any
 * model, the demo supplying only how full fine-tuning saves its weights.
 */
import {
  type AdapterConfig,
  AdapterLinear,
  LoraConfig,
  TeraConfig,
  type TargetModules,
  VeraConfig,
  injectAdapter,
  loadAdapter,
  saveAdapter,
} from '../../lib/adapters';
import type { Parameter } from '../../lib/autograd';
import type { Module } from '../../lib/nn';
import type { Tensor } from '../../lib/tensor/tensor';

export const METHOD_NAMES = ['tera', 'vera', 'lora', 'full'] as const;
export type MethodName = (typeof METHOD_NAMES)[number];

export const METHOD_LABELS: Readonly<Record<MethodName, string>> = Object.freeze({
  tera: 'TeRA',
  vera: 'VeRA',
  lora: 'LoRA',
  full: 'full fine-tuning',
});

/** A method at one size; options left out take the library's defaults. */
export type AdapterSpec =
  | { method: 'tera'; maxModeSize?: number; maxRank?: number; alpha?: number }
  | { method: 'vera'; r: number }
  | { method: 'lora'; r: number; alpha: number }
  | { method: 'full' };

/** Every adapter of the demos is made with this seed (TeRA's core and factors, VeRA's projections, LoRA's A). */
const ADAPTER_SEED = 0;

/** The size of a spec in words, e.g. 'modes <= 16, rank <= 16' or 'r 8, alpha 16'. */
export function describeSpec(spec: AdapterSpec): string {
  switch (spec.method) {
    case 'tera': {
      const { maxModeSize, maxRank, alpha } = TeraConfig.fields;
      const modes = spec.maxModeSize ?? maxModeSize.default;
      const rank = spec.maxRank ?? maxRank.default;
      const scale = spec.alpha ?? alpha.default;
      return `modes <= ${modes}, rank <= ${rank}${scale === alpha.default ? '' : `, alpha ${scale}`}`;
    }
    case 'vera':
      return `r ${spec.r}`;
    case 'lora':
      return `r ${spec.r}, alpha ${spec.alpha}`;
    case 'full':
      return 'all weights';
  }
}

/** The adapter config of a spec (full fine-tuning has none). */
export function adapterConfig(spec: Exclude<AdapterSpec, { method: 'full' }>, targets: TargetModules): AdapterConfig {
  switch (spec.method) {
    case 'tera':
      return new TeraConfig({
        targetModules: targets,
        maxModeSize: spec.maxModeSize,
        maxRank: spec.maxRank,
        alpha: spec.alpha,
        seed: ADAPTER_SEED,
      });
    case 'vera':
      // Only tera-peft reads these files, which regenerates VeRA's projections: store just the trained vectors.
      return new VeraConfig({ targetModules: targets, r: spec.r, seed: ADAPTER_SEED, saveProjection: false });
    case 'lora':
      return new LoraConfig({ targetModules: targets, r: spec.r, alpha: spec.alpha, seed: ADAPTER_SEED });
  }
}

/** What a demo does with a method on its model type M. */
export interface MethodHandlers<M extends Module> {
  label: string;
  /** Readies a fresh frozen base for training; returns what to optimise. */
  prepare(model: M): Parameter[];
  /** Saves what was trained into `dir`; returns the weights file. */
  save(model: M, dir: string): string;
  /** Applies the files in `dir` to a fresh base model. */
  load(model: M, dir: string): void;
}

/** How a demo saves and loads a fully fine-tuned model. */
export interface FullWeights<M extends Module> {
  save(model: M, dir: string): string;
  load(model: M, dir: string): void;
}

export function methodHandlers<M extends Module>(
  spec: AdapterSpec,
  targets: TargetModules,
  full: FullWeights<M>,
): MethodHandlers<M> {
  const label = METHOD_LABELS[spec.method];
  if (spec.method === 'full') {
    return { label, prepare: (model) => model.requiresGrad(true).parameters(), ...full };
  }
  return {
    label,
    prepare: (model) => injectAdapter(model, adapterConfig(spec, targets)).trainableParameters(),
    save: (model, dir) => saveAdapter(model, dir).weightsPath,
    load: (model, dir) => void loadAdapter(model, dir),
  };
}

/**
 * The frozen numbers an adapter adds to the model and shares between its
 * layers (TeRA's core and factors, VeRA's projections; none for LoRA), each
 * shared tensor counted once.
 */
export function frozenSharedValues(model: Module): number {
  const seen = new Set<Tensor>();
  for (const [, layer] of model.namedModules()) {
    if (!(layer instanceof AdapterLinear)) continue;
    for (const name of layer.adapterNames) {
      for (const tensor of Object.values(layer.adapter(name)?.frozenTensors() ?? {})) seen.add(tensor);
    }
  }
  return [...seen].reduce((n, t) => n + t.size, 0);
}
