/**
 * The one injection mechanism every method shares: find the target Linear
 * layers by PEFT's matching rules, plan every layer (validating shapes without
 * allocating), build the method's layers, and only then swap AdapterLinear
 * wrappers into the model. A failure at any step leaves the model as it was.
 */
import type { Parameter } from '../autograd/var';
import { Linear } from '../nn/layers';
import { Module } from '../nn/module';
import { ALL_LINEAR, AdapterConfig, type PeftType, isAllLinear, matchTargets } from './config';
import { AdapterLinear } from './layer';
import { loraMethod } from './lora/model';
import type { AdapterMethod, LayerPlan, MethodLayer } from './method';
import { teraMethod } from './tera/model';
import { veraMethod } from './vera/model';

export const METHODS: Record<PeftType, AdapterMethod> = {
  TERA: teraMethod as AdapterMethod,
  VERA: veraMethod as AdapterMethod,
  LORA: loraMethod as AdapterMethod,
};

export interface AdapterRecord {
  config: AdapterConfig;
  /** False for adapters loaded for inference: their parameters stay frozen even when active. */
  trainable: boolean;
}

/** What a model with adapters carries besides its modules. */
export interface AdapterState {
  adapters: Map<string, AdapterRecord>;
  /** Active adapters, in the order given to setAdapter (PEFT's active_adapters). */
  active: string[];
}

const states = new WeakMap<Module, AdapterState>();

/** The adapter bookkeeping of `model` (created empty on first use). */
export function adapterState(model: Module): AdapterState {
  let state = states.get(model);
  if (state === undefined) {
    state = { adapters: new Map(), active: [] };
    states.set(model, state);
  }
  return state;
}

export function forgetAdapterState(model: Module): void {
  states.delete(model);
}

/** The wrapped layers of `model` with their dotted names. */
export function adapterLayers(model: Module): [string, AdapterLinear][] {
  return model.namedModules().filter((entry): entry is [string, AdapterLinear] => entry[1] instanceof AdapterLinear);
}

export interface InjectionPlan {
  method: AdapterMethod;
  config: AdapterConfig;
  adapterName: string;
  layers: LayerPlan[];
}

function checkAdapterName(name: unknown): string {
  if (typeof name !== 'string' || name === '' || name.includes('.')) {
    throw new Error(`adapter names must be non-empty strings without dots, got ${JSON.stringify(name)}`);
  }
  return name;
}

/** Module names injection may target: all but the root and what AdapterLinear wraps. */
function candidates(model: Module): [string, Module][] {
  const wrapped = adapterLayers(model).map(([name]) => `${name}.`);
  return model.namedModules().filter(([name]) => name !== '' && !wrapped.some((prefix) => name.startsWith(prefix)));
}

function listModules(modules: [string, Module][]): string {
  if (modules.length === 0) return '(the model has no submodules)';
  return modules
    .map(([name, m]) => `${name} (${m instanceof AdapterLinear ? 'Linear with adapters' : m.constructor.name})`)
    .join(', ');
}

/**
 * PEFT's 'all-linear': every Linear layer (GPT-2's Conv1D included) but the
 * output layer. That is the model's output embeddings where it names them (a
 * language model's lm_head, as PEFT asks transformers' get_output_embeddings()),
 * else the last Linear in module order (an MLP's or Sequential's last layer).
 */
function allLinear(model: Module, modules: [string, Module][]): string[] {
  const linears = modules
    .filter(([, m]) => (m instanceof AdapterLinear ? m.baseLayer : m) instanceof Linear)
    .map(([name]) => name);
  const output = model.outputEmbeddingsName() ?? linears[linears.length - 1];
  const selected = linears.filter((name) => name !== output);
  if (selected.length === 0) {
    throw new Error(
      `'${ALL_LINEAR}' adapts every Linear layer but the output layer, and this model has ` +
        `${linears.length === 0 ? 'none' : `only its output layer '${output}'`}; the model has: ${listModules(modules)}`,
    );
  }
  return selected;
}

/**
 * Why no adapter may go on these layers: a weight shared with another module
 * (a language model's lm_head tied to its token embedding) would have an
 * adapter merged into both.
 */
function tiedWeightProblems(model: Module, layers: readonly LayerPlan[]): string[] {
  const names = new Map<Parameter, string[]>();
  for (const [name, p] of model.namedParameters('', { removeDuplicate: false })) {
    names.set(p, [...(names.get(p) ?? []), name]);
  }
  return layers
    .map(({ moduleName, base }) => {
      const others = names.get(base.weight)!.filter((name) => !name.startsWith(`${moduleName}.`));
      if (others.length === 0) return null;
      return (
        `'${moduleName}' shares its weight with ${others.map((n) => `'${n}'`).join(', ')} (tied weights): ` +
        'an adapter merged into it would change both; leave it out of targetModules'
      );
    })
    .filter((problem): problem is string => problem !== null);
}

/** Matches and validates everything; allocates nothing and changes nothing. */
export function planInjection(model: Module, config: AdapterConfig, adapterName: string): InjectionPlan {
  if (!(model instanceof Module)) throw new Error('injectAdapter: model must be an nn.Module');
  if (!(config instanceof AdapterConfig)) {
    throw new Error('injectAdapter: config must be a TeraConfig, VeraConfig or LoraConfig (use new TeraConfig({...}))');
  }
  checkAdapterName(adapterName);
  const state = states.get(model);
  if (state?.adapters.has(adapterName)) {
    throw new Error(`the model already has an adapter named '${adapterName}'; pick another name or delete it first`);
  }
  const method = METHODS[config.peftType];
  const modules = candidates(model);
  const names = modules.map(([name]) => name);
  const selected = new Set<string>();
  if (isAllLinear(config.targetModules)) {
    allLinear(model, modules).forEach((n) => selected.add(n));
  } else {
    for (const { entry, matched } of matchTargets(config.targetModules, names)) {
      if (matched.length === 0) {
        throw new Error(`target module '${entry}' matches no module; the model has: ${listModules(modules)}`);
      }
      matched.forEach((n) => selected.add(n));
    }
  }
  if (config.excludeModules !== null) {
    for (const { matched } of matchTargets(config.excludeModules, names)) matched.forEach((n) => selected.delete(n));
  }
  if (selected.size === 0) throw new Error('excludeModules removes every module targetModules matched');

  const layers: LayerPlan[] = [];
  for (const [moduleName, module] of modules) {
    if (!selected.has(moduleName)) continue;
    const base = module instanceof AdapterLinear ? module.baseLayer : module;
    if (!(base instanceof Linear)) {
      throw new Error(
        `'${moduleName}' is a ${module.constructor.name}; adapters go on Linear layers only (matched modules: ${[...selected].join(', ')})`,
      );
    }
    layers.push({ moduleName, base, tensors: method.layerTensors(config, base, moduleName) });
  }
  const tied = tiedWeightProblems(model, layers);
  if (tied.length > 0) throw new Error(tied.join('; '));
  return { method, config, adapterName, layers };
}

/**
 * Puts built layers into the model: wraps each target (or reuses its
 * wrapper), records the adapter, and freezes every parameter that is not an
 * adapter's, as PEFT does. Nothing here can fail halfway.
 */
export function attachAdapter(model: Module, plan: InjectionPlan, built: MethodLayer[], trainable: boolean): void {
  const state = adapterState(model);
  plan.layers.forEach(({ moduleName, base }, i) => {
    let wrapper = model.getSubmodule(moduleName);
    if (!(wrapper instanceof AdapterLinear)) {
      wrapper = new AdapterLinear(base);
      model.setSubmodule(moduleName, wrapper);
    }
    (wrapper as AdapterLinear).addAdapter(plan.adapterName, built[i]);
  });
  state.adapters.set(plan.adapterName, { config: plan.config, trainable });
  if (state.active.length === 0) state.active = [plan.adapterName];
  const adapterParams = new Set(adapterLayers(model).flatMap(([, layer]) => layer.adapterParameters()));
  for (const p of model.parameters()) if (!adapterParams.has(p)) p.requiresGrad = false;
  applyActiveAdapters(model);
}

/** Refuses two active adapters applied unmerged on one layer (PEFT would sum them; we do not). */
export function checkOneActive(moduleName: string, unmerged: readonly string[]): void {
  if (unmerged.length > 1) {
    throw new Error(
      `adapters ${unmerged.map((n) => `'${n}'`).join(' and ')} are both active on '${moduleName}'; ` +
        'activate one of them (setAdapter), or merge the others',
    );
  }
}

/**
 * Activates `names` (default: the model's current list) on every layer and
 * lets only their parameters train. Every layer is checked before any changes.
 */
export function applyActiveAdapters(model: Module, names: readonly string[] = adapterState(model).active): void {
  const state = adapterState(model);
  const layers = adapterLayers(model);
  for (const [moduleName, layer] of layers) checkOneActive(moduleName, layer.unmergedAmong(names));
  state.active = [...names];
  for (const [, layer] of layers) {
    layer.setActiveAdapters(names);
    for (const name of layer.adapterNames) {
      const trainable = names.includes(name) && state.adapters.get(name)!.trainable;
      for (const p of layer.adapter(name)!.parameters.values()) p.requiresGrad = trainable;
    }
  }
}
