/**
 * Normalisation layers over the last dimension: LayerNorm (torch.nn.LayerNorm,
 * GPT-2) and RMSNorm (transformers' LlamaRMSNorm). Both start at weight 1
 * (and LayerNorm's bias at 0), as PyTorch initialises them.
 */
import type { Input } from '../autograd/ops';
import { layerNorm, rmsNorm } from '../autograd/transformer';
import { Parameter, type Var } from '../autograd/var';
import type { DeviceRequest } from '../tensor/device';
import { full } from '../tensor/tensor';
import type { ParameterFactory } from './init';
import { madeParameter } from './layers';
import { Module } from './module';

export interface NormLayerOptions {
  /** Added to the variance (LayerNorm, default 1e-5) or the mean square (RMSNorm, default 1e-6). */
  eps?: number;
  device?: DeviceRequest;
  /** Makes 'weight' (and LayerNorm's 'bias'), each [dim], instead of ones and zeros. */
  init?: ParameterFactory;
}

function checkNorm(name: string, dim: number, eps: number): void {
  if (!Number.isInteger(dim) || dim < 1) throw new Error(`${name}: dim must be a positive integer, got ${dim}`);
  if (typeof eps !== 'number' || !Number.isFinite(eps) || eps < 0) {
    throw new Error(`${name}: eps must be a finite number >= 0, got ${String(eps)}`);
  }
}

function normParameter(options: NormLayerOptions, name: string, dim: number, value: number): Parameter {
  if (options.init !== undefined) return madeParameter(options.init, name, [dim]);
  return new Parameter(full([dim], value, { device: options.device }));
}

export class LayerNorm extends Module {
  readonly dim: number;
  readonly eps: number;
  readonly weight: Parameter;
  readonly bias: Parameter;

  constructor(dim: number, options: NormLayerOptions = {}) {
    super();
    this.eps = options.eps ?? 1e-5;
    checkNorm('LayerNorm', dim, this.eps);
    this.dim = dim;
    this.weight = this.registerParameter('weight', normParameter(options, 'weight', dim, 1));
    this.bias = this.registerParameter('bias', normParameter(options, 'bias', dim, 0));
  }

  forward(input: Input): Var {
    return layerNorm(input, this.weight, this.bias, { eps: this.eps });
  }

  protected override describe(): string {
    return `LayerNorm(${this.dim}, eps=${this.eps})`;
  }
}

export class RMSNorm extends Module {
  readonly dim: number;
  readonly eps: number;
  readonly weight: Parameter;

  constructor(dim: number, options: NormLayerOptions = {}) {
    super();
    this.eps = options.eps ?? 1e-6;
    checkNorm('RMSNorm', dim, this.eps);
    this.dim = dim;
    this.weight = this.registerParameter('weight', normParameter(options, 'weight', dim, 1));
  }

  forward(input: Input): Var {
    return rmsNorm(input, this.weight, { eps: this.eps });
  }

  protected override describe(): string {
    return `RMSNorm(${this.dim}, eps=${this.eps})`;
  }
}
