/**
 * Neural-network modules: Module, Linear (and transformers' Conv1D), the
 * activations, Sequential, ModuleList, MLP, and the transformer modules:
 * Embedding, LayerNorm, RMSNorm, GPT-2's and LLaMA's attention, MLPs and blocks.
 */
export { Module } from './module';
export type { StateValue, LoadStateOptions, LoadStateResult } from './module';
export { Linear, Conv1D, ReLU, GELU, Tanh, Sequential, ModuleList, MLP } from './layers';
export type { LinearOptions, MLPOptions, ActivationKind } from './layers';
export { Embedding } from './embedding';
export type { EmbeddingOptions } from './embedding';
export { LayerNorm, RMSNorm } from './norm';
export type { NormLayerOptions } from './norm';
export { Gpt2Attention, LlamaAttention, plainContext } from './attention';
export type {
  AttentionContext,
  AttentionModuleOptions,
  Gpt2AttentionConfig,
  KeyValueCache,
  LlamaAttentionConfig,
} from './attention';
export { Gpt2MLP, Gpt2Block, LlamaMLP, LlamaDecoderLayer } from './blocks';
export type { BlockOptions, Gpt2BlockConfig, LlamaBlockConfig } from './blocks';
export { manualSeed } from './init';
export type { ParameterFactory, ParameterRequest } from './init';
export { Parameter } from '../autograd/var';
