/**
 * Language models: Hugging Face configs (GPT-2, LLaMA), checkpoints in
 * transformers' layout, and the model families built from them.
 */
export { expectedParameters, modelConfigToJson, parseModelConfig, readModelConfig } from './config';
export type { Gpt2Config, LlamaConfig, ModelConfig, ModelType, ParameterSpec } from './config';
export { Checkpoint, isCheckpointFile, openCheckpoint, readCheckpoint, writeCheckpoint } from './checkpoint';
export type { CheckpointTensor, ReadCheckpointOptions, TensorValues, WriteCheckpointOptions } from './checkpoint';
export { CausalLM } from './causal-lm';
export type { LossOptions, ModelOptions, SavePretrainedOptions } from './causal-lm';
export { GPT2LMHeadModel, GPT2Model } from './gpt2';
export { LlamaForCausalLM, LlamaModel } from './llama';
export { IGNORE_INDEX, positionsFromMask } from './inputs';
export type { ForwardOptions, TokenIds } from './inputs';
export { fromConfig, fromPretrained } from './pretrained';
export type { FromPretrainedOptions } from './pretrained';
