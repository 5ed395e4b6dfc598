/**
 * Reverse-mode autograd: Var / Parameter, the differentiable ops (ops.ts, and
 * the transformer ops of transformer.ts), and the graph controls (noGrad, tidy).
 */
export { Var, Parameter, noGrad, tidy, needsGrad, record, passOn } from './var';
export type { VarOptions, BackwardFn, GradSink } from './var';
export {
  matmul,
  linear,
  add,
  mul,
  scale,
  scaleColumns,
  relu,
  gelu,
  tanh,
  geluTanh,
  silu,
  sum,
  mean,
  reshape,
  softmaxCrossEntropy,
} from './ops';
export type { Input, MatmulOptions } from './ops';
export {
  embedding,
  layerNorm,
  rmsNorm,
  softmax,
  attention,
  rope,
  permute,
  split,
  concat,
  crossEntropy,
} from './transformer';
export type { IntegerInput, NormOptions, AttentionOptions, RopeOptions, CrossEntropyOptions } from './transformer';
