/** One Linear's VeRA update: trainable lambda_b [out] and lambda_d [r] over shared frozen A, B. */
import { Parameter, Var } from '../../autograd/var';
import type { Linear } from '../../nn/layers';
import { type Tensor, full, zeros } from '../../tensor/tensor';
import { addLowRankDelta, type LowRankParts, lowRankLinear } from '../low-rank';
import type { MethodLayer } from '../method';
import type { Shared } from '../registry';
import type { VeraConfig } from './config';
import type { VeraProjections } from './projections';

export class VeraLayer implements MethodLayer {
  readonly parameters: ReadonlyMap<string, Parameter>;
  readonly #parts: LowRankParts;
  readonly #projections: Shared<VeraProjections>;
  readonly #saveProjection: boolean;

  /** Takes over one reference to `projections` (dispose() releases it). */
  constructor(config: VeraConfig, projections: Shared<VeraProjections>, base: Linear) {
    const device = base.weight.device;
    const shared = projections.value;
    const lambdaB = new Parameter(zeros([base.outFeatures], { device }));
    const lambdaD = new Parameter(full([shared.r], config.dInitial, { device }));
    this.parameters = new Map([
      ['vera_lambda_b', lambdaB],
      ['vera_lambda_d', lambdaD],
    ]);
    this.#parts = {
      a: new Var(shared.sliceA(base.inFeatures)),
      b: new Var(shared.sliceB(base.outFeatures)),
      scale: 1,
      rankScale: lambdaD,
      outScale: lambdaB,
    };
    this.#projections = projections;
    this.#saveProjection = config.saveProjection;
  }

  /** This layer's slice of the shared frozen A, [r, in]. */
  get projectionA(): Tensor {
    return this.#parts.a.data;
  }

  /** This layer's slice of the shared frozen B, [out, r]. */
  get projectionB(): Tensor {
    return this.#parts.b.data;
  }

  forward(input: Var, base: Linear): Var {
    return lowRankLinear(input, base.weight, base.bias, this.#parts);
  }

  addDeltaTo(weight: Tensor, sign: 1 | -1): void {
    addLowRankDelta(weight, this.#parts, sign);
  }

  sharedTensors(): Record<string, Tensor> {
    return this.#saveProjection ? this.frozenTensors() : {};
  }

  frozenTensors(): Record<string, Tensor> {
    return this.#projections.value.tensors();
  }

  dispose(): void {
    for (const p of this.parameters.values()) p.dispose();
    this.#projections.release();
  }
}
