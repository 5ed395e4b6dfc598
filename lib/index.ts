/**
 * tera-peft: TeRA parameter-efficient fine-tuning for Node.js.
 */
export { Tensor, tensor, zeros, ones, full } from './tensor/tensor';
export type { TensorOptions } from './tensor/tensor';
export { resolveDevice, setDefaultDevice, defaultDevice, cudaAvailable } from './tensor/device';
export type { Device, DeviceRequest } from './tensor/device';
export * as kernels from './kernels/index';
export * as random from './random';
export { backendInfo, setNumThreads, getNumThreads } from './backend';
export type { BackendInfo } from './backend';
export * as io from './io/index';
export * as autograd from './autograd/index';
export * as nn from './nn/index';
export * as optim from './optim/index';
export * as adapters from './adapters/index';
export * as distributed from './distributed/index';
export * as models from './models/index';
export * as tokenizers from './tokenizers/index';
export {
  injectAdapter,
  saveAdapter,
  loadAdapter,
  PeftModel,
  TeraConfig,
  VeraConfig,
  LoraConfig,
} from './adapters/index';
export type { TeraConfigOptions, VeraConfigOptions, LoraConfigOptions } from './adapters/index';
export { AdamW, SGD } from './optim/index';
