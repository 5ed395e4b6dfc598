/**
 * AdapterLinear: what injection puts in place of a Linear. It keeps the
 * original layer as `base_layer` (PEFT's name) and any number of named
 * adapters, of any method. Several may be active model-wide, but at most one
 * per layer (unless the others are merged). Parameter names follow
 * PEFT: '<module>.base_layer.weight', '<module>.lora_A.<adapter>.weight',
 * '<module>.vera_lambda_b.<adapter>', '<module>.tera_lambda_1.<adapter>'.
 */
import type { Input } from '../autograd/ops';
import { Var, type Parameter } from '../autograd/var';
import { Linear } from '../nn/layers';
import { Module } from '../nn/module';
import type { MethodLayer } from './method';

/** 'lora_A.weight' + 'default' -> 'lora_A.default.weight'; 'vera_lambda_b' -> 'vera_lambda_b.default'. */
export function insertAdapterName(suffix: string, adapterName: string): string {
  const dot = suffix.indexOf('.');
  return dot < 0 ? `${suffix}.${adapterName}` : `${suffix.slice(0, dot)}.${adapterName}${suffix.slice(dot)}`;
}

export class AdapterLinear extends Module {
  readonly baseLayer: Linear;
  /** Set by PeftModel.disableAdapters(): forward runs the base layer alone. */
  disabled = false;
  readonly #adapters = new Map<string, MethodLayer>();
  readonly #merged: string[] = [];
  #active: string[] = [];

  constructor(base: Linear) {
    super();
    if (!(base instanceof Linear)) throw new Error('AdapterLinear wraps a Linear layer');
    this.baseLayer = this.registerModule('base_layer', base);
  }

  get inFeatures(): number {
    return this.baseLayer.inFeatures;
  }

  get outFeatures(): number {
    return this.baseLayer.outFeatures;
  }

  get adapterNames(): string[] {
    return [...this.#adapters.keys()];
  }

  /** The active adapters this layer has (forward() applies the one not merged, if any). */
  get activeAdapters(): readonly string[] {
    return [...this.#active];
  }

  /** Adapters whose update is currently added into the base weight. */
  get mergedAdapters(): readonly string[] {
    return [...this.#merged];
  }

  adapter(name: string): MethodLayer | undefined {
    return this.#adapters.get(name);
  }

  /** Every adapter's trainable parameters (not the base layer's). */
  adapterParameters(): Parameter[] {
    return [...this.#adapters.values()].flatMap((layer) => [...layer.parameters.values()]);
  }

  addAdapter(name: string, layer: MethodLayer): void {
    if (this.#adapters.has(name)) throw new Error(`this layer already has an adapter named '${name}'`);
    this.#adapters.set(name, layer);
    for (const [suffix, p] of layer.parameters) this.registerParameter(insertAdapterName(suffix, name), p);
  }

  /** Unmerges (if merged), unregisters and frees the adapter. */
  removeAdapter(name: string): void {
    const layer = this.#adapters.get(name);
    if (layer === undefined) return;
    if (this.#merged.includes(name)) this.unmerge(name);
    for (const suffix of layer.parameters.keys()) this.removeParameter(insertAdapterName(suffix, name));
    this.#adapters.delete(name);
    this.#active = this.#active.filter((n) => n !== name);
    layer.dispose();
  }

  /** Frees every adapter without touching the base weight (merged updates stay in it). */
  discardAdapters(): void {
    this.#merged.length = 0;
    for (const name of this.adapterNames) this.removeAdapter(name);
  }

  /** Those of `names` this layer would apply unmerged: more than one cannot be active together. */
  unmergedAmong(names: readonly string[]): string[] {
    return names.filter((n) => this.#adapters.has(n) && !this.#merged.includes(n));
  }

  /** Activates those of `names` this layer has (PeftModel checks unmergedAmong first). */
  setActiveAdapters(names: readonly string[]): void {
    this.#active = names.filter((n) => this.#adapters.has(n));
  }

  /**
   * What merging `names` (in order, skipping merged ones) would leave in W0, checked
   * on a copy as PEFT's safe_merge does: null if every weight stays finite, else
   * what goes wrong. W0 itself is not touched.
   */
  mergeProblem(names: readonly string[]): string | null {
    const pending = names.filter((n) => this.#adapters.has(n) && !this.#merged.includes(n));
    if (pending.length === 0) return null;
    const copy = this.baseLayer.weight.data.clone();
    try {
      for (const name of pending) {
        this.#adapters.get(name)!.addDeltaTo(copy, 1);
        const values = copy.toFloat32Array();
        const bad = values.reduce((count, v) => count + (Number.isFinite(v) ? 0 : 1), 0);
        if (bad > 0) return `merging '${name}' makes ${bad} of ${values.length} weights non-finite`;
      }
      return null;
    } finally {
      copy.dispose();
    }
  }

  /** W0 += dW of `name` (no-op if merged already). */
  merge(name: string): void {
    const layer = this.#adapters.get(name);
    if (layer === undefined || this.#merged.includes(name)) return;
    layer.addDeltaTo(this.baseLayer.weight.data, 1);
    this.#merged.push(name);
  }

  /** W0 -= dW of `name`, restoring W0 up to float32 rounding (docs/api-adapters.md bounds it). */
  unmerge(name: string): void {
    const index = this.#merged.indexOf(name);
    if (index < 0) return;
    this.#adapters.get(name)!.addDeltaTo(this.baseLayer.weight.data, -1);
    this.#merged.splice(index, 1);
  }

  forward(input: Input): Var {
    const x = input instanceof Var ? input : new Var(input);
    const name = this.#active.find((n) => !this.#merged.includes(n));
    const active = name === undefined ? undefined : this.#adapters.get(name);
    if (this.disabled || active === undefined) return this.baseLayer.forward(x);
    return active.forward(x, this.baseLayer);
  }

  protected override describe(): string {
    const parts = this.adapterNames.map(
      (n) => `${n}${this.#active.includes(n) ? '*' : ''}${this.#merged.includes(n) ? ' (merged)' : ''}`,
    );
    return `AdapterLinear[${parts.join(', ')}]`;
  }
}
