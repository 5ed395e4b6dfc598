/**
 * Neural-network modules: Module, Linear, the activations, Sequential, MLP.
 */
export { Module } from './module';
export type { StateValue, LoadStateOptions, LoadStateResult } from './module';
export { Linear, ReLU, GELU, Tanh, Sequential, MLP } from './layers';
export type { LinearOptions, MLPOptions, ActivationKind } from './layers';
export { manualSeed } from './init';
export { Parameter } from '../autograd/var';
