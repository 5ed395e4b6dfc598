/**
 * PeftModel: the handle injectAdapter() and loadAdapter() return. It wraps the
 * model (which injection changed in place) and offers PEFT's operations with
 * camelCased names: printTrainableParameters, setAdapter, deleteAdapter,
 * mergeAdapter, unmergeAdapter, mergeAndUnload, unload, and a disableAdapters
 * scope (PEFT's `with model.disable_adapter():`).
 */
import type { Parameter, Var } from '../autograd/var';
import {
  type GenerateOptions,
  type GenerateOutput,
  type GenerationStep,
  generate,
  generateStream,
  isGenerativeModel,
} from '../generation/generate';
import type { TokenIds } from '../models/inputs';
import { Module } from '../nn/module';
import type { AdapterConfig } from './config';
import type { AdapterLinear } from './layer';
import {
  adapterLayers,
  adapterState,
  applyActiveAdapters,
  attachAdapter,
  checkOneActive,
  forgetAdapterState,
  planInjection,
} from './inject';

export interface MergeOptions {
  /** Check on a copy that the merged weights are finite before writing any (PEFT's safe_merge; default false). */
  safeMerge?: boolean;
}

export class PeftModel<M extends Module = Module> {
  /** The model itself (its adapted Linear layers are AdapterLinear wrappers). */
  readonly model: M;

  constructor(model: M) {
    if (!(model instanceof Module)) throw new Error('PeftModel wraps an nn.Module');
    this.model = model;
  }

  /** Each adapter's config by name. */
  get peftConfig(): Record<string, AdapterConfig> {
    return Object.fromEntries([...adapterState(this.model).adapters].map(([name, r]) => [name, r.config]));
  }

  get adapterNames(): string[] {
    return [...adapterState(this.model).adapters.keys()];
  }

  /** The first active adapter (null when none is left), as PEFT's active_adapter. */
  get activeAdapter(): string | null {
    return adapterState(this.model).active[0] ?? null;
  }

  /** Every active adapter, as PEFT's active_adapters. */
  get activeAdapters(): string[] {
    return [...adapterState(this.model).active];
  }

  /** The model's forward pass, with its arguments (a language model's ids and options included). */
  forward(...args: Parameters<M['forward']>): Var {
    const forward = this.model.forward as (...a: Parameters<M['forward']>) => Var;
    return forward.apply(this.model, args);
  }

  /** The language model's generate() with the adapters as they are (merged or not). */
  generate(ids: TokenIds, options: GenerateOptions): GenerateOutput {
    return generate(this.#languageModel('generate'), ids, options);
  }

  /** The language model's generateStream() with the adapters as they are. */
  generateStream(ids: TokenIds, options: GenerateOptions): AsyncGenerator<GenerationStep, GenerateOutput, undefined> {
    return generateStream(this.#languageModel('generateStream'), ids, options);
  }

  namedParameters(): [string, Parameter][] {
    return this.model.namedParameters();
  }

  parameters(): Parameter[] {
    return this.model.parameters();
  }

  /** The active adapters' parameters (what an optimiser should get). */
  trainableParameters(): Parameter[] {
    return this.model.trainableParameters();
  }

  /** The adapted layers with their dotted names. */
  adapterLayers(): [string, AdapterLinear][] {
    return adapterLayers(this.model);
  }

  /** [trainable, all] parameter counts, as PEFT's get_nb_trainable_parameters (frozen factors are not parameters). */
  getNbTrainableParameters(): [trainable: number, all: number] {
    return [this.model.numParameters({ trainableOnly: true }), this.model.numParameters()];
  }

  /** Prints and returns PEFT's line: "trainable params: 1,536 || all params: 1,050,112 || trainable%: 0.1463". */
  printTrainableParameters(): string {
    const [trainable, all] = this.getNbTrainableParameters();
    const format = (n: number) => n.toLocaleString('en-US');
    const percent = all === 0 ? 0 : (100 * trainable) / all;
    const line = `trainable params: ${format(trainable)} || all params: ${format(all)} || trainable%: ${percent.toFixed(4)}`;
    console.log(line);
    return line;
  }

  /** Injects another adapter (PEFT's add_adapter); the active adapter does not change. */
  addAdapter(adapterName: string, config: AdapterConfig): this {
    injectInto(this.model, config, adapterName);
    return this;
  }

  /**
   * Makes these adapters the ones forward() uses and the only ones that train.
   * Several may be active if no layer has more than one of them unmerged.
   */
  setAdapter(adapterNames: string | readonly string[]): void {
    const names = typeof adapterNames === 'string' ? [adapterNames] : [...adapterNames];
    if (names.length === 0) throw new Error('setAdapter: name at least one adapter');
    names.forEach((n) => this.#require(n));
    applyActiveAdapters(this.model, names);
  }

  /** Removes an adapter everywhere (unmerging it first); a layer left with none becomes its Linear again. */
  deleteAdapter(adapterName: string): void {
    const state = adapterState(this.model);
    this.#require(adapterName);
    for (const [name, layer] of adapterLayers(this.model)) {
      layer.removeAdapter(adapterName);
      if (layer.adapterNames.length === 0) this.model.setSubmodule(name, layer.baseLayer);
    }
    state.adapters.delete(adapterName);
    const remaining = state.active.filter((n) => n !== adapterName);
    const fallback = state.adapters.keys().next().value;
    applyActiveAdapters(this.model, remaining.length > 0 || fallback === undefined ? remaining : [fallback]);
  }

  /**
   * Adds the adapters' updates into the base weights (default: the active
   * adapters). With `safeMerge` (PEFT's safe_merge), every layer's merged weight
   * is first computed on a copy and checked for NaN and infinities; if any is
   * not finite, nothing is merged and the error names the adapters and layers.
   */
  mergeAdapter(adapterNames?: readonly string[] | null, options: MergeOptions = {}): void {
    const names = adapterNames ?? this.activeAdapters;
    names.forEach((n) => this.#require(n));
    const layers = adapterLayers(this.model);
    if (options.safeMerge === true) {
      const problems = layers
        .map(([name, layer]) => [name, layer.mergeProblem(names)] as const)
        .filter(([, problem]) => problem !== null)
        .map(([name, problem]) => `'${name}': ${problem}`);
      if (problems.length > 0) {
        throw new Error(
          `safe merge refused, nothing was merged (the adapter seems broken):\n  - ${problems.join('\n  - ')}`,
        );
      }
    }
    for (const [, layer] of layers) names.forEach((n) => layer.merge(n));
  }

  /** Subtracts every merged update again, restoring W0 up to float32 rounding. */
  unmergeAdapter(): void {
    const layers = adapterLayers(this.model);
    for (const [name, layer] of layers) checkOneActive(name, layer.activeAdapters);
    for (const [, layer] of layers) {
      for (const name of [...layer.mergedAdapters].reverse()) layer.unmerge(name);
    }
  }

  /** Whether any layer holds a merged update. */
  get merged(): boolean {
    return adapterLayers(this.model).some(([, layer]) => layer.mergedAdapters.length > 0);
  }

  /**
   * Merges the active adapters, then replaces every AdapterLinear by its Linear
   * and frees all adapters: returns the plain model, at zero extra cost per token.
   */
  mergeAndUnload(options: MergeOptions = {}): M {
    this.mergeAdapter(null, options);
    return this.#unwrap();
  }

  /** Removes every adapter without merging (unmerging any merged one): returns the base model. */
  unload(): M {
    this.unmergeAdapter();
    return this.#unwrap();
  }

  /**
   * Runs `fn` with every adapter switched off, so the model computes exactly
   * the base output. Merged adapters are unmerged first (with a warning), as PEFT
   * does. An async `fn` keeps them off until its promise settles.
   */
  disableAdapters<T>(fn: () => T): T {
    if (this.merged) {
      process.emitWarning('disableAdapters: unmerging merged adapters first; the base weights are restored');
      this.unmergeAdapter();
    }
    const layers = adapterLayers(this.model).map(([, layer]) => layer);
    const restore = () => layers.forEach((layer) => (layer.disabled = false));
    layers.forEach((layer) => (layer.disabled = true));
    let result: T;
    try {
      result = fn();
    } catch (error) {
      restore();
      throw error;
    }
    if (result instanceof Promise) return result.finally(restore) as T;
    restore();
    return result;
  }

  toString(): string {
    return `PeftModel(active=[${this.activeAdapters.join(', ')}], adapters=[${this.adapterNames.join(', ')}])\n${this.model}`;
  }

  #languageModel(what: string) {
    const model: unknown = this.model;
    if (!isGenerativeModel(model)) {
      throw new Error(
        `${what} needs a language model (tera.models.CausalLM); this PeftModel wraps a ${this.model.constructor.name}`,
      );
    }
    return model;
  }

  #require(adapterName: string): void {
    if (!adapterState(this.model).adapters.has(adapterName)) {
      throw new Error(`no adapter named '${adapterName}'; adapters: ${this.adapterNames.join(', ') || '(none)'}`);
    }
  }

  #unwrap(): M {
    for (const [name, layer] of adapterLayers(this.model)) {
      layer.discardAdapters();
      this.model.setSubmodule(name, layer.baseLayer);
    }
    forgetAdapterState(this.model);
    return this.model;
  }
}

function injectInto(model: Module, config: AdapterConfig, adapterName: string): void {
  const plan = planInjection(model, config, adapterName);
  const problems = config.injectionProblems();
  if (problems.length > 0) {
    throw new Error(
      `injectAdapter: this ${config.peftType} config cannot make a new adapter:\n  - ${problems.join('\n  - ')}`,
    );
  }
  const built = plan.method.createLayers(config, plan.layers, { adapterName, stored: null });
  attachAdapter(model, plan, built, true);
}

/**
 * Replaces the Linear layers of `model` that `config` targets with adapted
 * layers, in place, and freezes everything but the adapters. The first adapter
 * of a model becomes the active one. Throws, leaving the model unchanged, if a
 * target matches nothing (listing the modules that exist), a matched module is
 * not a Linear, or a layer's shape does not suit the method.
 */
export function injectAdapter<M extends Module>(
  model: M | PeftModel<M>,
  config: AdapterConfig,
  adapterName = 'default',
): PeftModel<M> {
  const module = model instanceof PeftModel ? model.model : model;
  injectInto(module, config, adapterName);
  return model instanceof PeftModel ? model : new PeftModel(module);
}
