/** One Linear's LoRA update: trainable A [r, in] and B [out, r]. */
import { Parameter, type Var } from '../../autograd/var';
import type { Linear } from '../../nn/layers';
import type { Tensor } from '../../tensor/tensor';
import { addLowRankDelta, type LowRankParts, lowRankLinear } from '../low-rank';
import type { MethodLayer } from '../method';

export class LoraLayer implements MethodLayer {
  readonly parameters: ReadonlyMap<string, Parameter>;
  /** s in dW = s B A: alpha / r, or alpha / sqrt(r) with rank-stabilised LoRA (per module). */
  readonly scaling: number;
  readonly #parts: LowRankParts;

  constructor(a: Tensor, b: Tensor, scaling: number) {
    const pa = new Parameter(a);
    const pb = new Parameter(b);
    this.parameters = new Map([
      ['lora_A.weight', pa],
      ['lora_B.weight', pb],
    ]);
    this.scaling = scaling;
    this.#parts = { a: pa, b: pb, scale: scaling };
  }

  forward(input: Var, base: Linear): Var {
    return lowRankLinear(input, base.weight, base.bias, this.#parts);
  }

  addDeltaTo(weight: Tensor, sign: 1 | -1): void {
    addLowRankDelta(weight, this.#parts, sign);
  }

  sharedTensors(): Record<string, Tensor> {
    return {};
  }

  frozenTensors(): Record<string, Tensor> {
    return {};
  }

  dispose(): void {
    for (const p of this.parameters.values()) p.dispose();
  }
}
