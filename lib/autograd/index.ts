/**
 * Reverse-mode autograd: Var / Parameter, the differentiable ops, and the
 * graph controls (noGrad, tidy).
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
  sum,
  mean,
  reshape,
  softmaxCrossEntropy,
} from './ops';
export type { Input, MatmulOptions } from './ops';
