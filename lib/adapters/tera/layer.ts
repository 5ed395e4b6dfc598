/**
 * One Linear's TeRA update and its fused training op.
 *
 * Buffer strategy (per layer only the N vectors l_n are owned; everything
 * large is shared):
 * - G and A_n are shared, one copy per signature (factors.ts); the method
 *   descriptor (model.ts) acquires them and hands the layer its reference.
 * - One workspace of d_out x d_in floats per layer size, shared by all TeRA
 *   layers of that size (../workspace.ts), handed over the same way. Forward writes W_eff = W0 + dW there
 *   (native tuckerReconstruct with alpha folded in, then one axpby) and runs a
 *   single GEMM y = x W_eff^T + b.
 * - Backward: dx = dY W_eff, rebuilding W_eff first if another layer has used
 *   the workspace since this layer's forward; then the same buffer receives
 *   gradX = alpha dY^T x, and native tuckerScaleGrad (overwriteGradX) projects
 *   it into core space in place (modes == ranks) and yields every dl_n.
 * So a stack of adapted layers needs the shared factors plus one workspace per
 * distinct shape, never d_out x d_in per layer.
 */
import { asMatrix, gemmInto } from '../../autograd/gemm';
import { linearParamGrads } from '../../autograd/ops';
import { Parameter, type Var, record } from '../../autograd/var';
import type { Linear } from '../../nn/layers';
import { native } from '../../native/loader';
import { formatShape } from '../../shape';
import { type Tensor, ones, zeros } from '../../tensor/tensor';
import type { MethodLayer } from '../method';
import type { Shared } from '../registry';
import type { Workspace } from '../workspace';
import type { TeraConfig } from './config';
import type { TeraFactors } from './factors';

export class TeraLayer implements MethodLayer {
  readonly parameters: ReadonlyMap<string, Parameter>;
  /** l_1 .. l_N. */
  readonly lambdas: readonly Parameter[];
  readonly alpha: number;
  readonly #factors: Shared<TeraFactors>;
  readonly #workspace: Shared<Workspace>;
  readonly #saveFactors: boolean;

  /** Takes over one reference to `factors` and one to `workspace` (dispose() releases them). */
  constructor(config: TeraConfig, factors: Shared<TeraFactors>, workspace: Shared<Workspace>) {
    const device = factors.value.core.device;
    // l_1 = 0 and l_n = 1 otherwise: dW = 0 at the start, yet every l_n gets a gradient.
    this.lambdas = factors.value.shape.ranks.map(
      (r, n) => new Parameter(n === 0 ? zeros([r], { device }) : ones([r], { device })),
    );
    this.parameters = new Map(this.lambdas.map((l, n) => [`tera_lambda_${n + 1}`, l]));
    this.alpha = config.alpha;
    this.#saveFactors = config.saveFactors;
    this.#factors = factors;
    this.#workspace = workspace;
  }

  /** The frozen core and factors this layer shares with every layer of its signature. */
  get shared(): TeraFactors {
    return this.#factors.value;
  }

  /** Writes alpha * sign * dW into the workspace. */
  #reconstruct(alphaSign: number): void {
    const { core, factors, shape } = this.shared;
    native().tuckerReconstruct(
      core.storage,
      shape.modes,
      shape.ranks,
      factors.map((f) => f.storage),
      this.lambdas.map((l) => l.data.storage),
      this.alpha * alphaSign,
      this.#workspace.value.tensor.storage,
    );
  }

  /** Writes W_eff = weight + dW into the workspace and marks it as `holder`'s. */
  #writeEffectiveWeight(weight: Tensor, holder: object): void {
    this.#reconstruct(1);
    native().axpby(this.#workspace.value.tensor.storage, weight.storage, 1, 1);
    this.#workspace.value.holder = holder;
  }

  forward(input: Var, base: Linear): Var {
    const x = input;
    const w = base.weight;
    const b = base.bias;
    const [outF, inF] = w.shape;
    const cols = x.shape[x.shape.length - 1];
    if (cols !== inF) {
      throw new Error(`TeRA layer: input ${formatShape(x.shape)} ends in ${cols} features, the layer takes ${inF}`);
    }
    const rows = x.size / inF;
    const n = native();
    const ws = this.#workspace.value;
    const holder = {};
    this.#writeEffectiveWeight(w.data, holder);
    const out = zeros([...x.shape.slice(0, -1), outF], { device: x.device });
    const wEff = asMatrix(ws.tensor, inF);
    gemmInto(asMatrix(out), asMatrix(x.data), wEff, { transB: true });
    if (b !== null) n.addRowVector(out.storage, b.data.storage, rows, outF);

    return record(out, [x, w, b, ...this.lambdas], (g, sink) => {
      const G = asMatrix(g);
      linearParamGrads(g, x, w, b, sink);
      if (x.requiresGrad) {
        if (ws.holder !== holder) this.#writeEffectiveWeight(w.data, holder);
        const dx = zeros(x.shape, { device: g.device });
        gemmInto(asMatrix(dx), G, wEff);
        sink(x, dx);
      }
      if (this.lambdas.some((l) => l.requiresGrad)) {
        // gradX = alpha dY^T x overwrites W_eff; the kernel then uses it as scratch.
        ws.holder = null;
        gemmInto(wEff, G, asMatrix(x.data), { transA: true, alpha: this.alpha });
        const grads = this.lambdas.map((l) => zeros(l.shape, { device: g.device }));
        const { core, factors, shape } = this.shared;
        n.tuckerScaleGrad(
          ws.tensor.storage,
          core.storage,
          shape.modes,
          shape.ranks,
          factors.map((f) => f.storage),
          this.lambdas.map((l) => l.data.storage),
          grads.map((t) => t.storage),
          true,
        );
        this.lambdas.forEach((l, i) => sink(l, grads[i]));
      }
    });
  }

  addDeltaTo(weight: Tensor, sign: 1 | -1): void {
    this.#reconstruct(sign);
    native().axpby(weight.storage, this.#workspace.value.tensor.storage, 1, 1);
    this.#workspace.value.holder = null;
  }

  sharedTensors(): Record<string, Tensor> {
    return this.#saveFactors ? this.frozenTensors() : {};
  }

  frozenTensors(): Record<string, Tensor> {
    return this.shared.tensors();
  }

  dispose(): void {
    this.lambdas.forEach((l) => l.dispose());
    this.#factors.release();
    this.#workspace.release();
  }
}
