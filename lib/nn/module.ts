/**
 * Module: a tree of named children and parameters, as in PyTorch. Names are
 * dotted paths ("0.weight", "encoder.fc1.bias"); stateDict() and the adapter
 * files use them, and adapter injection finds its targets by them.
 */
import { types } from 'node:util';

import type { Input } from '../autograd/ops';
import { Parameter, type Var } from '../autograd/var';
import { readSafetensors, writeSafetensors } from '../io/safetensors';
import type { DeviceRequest } from '../tensor/device';
import { resolveDevice } from '../tensor/device';
import { formatShape, sameShape } from '../shape';
import { Tensor } from '../tensor/tensor';

/** A tensor to load: a Tensor, a Float32Array of the parameter's size, or data with its shape. */
export type StateValue = Tensor | Float32Array | { data: Float32Array; shape: readonly number[] };

export interface LoadStateOptions {
  /** Refuse missing and unexpected keys (default true). Shapes must match either way. */
  strict?: boolean;
}

export interface LoadStateResult {
  missingKeys: string[];
  unexpectedKeys: string[];
}

export abstract class Module {
  readonly #parameters = new Map<string, Parameter>();
  readonly #children = new Map<string, Module>();

  abstract forward(input: Input): Var;

  /** Adds (or replaces) a parameter of this module under `name`. */
  protected registerParameter(name: string, parameter: Parameter): Parameter {
    checkName(name, 'parameter');
    if (!(parameter instanceof Parameter)) throw new Error(`registerParameter('${name}') needs a Parameter`);
    this.#parameters.set(name, parameter);
    return parameter;
  }

  protected removeParameter(name: string): void {
    this.#parameters.delete(name);
  }

  /** Adds (or replaces) a child module under `name` (no dots). */
  protected registerModule<M extends Module>(name: string, module: M): M {
    checkName(name, 'module');
    if (name.includes('.')) throw new Error(`module name '${name}' must not contain a dot`);
    if (!(module instanceof Module)) throw new Error(`registerModule('${name}') needs a Module`);
    this.#children.set(name, module);
    return module;
  }

  namedChildren(): [string, Module][] {
    return [...this.#children];
  }

  /** This module ('' ) and every descendant with its dotted path, parents first. */
  namedModules(prefix = ''): [string, Module][] {
    const out: [string, Module][] = [[prefix, this]];
    for (const [name, child] of this.#children) out.push(...child.namedModules(join(prefix, name)));
    return out;
  }

  /**
   * Every parameter with its dotted path. One shared by two modules (tied
   * embeddings) is listed once, under its first path, unless `removeDuplicate`
   * is false (as PyTorch's named_parameters).
   */
  namedParameters(prefix = '', options: { removeDuplicate?: boolean } = {}): [string, Parameter][] {
    const removeDuplicate = options.removeDuplicate ?? true;
    const seen = new Set<Parameter>();
    const out: [string, Parameter][] = [];
    for (const [path, module] of this.namedModules(prefix)) {
      for (const [name, p] of module.#parameters) {
        if (removeDuplicate && seen.has(p)) continue;
        seen.add(p);
        out.push([join(path, name), p]);
      }
    }
    return out;
  }

  parameters(): Parameter[] {
    return this.namedParameters().map(([, p]) => p);
  }

  /** The parameters that currently require gradients. */
  trainableParameters(): Parameter[] {
    return this.parameters().filter((p) => p.requiresGrad);
  }

  /**
   * The dotted name of the layer that maps hidden states to the vocabulary
   * (transformers' get_output_embeddings()), or null if the model has none.
   * PEFT's 'all-linear' leaves that layer out.
   */
  outputEmbeddingsName(): string | null {
    return null;
  }

  /** The descendant at a dotted path; the error lists the names that exist. */
  getSubmodule(path: string): Module {
    if (path === '') return this;
    const found = path
      .split('.')
      .reduce<Module | undefined>((m, part) => (m === undefined ? undefined : m.#children.get(part)), this);
    if (found === undefined) {
      const names = this.namedModules()
        .map(([n]) => n)
        .filter((n) => n !== '');
      throw new Error(`no submodule '${path}'; modules: ${names.join(', ') || '(none)'}`);
    }
    return found;
  }

  /** Replaces the descendant at `path` (which must exist) with `module`. */
  setSubmodule(path: string, module: Module): void {
    const dot = path.lastIndexOf('.');
    const parent = this.getSubmodule(dot < 0 ? '' : path.slice(0, dot));
    const name = path.slice(dot + 1);
    if (!parent.#children.has(name)) this.getSubmodule(path); // throws with the list of names
    parent.#children.set(name, module);
  }

  /** Every parameter's tensor by dotted name (the live tensors, not copies). */
  stateDict(): Record<string, Tensor> {
    return Object.fromEntries(this.namedParameters().map(([name, p]) => [name, p.data]));
  }

  /**
   * Copies values into the parameters. Every key and shape is checked before
   * anything is written, so a mismatch leaves the module unchanged.
   */
  loadStateDict(state: Record<string, StateValue>, options: LoadStateOptions = {}): LoadStateResult {
    const strict = options.strict ?? true;
    if (state === null || typeof state !== 'object') throw new Error('loadStateDict: state must be an object');
    const params = new Map(this.namedParameters());
    const unexpectedKeys = Object.keys(state).filter((k) => !params.has(k));
    const missingKeys = [...params.keys()].filter((k) => !Object.prototype.hasOwnProperty.call(state, k));
    if (strict && (unexpectedKeys.length > 0 || missingKeys.length > 0)) {
      const parts = [];
      if (missingKeys.length > 0) parts.push(`missing keys: ${missingKeys.join(', ')}`);
      if (unexpectedKeys.length > 0) parts.push(`unexpected keys: ${unexpectedKeys.join(', ')}`);
      throw new Error(`loadStateDict: ${parts.join('; ')}`);
    }
    const writes: [Parameter, StateValue][] = [];
    const problems: string[] = [];
    for (const [name, value] of Object.entries(state)) {
      const p = params.get(name);
      if (p === undefined) continue;
      const problem = stateValueProblem(name, value, p);
      if (problem === null) writes.push([p, value]);
      else problems.push(problem);
    }
    if (problems.length > 0) throw new Error(`loadStateDict: ${problems.join('; ')}`);
    for (const [p, value] of writes) writeInto(p, value);
    return { missingKeys, unexpectedKeys };
  }

  /** Loads parameters from a safetensors file (F32, F16, BF16 or F64 stored; converted to float32). */
  loadSafetensors(file: string, options: LoadStateOptions = {}): LoadStateResult {
    const { tensors } = readSafetensors(file);
    return this.loadStateDict(tensors, options);
  }

  /** Writes every parameter to a safetensors file (F32), atomically. */
  saveSafetensors(file: string, metadata: Record<string, string> = {}): void {
    const tensors = Object.fromEntries(
      this.namedParameters().map(([name, p]) => [name, { data: p.toFloat32Array(), shape: [...p.shape] }]),
    );
    writeSafetensors(file, tensors, metadata);
  }

  /** Sets requiresGrad on every parameter: false freezes the module. */
  requiresGrad(flag = true): this {
    for (const p of this.parameters()) p.requiresGrad = flag;
    return this;
  }

  /** Moves every parameter to `device` (copies; gradients are dropped). */
  to(device: DeviceRequest): this {
    const target = resolveDevice(device);
    for (const p of this.parameters()) {
      if (p.device === target) continue;
      p.zeroGrad();
      p.setData(p.data.clone(target));
    }
    return this;
  }

  /** Total element count of the parameters (only trainable ones if asked). */
  numParameters(options: { trainableOnly?: boolean } = {}): number {
    const list = options.trainableOnly ? this.trainableParameters() : this.parameters();
    return list.reduce((n, p) => n + p.size, 0);
  }

  /** Frees every parameter's memory; the module is unusable afterwards. */
  dispose(): void {
    for (const p of this.parameters()) p.dispose();
  }

  /** One line for this module in the printed tree (override to show sizes). */
  protected describe(): string {
    return this.constructor.name;
  }

  toString(): string {
    const lines = [`${this.describe()}${this.#children.size > 0 ? '(' : ''}`];
    for (const [name, child] of this.#children) {
      const inner = child.toString().split('\n').join('\n  ');
      lines.push(`  (${name}): ${inner}`);
    }
    if (this.#children.size > 0) lines.push(')');
    return lines.join('\n');
  }
}

function join(prefix: string, name: string): string {
  return prefix === '' ? name : `${prefix}.${name}`;
}

function checkName(name: string, what: string): void {
  if (typeof name !== 'string' || name === '') throw new Error(`a ${what} name must be a non-empty string`);
}

/** Why `value` cannot be loaded into `p`, or null if it can. */
function stateValueProblem(name: string, value: StateValue, p: Parameter): string | null {
  const expected = formatShape(p.shape);
  if (value instanceof Tensor) {
    if (value.disposed) return `'${name}' is a disposed tensor`;
    if (!sameShape(value.shape, p.shape)) {
      return `'${name}' has shape ${formatShape(value.shape)}, the model expects ${expected}`;
    }
    return null;
  }
  if (types.isFloat32Array(value)) {
    return value.length === p.size ? null : `'${name}' has ${value.length} values, the model expects ${expected}`;
  }
  const entry = value as { data?: unknown; shape?: unknown };
  if (entry === null || typeof entry !== 'object' || !types.isFloat32Array(entry.data) || !Array.isArray(entry.shape)) {
    return `'${name}' must be a Tensor, a Float32Array or {data: Float32Array, shape}`;
  }
  if (!sameShape(entry.shape as number[], p.shape) || entry.data.length !== p.size) {
    return `'${name}' has shape ${formatShape(entry.shape as number[])}, the model expects ${expected}`;
  }
  return null;
}

function writeInto(p: Parameter, value: StateValue): void {
  if (value instanceof Tensor) {
    if (value.device === p.device) p.data.storage.copyFrom(value.storage);
    else p.data.set(value.toFloat32Array());
  } else {
    p.data.set(types.isFloat32Array(value) ? value : value.data);
  }
}
