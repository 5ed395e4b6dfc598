/**
 * One Linear's TeRA update and its fused training op, evaluated per call on
 * one of two paths (docs/math.md), chosen by the cost model (cost.ts) unless
 * the config's `evaluation` forces one:
 * - merged: W_eff = W0 + alpha dW is reconstructed into the shared workspace
 *   (one native pass writes it, W0 added on the way) and y = x W_eff^T + b is one
 *   GEMM. Backward: dx = dY W_eff (rebuilding W_eff first if another layer has
 *   used the workspace since this layer's forward), then the core-space gradient
 *   Z = alpha (dY K_out)^T (x K_in) (K = the Kronecker products of the unscaled
 *   factors, applied by kroneckerRows) in the same buffer, and tuckerCoreGrad
 *   turns Z into every dl_n.
 * - factored: dW is never formed. u = x K_in diag(lambda_in), v = u G^T (G as
 *   [R_out, R_in]), y = x W0^T + alpha v diag(lambda_out) K_out^T + b. Backward
 *   through the adjoints; the dl_n come from column sums of the projected
 *   activations times each other (kroneckerScaleGrad), never dividing by l.
 *
 * Buffer strategy (per layer only the N vectors l_n are owned; everything
 * large is shared):
 * - G and A_n are shared, one copy per signature (factors.ts); the method
 *   descriptor (model.ts) acquires them and hands the layer its reference.
 * - One workspace per layer size (../workspace.ts), handed over the same way:
 *   the merged path's d_out x d_in buffer and the temporaries of both paths.
 * - The factored path keeps its projected activations ([T, R_in], [T, R_out])
 *   from forward to backward only while every layer sharing the workspace
 *   could keep its own, with the call's scratch slots, within the workspace's
 *   size (cost.ts, factoredKeeps), and none has used the big
 *   buffer; otherwise backward recomputes them. So a stack's extra memory stays
 *   about one d_out x d_in buffer per distinct layer size, not one per layer.
 */
import { type Matrix, asMatrix, gemmInto } from '../../autograd/gemm';
import { linearParamGrads } from '../../autograd/ops';
import { Parameter, type Var, needsGrad, record } from '../../autograd/var';
import type { Linear } from '../../nn/layers';
import { native } from '../../native/loader';
import { formatShape } from '../../shape';
import { type Tensor, ones, uninitialized, zeros } from '../../tensor/tensor';
import type { MethodLayer } from '../method';
import type { Shared } from '../registry';
import type { Workspace } from '../workspace';
import type { TeraConfig, TeraEvaluation, TeraPath } from './config';
import { type CallNeeds, type PathPlan, planPath } from './cost';
import type { TeraFactors } from './factors';

const product = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);

/**
 * The workspace's scratch slots, each always used for one role so that its size stays put:
 * projected inputs, their scaled copy, the core product v, the projected dY, its scaled copy,
 * du = dv G, and Z below full rank.
 */
const SLOT = { xIn: 0, u: 1, v: 2, gOut: 3, dv: 4, du: 5, z: 6 } as const;

/** One side of the update (the out modes or the in modes): its factors, ranks and vectors. */
interface ModeGroup {
  modes: number[];
  ranks: number[];
  factors: Tensor[];
  lambdas: Parameter[];
  /** prod ranks: the width of a projected row. */
  rank: number;
}

export class TeraLayer implements MethodLayer {
  readonly parameters: ReadonlyMap<string, Parameter>;
  /** l_1 .. l_N. */
  readonly lambdas: readonly Parameter[];
  readonly alpha: number;
  /** How calls choose their path ('auto': the cost model). */
  readonly evaluation: TeraEvaluation;
  /** The path the last forward call took (null before the first). */
  lastPath: TeraPath | null = null;
  readonly #factors: Shared<TeraFactors>;
  readonly #workspace: Shared<Workspace>;
  readonly #saveFactors: boolean;

  /** Layers of this adapter with this layer's size (itself included): they share its workspace. */
  readonly #siblings: number;

  /**
   * Takes over one reference to `factors` and one to `workspace` (dispose() releases them).
   * `siblings` counts the adapter's layers of this size, itself included.
   */
  constructor(config: TeraConfig, factors: Shared<TeraFactors>, workspace: Shared<Workspace>, siblings = 1) {
    const device = factors.value.core.device;
    // l_1 = 0 and l_n = 1 otherwise: dW = 0 at the start, yet every l_n gets a gradient.
    this.lambdas = factors.value.shape.ranks.map(
      (r, n) => new Parameter(n === 0 ? zeros([r], { device }) : ones([r], { device })),
    );
    this.parameters = new Map(this.lambdas.map((l, n) => [`tera_lambda_${n + 1}`, l]));
    this.alpha = config.alpha;
    this.evaluation = config.evaluation;
    this.#saveFactors = config.saveFactors;
    this.#factors = factors;
    this.#workspace = workspace;
    this.#siblings = siblings;
  }

  /** The frozen core and factors this layer shares with every layer of its signature. */
  get shared(): TeraFactors {
    return this.#factors.value;
  }

  /** The path a call with `rows` rows and these needs would take, with both paths' estimated costs. */
  plan(rows: number, needs: CallNeeds): PathPlan {
    const ws = this.#workspace;
    return planPath(
      {
        shape: this.shared.shape,
        rows,
        device: this.shared.core.device,
        needs,
        siblings: this.#siblings,
        sharers: ws.users,
        workspaceAllocated: ws.value.allocated,
      },
      this.evaluation,
    );
  }

  /** The out modes' or the in modes' part of the update. */
  #group(side: 'out' | 'in'): ModeGroup {
    const { shape, factors } = this.shared;
    const P = shape.outModes.length;
    const [begin, end] = side === 'out' ? [0, P] : [P, shape.modes.length];
    const ranks = shape.ranks.slice(begin, end);
    return {
      modes: shape.modes.slice(begin, end),
      ranks,
      factors: factors.slice(begin, end),
      lambdas: this.lambdas.slice(begin, end),
      rank: product(ranks),
    };
  }

  /**
   * y = alpha x K^T (expand: rows of prod ranks to rows of prod modes) or y = alpha x K
   * (contract), K the Kronecker product of the group's factors, scaled by its l_n when `scaled`.
   */
  #kroneckerRows(
    group: ModeGroup,
    x: Tensor,
    rows: number,
    contract: boolean,
    scaled: boolean,
    alpha: number,
    y: Tensor,
  ): void {
    native().kroneckerRows(
      x.storage,
      rows,
      group.modes,
      group.ranks,
      group.factors.map((f) => f.storage),
      group.lambdas.map((l) => (scaled ? l.data.storage : null)),
      alpha,
      contract,
      y.storage,
    );
  }

  /** y = x diag(alpha (x) l_n of the group). */
  #scaleColumns(group: ModeGroup, x: Tensor, rows: number, alpha: number, y: Tensor): void {
    native().kroneckerScale(
      x.storage,
      rows,
      group.ranks,
      group.lambdas.map((l) => l.data.storage),
      alpha,
      y.storage,
    );
  }

  /** Writes W0 + alpha * sign * dW into the workspace buffer. */
  #reconstruct(weight: Tensor, alphaSign: number): Tensor {
    const { core, factors, shape } = this.shared;
    const buffer = this.#workspace.value.tensor;
    native().tuckerReconstruct(
      core.storage,
      shape.modes,
      shape.ranks,
      factors.map((f) => f.storage),
      this.lambdas.map((l) => l.data.storage),
      this.alpha * alphaSign,
      buffer.storage,
      weight.storage,
    );
    return buffer;
  }

  /** Writes W_eff = weight + dW into the workspace and marks it as `holder`'s. */
  #writeEffectiveWeight(weight: Tensor, holder: object): void {
    this.#reconstruct(weight, 1);
    this.#workspace.value.holder = holder;
  }

  forward(input: Var, base: Linear): Var {
    const x = input;
    const w = base.weight;
    const b = base.bias;
    const inF = w.shape[1];
    const cols = x.shape[x.shape.length - 1];
    if (cols !== inF) {
      throw new Error(`TeRA layer: input ${formatShape(x.shape)} ends in ${cols} features, the layer takes ${inF}`);
    }
    const rows = x.size / inF;
    const needs: CallNeeds = {
      backward: needsGrad(x, w, b, ...this.lambdas),
      dx: x.requiresGrad,
      dl: this.lambdas.some((l) => l.requiresGrad),
    };
    const plan = this.plan(rows, needs);
    this.lastPath = plan.path;
    return plan.path === 'merged'
      ? this.#forwardMerged(x, base, rows)
      : this.#forwardFactored(x, base, rows, plan.keep);
  }

  #forwardMerged(x: Var, base: Linear, rows: number): Var {
    const w = base.weight;
    const b = base.bias;
    const [outF, inF] = w.shape;
    const ws = this.#workspace.value;
    const holder = {};
    this.#writeEffectiveWeight(w.data, holder);
    const out = uninitialized([...x.shape.slice(0, -1), outF], { device: x.device });
    const wEff = asMatrix(ws.tensor, inF);
    gemmInto(asMatrix(out), asMatrix(x.data), wEff, { transB: true });
    if (b !== null) native().addRowVector(out.storage, b.data.storage, rows, outF);

    return record(out, [x, w, b, ...this.lambdas], (g, sink) => {
      linearParamGrads(g, x, w, b, sink);
      if (x.requiresGrad) {
        if (ws.holder !== holder) this.#writeEffectiveWeight(w.data, holder);
        const dx = uninitialized(x.shape, { device: g.device });
        gemmInto(asMatrix(dx), asMatrix(g), wEff);
        sink(x, dx);
      }
      if (this.lambdas.some((l) => l.requiresGrad)) {
        // Z = alpha (dY K_out)^T (x K_in), in the workspace buffer when it is as large (full rank).
        const outside = this.#group('out');
        const inside = this.#group('in');
        const xIn = ws.scratch(SLOT.xIn, rows * inside.rank);
        const gOut = ws.scratch(SLOT.gOut, rows * outside.rank);
        this.#kroneckerRows(inside, x.data, rows, true, false, 1, xIn);
        this.#kroneckerRows(outside, g, rows, true, false, 1, gOut);
        const zSize = outside.rank * inside.rank;
        const z = zSize === ws.size ? ws.tensor : ws.scratch(SLOT.z, zSize);
        ws.holder = null;
        gemmInto(asMatrix(z, inside.rank), asMatrix(gOut, outside.rank), asMatrix(xIn, inside.rank), {
          transA: true,
          alpha: this.alpha,
        });
        const { core, shape } = this.shared;
        const grads = this.lambdas.map((l) => uninitialized(l.shape, { device: g.device }));
        native().tuckerCoreGrad(
          z.storage,
          core.storage,
          shape.ranks,
          this.lambdas.map((l) => l.data.storage),
          grads.map((t) => t.storage),
        );
        this.lambdas.forEach((l, i) => sink(l, grads[i]));
      }
    });
  }

  #forwardFactored(x: Var, base: Linear, rows: number, keep: boolean): Var {
    const w = base.weight;
    const b = base.bias;
    const outF = w.shape[0];
    const ws = this.#workspace.value;
    const outside = this.#group('out');
    const inside = this.#group('in');
    const { core } = this.shared;
    const coreMatrix = asMatrix(core, inside.rank); // G as [R_out, R_in]
    const matrix = (t: Tensor, cols: number): Matrix => asMatrix(t, cols);

    // xIn = x K_in (the unscaled projection, kept for dl_in), then u = xIn diag(lambda_in), v = u G^T.
    const project = (xIn: Tensor, v: Tensor) => {
      this.#kroneckerRows(inside, x.data, rows, true, false, 1, xIn);
      const u = ws.scratch(SLOT.u, rows * inside.rank);
      this.#scaleColumns(inside, xIn, rows, 1, u);
      gemmInto(matrix(v, outside.rank), matrix(u, inside.rank), coreMatrix, { transB: true });
    };
    const sized = (slot: number, size: number) =>
      keep ? uninitialized([size], { device: x.device }) : ws.scratch(slot, size);
    const xIn = sized(SLOT.xIn, rows * inside.rank);
    const v = sized(SLOT.v, rows * outside.rank);
    project(xIn, v);
    // y = alpha v diag(lambda_out) K_out^T + x W0^T (+ b)
    const out = uninitialized([...x.shape.slice(0, -1), outF], { device: x.device });
    this.#kroneckerRows(outside, v, rows, false, true, this.alpha, out);
    gemmInto(asMatrix(out), asMatrix(x.data), asMatrix(w.data), { transB: true, beta: 1 });
    if (b !== null) native().addRowVector(out.storage, b.data.storage, rows, outF);

    const release = () => {
      if (!keep) return;
      xIn.dispose();
      v.dispose();
    };
    return record(
      out,
      [x, w, b, ...this.lambdas],
      (g, sink) => {
        linearParamGrads(g, x, w, b, sink);
        const wantDl = this.lambdas.some((l) => l.requiresGrad);
        if (!x.requiresGrad && !wantDl) return;
        // Unless kept, the forward's activations are recomputed into the shared slots, taken
        // again here: a layer of another shape with the same workspace may have resized them.
        const recompute = !keep && wantDl;
        const xInB = recompute ? ws.scratch(SLOT.xIn, rows * inside.rank) : xIn;
        const vB = recompute ? ws.scratch(SLOT.v, rows * outside.rank) : v;
        if (recompute) project(xInB, vB);
        // gOut = dY K_out; dv = alpha gOut diag(lambda_out); du = dv G.
        const gOut = ws.scratch(SLOT.gOut, rows * outside.rank);
        this.#kroneckerRows(outside, g, rows, true, false, 1, gOut);
        const dv = ws.scratch(SLOT.dv, rows * outside.rank);
        this.#scaleColumns(outside, gOut, rows, this.alpha, dv);
        const du = ws.scratch(SLOT.du, rows * inside.rank);
        gemmInto(matrix(du, inside.rank), matrix(dv, outside.rank), coreMatrix);
        if (wantDl) {
          const grads = this.lambdas.map((l) => uninitialized(l.shape, { device: g.device }));
          const scaleGrad = (group: ModeGroup, a: Tensor, c: Tensor, alpha: number, first: number) =>
            native().kroneckerScaleGrad(
              a.storage,
              c.storage,
              rows,
              group.ranks,
              group.lambdas.map((l) => l.data.storage),
              alpha,
              grads.slice(first, first + group.ranks.length).map((t) => t.storage),
            );
          scaleGrad(outside, gOut, vB, this.alpha, 0);
          scaleGrad(inside, du, xInB, 1, outside.ranks.length);
          this.lambdas.forEach((l, i) => sink(l, grads[i]));
        }
        if (x.requiresGrad) {
          // dx = du (K_in diag(lambda_in))^T + dY W0
          const dx = uninitialized(x.shape, { device: g.device });
          this.#kroneckerRows(inside, du, rows, false, true, 1, dx);
          gemmInto(asMatrix(dx), asMatrix(g), asMatrix(w.data), { beta: 1 });
          sink(x, dx);
        }
      },
      release,
    );
  }

  addDeltaTo(weight: Tensor, sign: 1 | -1): void {
    const merged = this.#reconstruct(weight, sign);
    weight.storage.copyFrom(merged.storage);
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
