/**
 * Adapters: TeRA, VeRA and LoRA on one injection mechanism, PEFT-style.
 */
export { AdapterConfig, matchTargets } from './config';
export type { TargetModules, TargetOptions, PeftType } from './config';
export type { Json, JsonObject, FieldSpec } from './fields';
export { TeraConfig, factorizeDimension, teraShape } from './tera/config';
export type { TeraConfigOptions, TeraShape } from './tera/config';
export { TeraLayer } from './tera/layer';
export { sharedFactorCount, signatureName } from './tera/factors';
export { VeraConfig } from './vera/config';
export { VeraLayer } from './vera/layer';
export type { VeraConfigOptions } from './vera/config';
export { LoraConfig } from './lora/config';
export { LoraLayer } from './lora/layer';
export type { LoraConfigOptions, LoraInit } from './lora/config';
export { AdapterLinear } from './layer';
export { PeftModel, injectAdapter } from './peft-model';
export type { MergeOptions } from './peft-model';
export { saveAdapter, loadAdapter, CONFIG_FILE, WEIGHTS_FILE } from './save';
export type { SaveAdapterOptions, LoadAdapterOptions, SavedAdapter } from './save';
export { lowRankLinear } from './low-rank';
export type { LowRankParts } from './low-rank';
export { workspaceCount } from './workspace';
export type { MethodLayer, AdapterMethod, CreateContext, LayerPlan, TensorSpec } from './method';
