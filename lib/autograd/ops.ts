/**
 * Differentiable ops. Each forward pass and each backward closure runs native
 * kernels only (GEMM, elementwise, reductions); JS touches shapes and scalars.
 * Inputs may be Vars or plain Tensors (constants). Gradients are computed only
 * for inputs that require them: a frozen weight costs no dW GEMM and no buffer.
 */
import type { ActivationName } from '../../binding';
import { native } from '../native/loader';
import { describeValue, formatShape, gemmDims, sameShape } from '../shape';
import { Tensor, full, shapeSize, tensor, uninitialized, zeros } from '../tensor/tensor';
import { asMatrix, gemmInto } from './gemm';
import { integerTensor } from './integers';
import { type GradSink, Var, needsGrad, passOn, record } from './var';

/** What ops accept: a Var, or a Tensor taken as a constant. */
export type Input = Var | Tensor;

/** x as a Var (a Tensor becomes a constant), refused when disposed; `what` names it in errors. */
export function asVar(x: Input, what: string): Var {
  const v = x instanceof Tensor ? new Var(x) : x;
  if (!(v instanceof Var)) {
    throw new Error(`${what} must be a Var or a Tensor, got ${describeValue(x)}`);
  }
  if (v.data.disposed) throw new Error(`${what} ${formatShape(v.shape)} has been disposed`);
  return v;
}

/** Throws, naming `op` and both inputs, unless every present Var is on one device. */
export function sameDevice(op: string, vars: [Var | null, string][]): void {
  const present = vars.filter((entry): entry is [Var, string] => entry[0] !== null);
  const [first, firstName] = present[0];
  for (const [v, name] of present) {
    if (v.device !== first.device) {
      throw new Error(`${op}: ${name} is on ${v.device} but ${firstName} is on ${first.device}`);
    }
  }
}

function sameSize(op: string, a: Var, b: Var): void {
  if (!sameShape(a.shape, b.shape)) {
    throw new Error(`${op}: shapes ${formatShape(a.shape)} and ${formatShape(b.shape)} differ`);
  }
}

/** Rows and columns of x viewed as a matrix whose last dimension is `cols`. */
export function lastDim(x: Var): [rows: number, cols: number] {
  if (x.shape.length === 0) throw new Error('a matrix op got a scalar');
  const cols = x.shape[x.shape.length - 1];
  return [x.size / cols, cols];
}

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  /** Multiplies the product (default 1). */
  alpha?: number;
}

/** alpha op(a) op(b) for matrices; op transposes when asked. */
export function matmul(a: Input, b: Input, options: MatmulOptions = {}): Var {
  const av = asVar(a, 'matmul: a');
  const bv = asVar(b, 'matmul: b');
  const { transA = false, transB = false, alpha = 1 } = options;
  if (av.shape.length !== 2 || bv.shape.length !== 2) {
    throw new Error(`matmul: a ${formatShape(av.shape)} and b ${formatShape(bv.shape)} must both be matrices`);
  }
  if (!Number.isFinite(alpha)) throw new Error(`matmul: alpha must be a finite number, got ${String(alpha)}`);
  sameDevice('matmul', [
    [av, 'a'],
    [bv, 'b'],
  ]);
  const { m, n } = gemmDims('matmul', av.shape, bv.shape, transA, transB);
  const out = zeros([m, n], { device: av.device });
  const [A, B] = [asMatrix(av.data), asMatrix(bv.data)];
  gemmInto(asMatrix(out), A, B, { transA, transB, alpha });
  return record(out, [av, bv], (g, sink) => {
    const G = asMatrix(g);
    if (av.requiresGrad) {
      const da = zeros(av.shape, { device: av.device });
      // d op(a) = alpha g op(b)^T; for transA the transpose of that.
      if (transA) gemmInto(asMatrix(da), B, G, { transA: transB, transB: true, alpha });
      else gemmInto(asMatrix(da), G, B, { transB: !transB, alpha });
      sink(av, da);
    }
    if (bv.requiresGrad) {
      const db = zeros(bv.shape, { device: bv.device });
      // d op(b) = alpha op(a)^T g; for transB the transpose of that.
      if (transB) gemmInto(asMatrix(db), G, A, { transA: true, transB: transA, alpha });
      else gemmInto(asMatrix(db), A, G, { transA: !transA, alpha });
      sink(bv, db);
    }
  });
}

/**
 * y = x W^T + b over the last dimension of x (PyTorch's layout: W is
 * [outFeatures, inFeatures]). dW is computed only when W requires gradients.
 */
export function linear(input: Input, weight: Input, bias?: Input | null): Var {
  const x = asVar(input, 'linear: input');
  const w = asVar(weight, 'linear: weight');
  const b = bias === undefined || bias === null ? null : asVar(bias, 'linear: bias');
  if (w.shape.length !== 2) throw new Error(`linear: weight must be [out, in], got ${formatShape(w.shape)}`);
  const [outF, inF] = w.shape;
  const [rows, cols] = lastDim(x);
  if (cols !== inF) {
    throw new Error(`linear: input ${formatShape(x.shape)} ends in ${cols} features but weight is [${outF}, ${inF}]`);
  }
  if (b !== null && (b.shape.length !== 1 || b.shape[0] !== outF)) {
    throw new Error(`linear: bias has shape ${formatShape(b.shape)}, expected [${outF}]`);
  }
  sameDevice('linear', [
    [x, 'input'],
    [w, 'weight'],
    [b, 'bias'],
  ]);
  const out = zeros([...x.shape.slice(0, -1), outF], { device: x.device });
  gemmInto(asMatrix(out), asMatrix(x.data), asMatrix(w.data), { transB: true });
  if (b !== null) native().addRowVector(out.storage, b.data.storage, rows, outF);
  return record(out, [x, w, b], (g, sink) => {
    if (x.requiresGrad) {
      const dx = zeros(x.shape, { device: x.device });
      gemmInto(asMatrix(dx), asMatrix(g), asMatrix(w.data));
      sink(x, dx);
    }
    linearParamGrads(g, x, w, b, sink);
  });
}

/**
 * The weight and bias gradients of y = x W^T + b (dW = g^T x, db = column sums
 * of g), for those that require them. Shared by every op with a Linear inside.
 */
export function linearParamGrads(g: Tensor, x: Var, weight: Var, bias: Var | null, sink: GradSink): void {
  const [outF, inF] = weight.shape;
  const rows = x.size / inF;
  if (weight.requiresGrad) {
    const dw = zeros(weight.shape, { device: weight.device });
    gemmInto(asMatrix(dw), asMatrix(g), asMatrix(x.data), { transA: true });
    sink(weight, dw);
  }
  if (bias?.requiresGrad) sink(bias, columnSums(g, rows, outF));
}

/** Sums of each column of a [rows, cols] tensor, as a [cols] tensor. */
function columnSums(x: Tensor, rows: number, cols: number): Tensor {
  const out = zeros([cols], { device: x.device });
  native().sumAxis(out.storage, x.storage, rows, cols, false, 0);
  return out;
}

/** a + b, elementwise (same shapes). */
export function add(a: Input, b: Input): Var {
  const av = asVar(a, 'add: a');
  const bv = asVar(b, 'add: b');
  sameSize('add', av, bv);
  sameDevice('add', [
    [av, 'a'],
    [bv, 'b'],
  ]);
  const out = av.data.clone();
  native().axpby(out.storage, bv.data.storage, 1, 1);
  return record(out, [av, bv], (g, sink) => {
    // Each parent must own its gradient memory: one gets a view, the other a copy.
    if (av.requiresGrad) sink(av, bv.requiresGrad ? g.clone() : passOn(g));
    if (bv.requiresGrad) sink(bv, passOn(g));
  });
}

/** a * b, elementwise (same shapes). */
export function mul(a: Input, b: Input): Var {
  const av = asVar(a, 'mul: a');
  const bv = asVar(b, 'mul: b');
  sameSize('mul', av, bv);
  sameDevice('mul', [
    [av, 'a'],
    [bv, 'b'],
  ]);
  const out = zeros(av.shape, { device: av.device });
  native().multiply(out.storage, av.data.storage, bv.data.storage);
  return record(out, [av, bv], (g, sink) => {
    for (const [target, other] of [
      [av, bv],
      [bv, av],
    ]) {
      if (!target.requiresGrad) continue;
      const d = zeros(target.shape, { device: target.device });
      native().multiply(d.storage, g.storage, other.data.storage);
      sink(target, d);
    }
  });
}

/** c * x for a number c. */
export function scale(x: Input, c: number): Var {
  const xv = asVar(x, 'scale: x');
  if (!Number.isFinite(c)) throw new Error(`scale: the factor must be a finite number, got ${String(c)}`);
  const out = zeros(xv.shape, { device: xv.device });
  native().axpby(out.storage, xv.data.storage, c, 0);
  return record(out, [xv], (g, sink) => {
    native().axpby(g.storage, g.storage, c, 0);
    sink(xv, passOn(g));
  });
}

/** out[..., j] = x[..., j] * v[j]: scales each column (last dimension) of x. */
export function scaleColumns(x: Input, v: Input): Var {
  const xv = asVar(x, 'scaleColumns: x');
  const vv = asVar(v, 'scaleColumns: v');
  const [rows, cols] = lastDim(xv);
  if (vv.shape.length !== 1 || vv.shape[0] !== cols) {
    throw new Error(
      `scaleColumns: v has shape ${formatShape(vv.shape)}, expected [${cols}] for x ${formatShape(xv.shape)}`,
    );
  }
  sameDevice('scaleColumns', [
    [xv, 'x'],
    [vv, 'v'],
  ]);
  const out = zeros(xv.shape, { device: xv.device });
  native().scaleMatrix(out.storage, xv.data.storage, vv.data.storage, rows, cols, true);
  return record(out, [xv, vv], (g, sink) => {
    if (xv.requiresGrad) {
      const dx = zeros(xv.shape, { device: xv.device });
      native().scaleMatrix(dx.storage, g.storage, vv.data.storage, rows, cols, true);
      sink(xv, dx);
    }
    if (vv.requiresGrad) {
      // g is ours until this closure returns: reuse it for g * x.
      native().multiply(g.storage, g.storage, xv.data.storage);
      sink(vv, columnSums(g, rows, cols));
    }
  });
}

function activation(kind: ActivationName, x: Input): Var {
  const xv = asVar(x, kind);
  const out = zeros(xv.shape, { device: xv.device });
  native().activationForward(kind, out.storage, xv.data.storage);
  return record(out, [xv], (g, sink) => {
    native().activationBackward(kind, g.storage, xv.data.storage, g.storage, 0);
    sink(xv, passOn(g));
  });
}

/** max(x, 0) elementwise. */
export function relu(x: Input): Var {
  return activation('relu', x);
}

/** The exact (erf) GELU, as PyTorch's default. */
export function gelu(x: Input): Var {
  return activation('gelu', x);
}

export function tanh(x: Input): Var {
  return activation('tanh', x);
}

/** GPT-2's GELU ('gelu_new', torch's approximate='tanh'): 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))). */
export function geluTanh(x: Input): Var {
  return activation('geluTanh', x);
}

/** x sigmoid(x) (SiLU / swish, LLaMA's MLP activation). */
export function silu(x: Input): Var {
  return activation('silu', x);
}

function reduction(op: 'sum' | 'mean', x: Input): Var {
  const xv = asVar(x, op);
  const divisor = op === 'mean' ? xv.size : 1;
  const value = native().sum(xv.data.storage) / divisor;
  const out = tensor(Float32Array.of(value), [], { device: xv.device });
  return record(out, [xv], (g, sink) => sink(xv, full(xv.shape, g.item() / divisor, { device: xv.device })));
}

/** The sum of all elements, as a scalar (shape []). */
export function sum(x: Input): Var {
  return reduction('sum', x);
}

/** The mean of all elements, as a scalar (shape []). */
export function mean(x: Input): Var {
  return reduction('mean', x);
}

/** A view of x with another shape of the same size (no copy). */
export function reshape(x: Input, shape: readonly number[]): Var {
  const xv = asVar(x, 'reshape');
  const size = shapeSize(shape, 'reshape: shape');
  if (size !== xv.size) {
    throw new Error(`reshape: cannot view ${formatShape(xv.shape)} (${xv.size} elements) as ${formatShape(shape)}`);
  }
  return record(xv.data.reshape(shape), [xv], (g, sink) => sink(xv, passOn(g, xv.shape)));
}

/**
 * Mean cross-entropy of softmax(logits) against class indices: logits [rows,
 * classes], labels one class index per row (a Tensor of floats, or an array).
 */
export function softmaxCrossEntropy(logits: Input, labels: Tensor | ArrayLike<number>): Var {
  return crossEntropyLoss('softmaxCrossEntropy', logits, labels, null);
}

/**
 * The cross-entropy op behind softmaxCrossEntropy and crossEntropy: the mean
 * over the rows whose label is not `ignoreIndex` (null: none is ignored); NaN
 * when every row is ignored, as torch, with a zero gradient. Labels are
 * checked on the host before the kernel runs.
 */
export function crossEntropyLoss(
  op: string,
  logits: Input,
  labels: Tensor | ArrayLike<number>,
  ignoreIndex: number | null,
): Var {
  const lv = asVar(logits, `${op}: logits`);
  if (lv.shape.length !== 2) {
    throw new Error(`${op}: logits must be [rows, classes], got ${formatShape(lv.shape)}`);
  }
  if (ignoreIndex !== null && !Number.isSafeInteger(ignoreIndex)) {
    throw new Error(`${op}: ignoreIndex must be an integer, got ${describeValue(ignoreIndex)}`);
  }
  const [rows, classes] = lv.shape;
  const checked = integerTensor(op, 'labels', labels, rows, lv.device, {
    limit: classes,
    also: ignoreIndex ?? undefined,
    what: 'label',
    unit: 'row',
    kind: 'a class index',
    countOf: 'rows',
  });
  try {
    let saved: Tensor | null = needsGrad(lv) ? uninitialized(lv.shape, { device: lv.device }) : null;
    let loss: number;
    try {
      loss = native().softmaxCrossEntropy(
        lv.data.storage,
        checked.tensor.storage,
        rows,
        classes,
        saved?.storage ?? null,
        1,
        ignoreIndex,
      );
    } catch (error) {
      saved?.dispose();
      throw error;
    }
    const out = tensor(Float32Array.of(loss), [], { device: lv.device });
    return record(
      out,
      [lv],
      (g, sink) => {
        // The forward pass already left (softmax - onehot) / counted rows in `saved`.
        const grad = saved!;
        saved = null;
        native().axpby(grad.storage, grad.storage, g.item(), 0);
        sink(lv, grad);
      },
      () => saved?.dispose(),
    );
  } finally {
    if (checked.owned) checked.tensor.dispose();
  }
}
