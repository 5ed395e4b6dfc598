/**
 * Optimisers over Parameters. Each update runs one native kernel per parameter
 * buffer (adamwStep / sgdStep); the per-parameter state (moments, momentum) is
 * allocated on the parameter's device the first time it has a gradient, so
 * frozen parameters cost nothing.
 */
import { Parameter } from '../autograd/var';
import { native } from '../native/loader';
import { Tensor, zeros } from '../tensor/tensor';

function checkNumber(value: number, what: string, min: number, max = Infinity, maxInclusive = true): number {
  const ok = Number.isFinite(value) && value >= min && (maxInclusive ? value <= max : value < max);
  if (!ok) {
    throw new Error(`${what} must be a number in [${min}, ${max}${maxInclusive ? ']' : ')'}, got ${String(value)}`);
  }
  return value;
}

export abstract class Optimizer {
  readonly params: readonly Parameter[];
  /** The learning rate the next step() uses; schedules set it. */
  lr: number;
  #stepCount = 0;

  constructor(params: Iterable<Parameter>, lr: number) {
    const list = [...new Set(params)];
    list.forEach((p, i) => {
      if (!(p instanceof Parameter)) throw new Error(`${this.constructor.name}: params[${i}] is not a Parameter`);
    });
    if (list.length === 0) throw new Error(`${this.constructor.name}: got no parameters to optimise`);
    this.params = list;
    this.lr = checkNumber(lr, `${this.constructor.name}: lr`, 0);
  }

  /** How many step() calls have run. */
  get stepCount(): number {
    return this.#stepCount;
  }

  /** Updates every parameter that has a gradient. */
  step(): void {
    checkNumber(this.lr, `${this.constructor.name}: lr`, 0);
    this.#stepCount++;
    for (const p of this.params) {
      if (p.grad !== null) this.update(p, p.grad);
    }
  }

  /** Drops every parameter's gradient (PyTorch's zero_grad(set_to_none=True)). */
  zeroGrad(): void {
    for (const p of this.params) p.zeroGrad();
  }

  /** Frees the optimiser state. */
  abstract dispose(): void;

  protected abstract update(p: Parameter, grad: Tensor): void;
}

export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  /** Decoupled weight decay (default 0.01, as PyTorch's AdamW). */
  weightDecay?: number;
}

interface AdamState {
  m: Tensor;
  v: Tensor;
  steps: number;
}

/** AdamW (Loshchilov & Hutter), the same update as torch.optim.AdamW. */
export class AdamW extends Optimizer {
  readonly betas: [number, number];
  readonly eps: number;
  readonly weightDecay: number;
  readonly #state = new Map<Parameter, AdamState>();

  constructor(params: Iterable<Parameter>, options: AdamWOptions = {}) {
    super(params, options.lr ?? 1e-3);
    const [b1, b2] = options.betas ?? [0.9, 0.999];
    this.betas = [checkNumber(b1, 'AdamW: betas[0]', 0, 1, false), checkNumber(b2, 'AdamW: betas[1]', 0, 1, false)];
    this.eps = checkNumber(options.eps ?? 1e-8, 'AdamW: eps', 0);
    this.weightDecay = checkNumber(options.weightDecay ?? 0.01, 'AdamW: weightDecay', 0);
  }

  protected update(p: Parameter, grad: Tensor): void {
    let state = this.#state.get(p);
    if (state === undefined) {
      state = { m: zeros(p.shape, { device: p.device }), v: zeros(p.shape, { device: p.device }), steps: 0 };
      this.#state.set(p, state);
    }
    state.steps++;
    const [b1, b2] = this.betas;
    native().adamwStep(
      p.data.storage,
      grad.storage,
      state.m.storage,
      state.v.storage,
      this.lr,
      b1,
      b2,
      this.eps,
      this.weightDecay,
      state.steps,
    );
  }

  dispose(): void {
    for (const { m, v } of this.#state.values()) {
      m.dispose();
      v.dispose();
    }
    this.#state.clear();
  }
}

export interface SGDOptions {
  lr?: number;
  momentum?: number;
  weightDecay?: number;
  nesterov?: boolean;
}

/** SGD with optional (Nesterov) momentum and L2 weight decay, as torch.optim.SGD (dampening 0). */
export class SGD extends Optimizer {
  readonly momentum: number;
  readonly weightDecay: number;
  readonly nesterov: boolean;
  readonly #buffers = new Map<Parameter, Tensor>();

  constructor(params: Iterable<Parameter>, options: SGDOptions = {}) {
    super(params, options.lr ?? 1e-3);
    this.momentum = checkNumber(options.momentum ?? 0, 'SGD: momentum', 0);
    this.weightDecay = checkNumber(options.weightDecay ?? 0, 'SGD: weightDecay', 0);
    this.nesterov = options.nesterov ?? false;
    if (this.nesterov && this.momentum === 0) throw new Error('SGD: nesterov needs a momentum > 0');
  }

  protected update(p: Parameter, grad: Tensor): void {
    let buffer: Tensor | null = null;
    if (this.momentum > 0) {
      buffer = this.#buffers.get(p) ?? null;
      if (buffer === null) {
        buffer = zeros(p.shape, { device: p.device });
        this.#buffers.set(p, buffer);
      }
    }
    native().sgdStep(
      p.data.storage,
      grad.storage,
      buffer?.storage ?? null,
      this.lr,
      this.momentum,
      this.weightDecay,
      this.nesterov,
    );
  }

  dispose(): void {
    for (const b of this.#buffers.values()) b.dispose();
    this.#buffers.clear();
  }
}

/**
 * Scales the gradients of `params` so their joint L2 norm is at most maxNorm
 * (torch.nn.utils.clip_grad_norm_). Returns the norm before clipping.
 */
export function clipGradNorm(params: Iterable<Parameter>, maxNorm: number): number {
  checkNumber(maxNorm, 'clipGradNorm: maxNorm', 0);
  const grads = [...params].map((p) => p.grad).filter((g): g is Tensor => g !== null);
  const total = Math.sqrt(grads.reduce((s, g) => s + native().dot(g.storage, g.storage), 0));
  const coefficient = maxNorm / (total + 1e-6);
  if (coefficient < 1) {
    for (const g of grads) native().axpby(g.storage, g.storage, coefficient, 0);
  }
  return total;
}
