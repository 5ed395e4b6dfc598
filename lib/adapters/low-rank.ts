/**
 * The fused op behind LoRA and VeRA:
 *
 *   y = x W0^T + b + s * ((x A^T) diag(d)) (diag(e) B)^T
 *
 * with A [r, in], B [out, r], optional per-rank scales d [r] and per-output
 * scales e [out]. LoRA is (A, B trainable, s = alpha / r); VeRA is (A, B frozen
 * and shared, d = lambda_d, e = lambda_b, s = 1). The update is added into the
 * base GEMM's output (beta = 1) and dx likewise, so no [T, out] or [out, in]
 * temporaries exist: every extra buffer is [T, r] or [out, r].
 */
import { asMatrix, gemmInto } from '../autograd/gemm';
import { linearParamGrads } from '../autograd/ops';
import type { Var } from '../autograd/var';
import { record } from '../autograd/var';
import { native } from '../native/loader';
import { formatShape, sameShape } from '../shape';
import { type Tensor, zeros } from '../tensor/tensor';

export interface LowRankParts {
  a: Var;
  b: Var;
  /** s above. */
  scale: number;
  /** d above (length r), or null for ones. */
  rankScale?: Var | null;
  /** e above (length out), or null for ones. */
  outScale?: Var | null;
}

function expectShape(v: Var, shape: number[], what: string): void {
  if (!sameShape(v.shape, shape)) {
    throw new Error(`lowRankLinear: ${what} has shape ${formatShape(v.shape)}, expected ${formatShape(shape)}`);
  }
}

/** B' = diag(e) B, or B itself without e. */
function scaledB(b: Tensor, e: Var | null, outF: number, r: number): Tensor {
  if (e === null) return b;
  const out = zeros(b.shape, { device: b.device });
  native().scaleMatrix(out.storage, b.storage, e.data.storage, outF, r, false);
  return out;
}

export function lowRankLinear(x: Var, weight: Var, bias: Var | null, parts: LowRankParts): Var {
  const { a, b, scale } = parts;
  const d = parts.rankScale ?? null;
  const e = parts.outScale ?? null;
  const [outF, inF] = weight.shape;
  const r = a.shape[0];
  const inputCols = x.shape[x.shape.length - 1];
  if (inputCols !== inF) {
    throw new Error(
      `lowRankLinear: input ${formatShape(x.shape)} ends in ${inputCols} features, the layer takes ${inF}`,
    );
  }
  expectShape(a, [r, inF], 'A');
  expectShape(b, [outF, r], 'B');
  if (d !== null) expectShape(d, [r], 'the rank scale');
  if (e !== null) expectShape(e, [outF], 'the output scale');
  const rows = x.size / inF;
  const n = native();
  const X = asMatrix(x.data);
  const W = asMatrix(weight.data);
  const A = asMatrix(a.data);

  const out = zeros([...x.shape.slice(0, -1), outF], { device: x.device });
  gemmInto(asMatrix(out), X, W, { transB: true });
  if (bias !== null) n.addRowVector(out.storage, bias.data.storage, rows, outF);
  // u = x A^T; uScaled = u diag(d). u is kept apart only when d needs its gradient.
  const u = zeros([rows, r], { device: x.device });
  gemmInto(asMatrix(u), X, A, { transB: true });
  let uScaled = u;
  if (d !== null) {
    uScaled = d.requiresGrad ? zeros([rows, r], { device: x.device }) : u;
    n.scaleMatrix(uScaled.storage, u.storage, d.data.storage, rows, r, true);
  }
  const bScaled = scaledB(b.data, e, outF, r);
  gemmInto(asMatrix(out), asMatrix(uScaled), asMatrix(bScaled), { transB: true, alpha: scale, beta: 1 });

  const release = () => {
    u.dispose();
    uScaled.dispose();
    if (bScaled !== b.data) bScaled.dispose();
  };
  return record(
    out,
    [x, weight, bias, a, b, d, e],
    (g, sink) => {
      const G = asMatrix(g);
      linearParamGrads(g, x, weight, bias, sink);
      if (b.requiresGrad || e?.requiresGrad) {
        // m = s g^T uScaled is the gradient of B' = diag(e) B.
        const m = zeros([outF, r], { device: g.device });
        gemmInto(asMatrix(m), G, asMatrix(uScaled), { transA: true, alpha: scale });
        if (e?.requiresGrad) {
          const t = zeros([outF, r], { device: g.device });
          n.multiply(t.storage, b.data.storage, m.storage);
          const de = zeros([outF], { device: g.device });
          n.sumAxis(de.storage, t.storage, outF, r, true, 0);
          t.dispose();
          sink(e, de);
        }
        if (b.requiresGrad) {
          if (e !== null) n.scaleMatrix(m.storage, m.storage, e.data.storage, outF, r, false);
          sink(b, m);
        } else {
          m.dispose();
        }
      }
      if (x.requiresGrad || a.requiresGrad || d?.requiresGrad) {
        // du = s g B' is the gradient of uScaled; times diag(d) it becomes that of u.
        const du = zeros([rows, r], { device: g.device });
        gemmInto(asMatrix(du), G, asMatrix(bScaled), { alpha: scale });
        if (d !== null) {
          if (d.requiresGrad) {
            const t = zeros([rows, r], { device: g.device });
            n.multiply(t.storage, u.storage, du.storage);
            const dd = zeros([r], { device: g.device });
            n.sumAxis(dd.storage, t.storage, rows, r, false, 0);
            t.dispose();
            sink(d, dd);
          }
          n.scaleMatrix(du.storage, du.storage, d.data.storage, rows, r, true);
        }
        if (a.requiresGrad) {
          const da = zeros([r, inF], { device: g.device });
          gemmInto(asMatrix(da), asMatrix(du), X, { transA: true });
          sink(a, da);
        }
        if (x.requiresGrad) {
          const dx = zeros(x.shape, { device: g.device });
          gemmInto(asMatrix(dx), G, W);
          gemmInto(asMatrix(dx), asMatrix(du), A, { beta: 1 });
          sink(x, dx);
        }
        du.dispose();
      }
    },
    release,
  );
}

/** weight += sign * s * diag(e) B diag(d) A, through [out, r] temporaries only. */
export function addLowRankDelta(weight: Tensor, parts: LowRankParts, sign: 1 | -1): void {
  const { a, b, scale } = parts;
  const d = parts.rankScale ?? null;
  const e = parts.outScale ?? null;
  const outF = weight.shape[0];
  const r = a.shape[0];
  const n = native();
  const factor = zeros([outF, r], { device: weight.device });
  n.axpby(factor.storage, b.data.storage, 1, 0);
  if (e !== null) n.scaleMatrix(factor.storage, factor.storage, e.data.storage, outF, r, false);
  if (d !== null) n.scaleMatrix(factor.storage, factor.storage, d.data.storage, outF, r, true);
  gemmInto(asMatrix(weight), asMatrix(factor), asMatrix(a.data), { alpha: sign * scale, beta: 1 });
  factor.dispose();
}
