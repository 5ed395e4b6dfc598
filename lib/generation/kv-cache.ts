/**
 * StaticKeyValueCache: the KV cache generation uses (transformers'
 * StaticCache). Every attention layer gets key and value buffers
 * [batch, kvHeads, capacity, headDim] allocated once, at the final length
 * (prompt plus new tokens); each forward pass writes its new keys and values
 * into them in place (kernels.writeSlice at the cache's length), so decoding
 * never concatenates or reallocates. The buffers start at zero: the
 * attention's causal offset gives the unwritten tail exactly zero weight.
 *
 * Ownership: the cache owns its buffers (dispose() frees them); update()
 * copies the layer's keys and values in, so they may be freed after the pass.
 */
import type { Input } from '../autograd/ops';
import type { Var } from '../autograd/var';
import { writeSlice } from '../kernels/slices';
import type { KeyValueCache } from '../nn/attention';
import { describeValue, formatShape } from '../shape';
import type { DeviceRequest } from '../tensor/device';
import { type Tensor, zeros } from '../tensor/tensor';

export interface StaticCacheShape {
  layers: number;
  batch: number;
  kvHeads: number;
  headDim: number;
  /** Tokens the cache can hold: the prompt plus every new token. */
  capacity: number;
  device?: DeviceRequest;
}

export class StaticKeyValueCache implements KeyValueCache {
  readonly shape: Readonly<StaticCacheShape>;
  #length = 0;
  /** Tokens written by the current pass, by layer (all layers must agree before advance()). */
  readonly #pending: (number | null)[];
  readonly #keys: Tensor[] = [];
  readonly #values: Tensor[] = [];

  constructor(shape: StaticCacheShape) {
    for (const key of ['layers', 'batch', 'kvHeads', 'headDim', 'capacity'] as const) {
      if (!Number.isSafeInteger(shape[key]) || shape[key] < 1) {
        throw new Error(`StaticKeyValueCache: ${key} must be an integer >= 1, got ${describeValue(shape[key])}`);
      }
    }
    this.shape = { ...shape };
    const dims = [shape.batch, shape.kvHeads, shape.capacity, shape.headDim];
    try {
      for (let layer = 0; layer < shape.layers; layer++) {
        this.#keys.push(zeros(dims, { device: shape.device }));
        this.#values.push(zeros(dims, { device: shape.device }));
      }
    } catch (error) {
      this.dispose();
      throw error;
    }
    this.#pending = new Array<number | null>(shape.layers).fill(null);
  }

  get length(): number {
    return this.#length;
  }

  update(layer: number, keys: Var, values: Var): { keys: Input; values: Input } {
    const { layers, batch, kvHeads, headDim, capacity } = this.shape;
    if (!Number.isInteger(layer) || layer < 0 || layer >= layers) {
      throw new Error(`StaticKeyValueCache: layer ${describeValue(layer)} is outside 0..${layers - 1}`);
    }
    const tokens = keys.shape[2];
    for (const [what, t] of [
      ['keys', keys],
      ['values', values],
    ] as const) {
      const [b, h, n, d] = t.shape;
      if (t.shape.length !== 4 || b !== batch || h !== kvHeads || n !== tokens || d !== headDim) {
        throw new Error(
          `StaticKeyValueCache: layer ${layer}'s ${what} are ${formatShape(t.shape)}, expected [${batch}, ${kvHeads}, ${tokens}, ${headDim}]`,
        );
      }
    }
    if (this.#length + tokens > capacity) {
      throw new Error(
        `StaticKeyValueCache: ${this.#length} cached and ${tokens} new tokens exceed its capacity of ${capacity}`,
      );
    }
    if (this.#pending[layer] !== null) {
      throw new Error(`StaticKeyValueCache: layer ${layer} was updated twice in one pass (call advance() after each)`);
    }
    writeSlice(this.#keys[layer], keys.data, 2, this.#length);
    writeSlice(this.#values[layer], values.data, 2, this.#length);
    this.#pending[layer] = tokens;
    return { keys: this.#keys[layer], values: this.#values[layer] };
  }

  /** Ends a forward pass: the tokens every layer wrote become cached. */
  advance(): void {
    const written = this.#pending[0];
    if (written === null || this.#pending.some((t) => t !== written)) {
      throw new Error(
        `StaticKeyValueCache: advance() after a pass that did not update every layer alike (tokens by layer: ${this.#pending.join(', ')})`,
      );
    }
    this.#length += written;
    this.#pending.fill(null);
  }

  /** Forgets what the current pass wrote (a pass that failed part way). */
  discardPending(): void {
    this.#pending.fill(null);
  }

  dispose(): void {
    for (const t of [...this.#keys, ...this.#values]) t.dispose();
  }
}
