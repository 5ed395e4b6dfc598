/**
 * Embedding: a lookup table [numEmbeddings, embeddingDim] indexed by token ids,
 * as torch.nn.Embedding. The backward pass is a scatter-add into the table,
 * computed only when the table trains.
 */
import type { Input } from '../autograd/ops';
import { type IntegerInput, embedding } from '../autograd/transformer';
import { Parameter, Var } from '../autograd/var';
import { normal } from '../random';
import type { DeviceRequest } from '../tensor/device';
import { Tensor } from '../tensor/tensor';
import { type ParameterFactory, initKey } from './init';
import { madeParameter } from './layers';
import { Module } from './module';

export interface EmbeddingOptions {
  device?: DeviceRequest;
  /** Initialisation seed (torch's N(0, 1)); without one the next stream of the global seed is used. */
  seed?: number | bigint;
  /** Makes 'weight' ([numEmbeddings, embeddingDim]) instead of the initialisation. */
  init?: ParameterFactory;
}

function checkSize(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 1)
    throw new Error(`Embedding: ${what} must be a positive integer, got ${value}`);
}

export class Embedding extends Module {
  readonly numEmbeddings: number;
  readonly embeddingDim: number;
  readonly weight: Parameter;

  constructor(numEmbeddings: number, embeddingDim: number, options: EmbeddingOptions = {}) {
    super();
    checkSize(numEmbeddings, 'numEmbeddings');
    checkSize(embeddingDim, 'embeddingDim');
    this.numEmbeddings = numEmbeddings;
    this.embeddingDim = embeddingDim;
    const shape = [numEmbeddings, embeddingDim];
    const weight =
      options.init === undefined
        ? new Parameter(normal(shape, { ...keyOf(options.seed), device: options.device }))
        : madeParameter(options.init, 'weight', shape);
    this.weight = this.registerParameter('weight', weight);
  }

  /**
   * The rows of the table for `ids` (integers in [0, numEmbeddings)): shape
   * [...idsShape, embeddingDim]. idsShape defaults to a Tensor's shape, or
   * [length] for an array.
   */
  forward(ids: Input | IntegerInput, idsShape?: readonly number[]): Var {
    if (ids instanceof Var)
      throw new Error('Embedding: ids must be integers (a Tensor, Int32Array or array), not a Var');
    const shape = idsShape ?? (ids instanceof Tensor ? ids.shape : [ids.length]);
    return embedding(this.weight, ids, shape);
  }

  protected override describe(): string {
    return `Embedding(${this.numEmbeddings}, ${this.embeddingDim})`;
  }
}

function keyOf(seed: number | bigint | undefined): { seed: bigint; key: bigint } {
  const key = initKey(seed, 0);
  return { seed: key.seed, key: key.stream };
}
