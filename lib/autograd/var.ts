/**
 * Reverse-mode automatic differentiation over native tensors.
 *
 * A Var holds a Tensor (`data`) and, once backward() has reached it, a gradient
 * (`grad`). Ops record a node (their inputs and a backward closure) only when
 * gradients are enabled and some input requires them, so frozen weights and
 * no-grad evaluation build no graph and allocate no gradient buffers.
 *
 * Ownership rules, which keep big buffers out of the garbage collector's hands:
 * - An op's output Var owns its data; dispose() (or tidy()) frees it.
 * - backward() hands each node its incoming gradient and disposes it after the
 *   node's closure returns. A closure gives a parent a gradient through `sink`,
 *   which takes ownership; a sunk tensor must not share memory with another
 *   sunk tensor (pass the incoming gradient on as a view to at most one parent,
 *   see passOn()).
 * - Gradients of intermediate Vars are freed as soon as they are used; leaves
 *   (parameters, inputs created with requiresGrad) accumulate into `grad`.
 * - Each graph is used once: backward() frees the closures and what they saved.
 */
import { native } from '../native/loader';
import { describeValue, formatShape, sameShape } from '../shape';
import { Tensor, ones } from '../tensor/tensor';

/** Receives a gradient for `target`, taking ownership of `grad`. */
export type GradSink = (target: Var, grad: Tensor) => void;

/** Computes the inputs' gradients from the output gradient `grad` (not owned: the engine frees it). */
export type BackwardFn = (grad: Tensor, sink: GradSink) => void;

interface GraphNode {
  readonly parents: readonly Var[];
  readonly backward: BackwardFn;
  /** Frees tensors the op saved for backward and owns. */
  readonly release?: () => void;
}

export interface VarOptions {
  /** Whether backward() should compute a gradient for this Var (default false). */
  requiresGrad?: boolean;
}

let gradEnabled = true;
const tidyScopes: Set<Var>[] = [];

export class Var {
  #data: Tensor;
  /** The accumulated gradient of a leaf after backward(); null until then. */
  grad: Tensor | null = null;
  /** Whether gradients flow to this Var. For op results it is derived from the inputs. */
  requiresGrad: boolean;
  #node: GraphNode | null = null;
  #graphUsed = false;

  constructor(data: Tensor, options: VarOptions = {}) {
    if (!(data instanceof Tensor)) throw new Error(`Var needs a Tensor, got ${describeValue(data)}`);
    this.#data = data;
    this.requiresGrad = options.requiresGrad ?? false;
  }

  get data(): Tensor {
    return this.#data;
  }

  get shape(): readonly number[] {
    return this.#data.shape;
  }

  get device(): Tensor['device'] {
    return this.#data.device;
  }

  get size(): number {
    return this.#data.size;
  }

  /** True for Vars that no op produced (parameters, inputs). */
  get isLeaf(): boolean {
    return this.#node === null && !this.#graphUsed;
  }

  /** Replaces the data of a leaf (e.g. loading weights); the shape must match. */
  setData(data: Tensor): void {
    if (!this.isLeaf) throw new Error('setData() is only for leaf Vars; an op result belongs to its graph');
    if (!sameShape(data.shape, this.shape)) {
      throw new Error(`setData(): shape ${formatShape(data.shape)} differs from ${formatShape(this.shape)}`);
    }
    if (data !== this.#data) this.#data.dispose();
    this.#data = data;
  }

  toFloat32Array(): Float32Array {
    return this.#data.toFloat32Array();
  }

  item(): number {
    return this.#data.item();
  }

  /**
   * Back-propagates from this Var. Without `grad` it must hold one element (a
   * loss) and its gradient is 1. Leaves that require gradients accumulate into
   * `.grad`; the graph is freed afterwards.
   */
  backward(grad?: Tensor): void {
    runBackward(this, grad);
  }

  /** Frees the data, the gradient and anything the producing op saved. Safe to call twice. */
  dispose(): void {
    this.#data.dispose();
    this.zeroGrad();
    this.releaseNode();
  }

  /** Drops the gradient (the next backward() starts from zero). */
  zeroGrad(): void {
    this.grad?.dispose();
    this.grad = null;
  }

  toString(): string {
    return `Var(${formatShape(this.shape)}, ${this.device}${this.requiresGrad ? ', requiresGrad' : ''})`;
  }

  /** @internal used by record() */
  attach(node: GraphNode): void {
    this.#node = node;
  }

  /** @internal */
  get node(): GraphNode | null {
    return this.#node;
  }

  /** @internal */
  get graphUsed(): boolean {
    return this.#graphUsed;
  }

  /** @internal frees the closure and saved tensors once backward() has used them. */
  releaseNode(): void {
    const node = this.#node;
    if (node === null) return;
    this.#node = null;
    this.#graphUsed = true;
    node.release?.();
  }
}

/**
 * A trainable (or frozen) leaf tensor of a module. `requiresGrad` is the
 * trainable flag; frozen parameters get no gradient buffers at all.
 */
export class Parameter extends Var {
  constructor(data: Tensor, options: VarOptions = {}) {
    super(data, { requiresGrad: options.requiresGrad ?? true });
  }

  override toString(): string {
    return `Parameter(${formatShape(this.shape)}, ${this.device}${this.requiresGrad ? '' : ', frozen'})`;
  }
}

/** Runs `fn` without recording any graph: for evaluation and in-place updates. */
export function noGrad<T>(fn: () => T): T {
  const previous = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = previous;
  }
}

/** Whether an op on these inputs must record a node. */
export function needsGrad(...inputs: (Var | null | undefined)[]): boolean {
  return gradEnabled && inputs.some((v) => v?.requiresGrad === true);
}

/**
 * Wraps an op's freshly allocated output. When `needsGrad(parents)` the result
 * records `backward`; otherwise `release` runs at once. The result joins the
 * innermost tidy() scope.
 */
export function record(
  data: Tensor,
  parents: readonly (Var | null | undefined)[],
  backward: BackwardFn,
  release?: () => void,
): Var {
  const present = parents.filter((p): p is Var => p instanceof Var);
  const out = new Var(data, { requiresGrad: needsGrad(...present) });
  if (out.requiresGrad) {
    out.attach({ parents: present, backward, release });
  } else {
    release?.();
  }
  tidyScopes[tidyScopes.length - 1]?.add(out);
  return out;
}

/** A new reference to `grad`'s memory (optionally reshaped), for passing it on to one parent. */
export function passOn(grad: Tensor, shape: readonly number[] = grad.shape): Tensor {
  return grad.reshape(shape);
}

function topologicalOrder(root: Var): Var[] {
  // Iterative post-order DFS: deep graphs (long training stacks) must not overflow the JS stack.
  const order: Var[] = [];
  const visited = new Set<Var>([root]);
  const stack: [Var, number][] = [[root, 0]];
  while (stack.length > 0) {
    const top = stack[stack.length - 1];
    const parents = top[0].node?.parents ?? [];
    if (top[1] < parents.length) {
      const parent = parents[top[1]++];
      if (!visited.has(parent) && parent.requiresGrad) {
        if (parent.graphUsed) {
          throw new Error(
            `backward(): ${parent} came out of a graph an earlier backward() already used; run its forward pass again`,
          );
        }
        visited.add(parent);
        stack.push([parent, 0]);
      }
    } else {
      order.push(top[0]);
      stack.pop();
    }
  }
  return order.reverse();
}

function runBackward(root: Var, seed: Tensor | undefined): void {
  if (root.graphUsed) {
    throw new Error('backward(): this graph was already used by an earlier backward(); run the forward pass again');
  }
  if (!root.requiresGrad) {
    throw new Error('backward(): this Var does not require gradients (no trainable input reached it)');
  }
  let start: Tensor;
  if (seed === undefined) {
    if (root.size !== 1) {
      throw new Error(`backward(): an output of shape ${formatShape(root.shape)} needs an explicit gradient`);
    }
    start = ones(root.shape, { device: root.device });
  } else {
    if (!(seed instanceof Tensor) || seed.size !== root.size) {
      throw new Error(`backward(): the gradient must be a Tensor of ${root.size} elements like ${root}`);
    }
    start = seed.clone();
  }

  const pending = new Map<Var, Tensor>();
  const sink: GradSink = (target, grad) => {
    if (!target.requiresGrad) {
      grad.dispose();
      return;
    }
    if (target.node === null) {
      // A leaf: accumulate into .grad across backward() calls.
      if (target.grad === null) target.grad = grad;
      else addInto(target.grad, grad);
      return;
    }
    const existing = pending.get(target);
    if (existing === undefined) pending.set(target, grad);
    else addInto(existing, grad);
  };

  const order = topologicalOrder(root);
  sink(root, start);
  for (const v of order) {
    const node = v.node;
    if (node === null) continue;
    const grad = pending.get(v);
    pending.delete(v);
    try {
      if (grad !== undefined) node.backward(grad, sink);
    } finally {
      grad?.dispose();
      v.releaseNode();
    }
  }
}

/** acc += grad, then frees grad. */
function addInto(acc: Tensor, grad: Tensor): void {
  native().axpby(acc.storage, grad.storage, 1, 1);
  grad.dispose();
}

/**
 * Runs `fn` and disposes every op result created inside it except those it
 * returns (a Var, or an array / object of Vars). Keeps training loops from
 * leaving activation buffers to the garbage collector.
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Set<Var>();
  tidyScopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (error) {
    tidyScopes.pop();
    for (const v of scope) v.dispose();
    throw error;
  }
  tidyScopes.pop();
  const kept = new Set<Var>();
  collectVars(result, kept);
  const parent = tidyScopes[tidyScopes.length - 1];
  for (const v of scope) {
    if (kept.has(v)) parent?.add(v);
    else v.dispose();
  }
  return result;
}

function collectVars(value: unknown, into: Set<Var>): void {
  if (value instanceof Var) into.add(value);
  else if (Array.isArray(value)) value.forEach((v) => collectVars(v, into));
  else if (value !== null && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    Object.values(value).forEach((v) => collectVars(v, into));
  }
}
