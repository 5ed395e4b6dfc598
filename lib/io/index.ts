/**
 * File input and output: atomic writes and the safetensors tensor format.
 */
export { writeFileAtomic } from './atomic';
export { readSafetensors, writeSafetensors } from './safetensors';
export type { LoadedTensor, SafetensorsContents, TensorInput } from './safetensors';
