/**
 * from_pretrained for language models: reads and checks a checkpoint folder
 * (config.json, then every tensor's name, shape and dtype against the
 * config, all before any allocation), builds the model that config.json's
 * model_type names with uninitialised parameters on the device, and reads the
 * tensors straight into them, one at a time (GPT-2's Conv1D weights
 * transposed to the [out, in] every Linear keeps). Nothing is allocated when
 * the check fails; a read that fails later frees the model.
 */
import { type DeviceRequest } from '../tensor/device';
import { CausalLM, type ModelOptions, storedTransposedNames } from './causal-lm';
import { openCheckpoint } from './checkpoint';
import { type ModelConfig, parseModelConfig } from './config';
import { GPT2LMHeadModel } from './gpt2';
import { LlamaForCausalLM } from './llama';
import { ParameterBank, transposeMatrix } from './parameters';

export interface FromPretrainedOptions {
  /** Where the parameters live (default: the default device). */
  device?: DeviceRequest;
}

/** The model class of a config's model_type, built from `options` (initialised) or a loader's bank. */
function build(config: ModelConfig, options: ModelOptions | ParameterBank): CausalLM {
  switch (config.modelType) {
    case 'gpt2':
      return new GPT2LMHeadModel(config, options);
    case 'llama':
    case 'mistral':
      return new LlamaForCausalLM(config, options);
  }
}

/**
 * A new model of the architecture `config` describes (a parsed config, or the
 * object of a config.json), initialised as transformers initialises it.
 */
export function fromConfig(config: ModelConfig | Record<string, unknown>, options: ModelOptions = {}): CausalLM {
  const parsed = 'modelType' in config && 'json' in config ? (config as ModelConfig) : parseModelConfig(config);
  return build(parsed, options);
}

/**
 * The language model saved in `folder` (transformers' layout: config.json with
 * model.safetensors, or shards with model.safetensors.index.json; F32, F16,
 * BF16 or F64 tensors, read as float32). Throws one error listing every
 * problem (unknown model_type, an unsupported config value, missing,
 * unexpected or mis-shaped tensors) before allocating anything.
 */
export function fromPretrained(folder: string, options: FromPretrainedOptions = {}): CausalLM {
  if (typeof folder !== 'string' || folder === '') throw new Error('fromPretrained: folder must be a non-empty path');
  if (options === null || typeof options !== 'object') throw new Error('fromPretrained: options must be an object');
  const unknown = Object.keys(options).filter((key) => key !== 'device');
  if (unknown.length > 0) throw new Error(`fromPretrained: unknown option ${unknown.join(', ')}; options: device`);
  const checkpoint = openCheckpoint(folder);
  try {
    const model = build(checkpoint.config, ParameterBank.forLoading(checkpoint.config, options.device));
    try {
      const transposed = storedTransposedNames(model);
      for (const [name, p] of model.namedParameters()) {
        if (transposed.has(name)) {
          const [rows, cols] = p.shape;
          p.data.set(transposeMatrix(checkpoint.read(name), cols, rows));
        } else {
          checkpoint.load(name, p.data);
        }
      }
    } catch (error) {
      model.dispose();
      throw error;
    }
    return model;
  } finally {
    checkpoint.close();
  }
}
