/**
 * File input and output: atomic writes and the safetensors tensor format.
 */
export { writeFileAtomic } from './atomic';
export { readSafetensors, writeSafetensors } from './safetensors';
export type { LoadedTensor, SafetensorsContents, TensorInput } from './safetensors';
export { encodeSafetensors, openSafetensors, SafetensorsReader, SCRATCH_BYTES } from './safetensors';
export type { EncodedSafetensors, SafetensorsEntry, TensorSource, WritableDtype } from './safetensors';
