/**
 * Generation for causal language models: generate() and generateStream(),
 * the logits processors they sample through, and the static KV cache.
 */
export { generate, generateStream, isGenerativeModel } from './generate';
export type { GenerateOptions, GenerateOutput, GenerationStep, GenerativeModel } from './generate';
export { StaticKeyValueCache } from './kv-cache';
export type { StaticCacheShape } from './kv-cache';
export { TemperatureWarper, TopKWarper, TopPWarper, applyProcessors, softmax64 } from './logits-processors';
export type { LogitsProcessor } from './logits-processors';
