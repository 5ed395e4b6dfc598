/**
 * Language models: Hugging Face configs (GPT-2, LLaMA) and checkpoints in
 * transformers' layout.
 */
export { expectedParameters, modelConfigToJson, parseModelConfig, readModelConfig } from './config';
export type { Gpt2Config, LlamaConfig, ModelConfig, ModelType, ParameterSpec } from './config';
export { Checkpoint, isCheckpointFile, openCheckpoint, readCheckpoint, writeCheckpoint } from './checkpoint';
export type { CheckpointTensor, ReadCheckpointOptions, WriteCheckpointOptions } from './checkpoint';
