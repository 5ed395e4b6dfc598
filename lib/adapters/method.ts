/**
 * The contract between the shared machinery (injection, merge, files) and one
 * adapter method (tera/, vera/, lora/). A method plans each layer without
 * allocating anything, so a bad config or file is refused before the model or
 * memory is touched, and then builds all of an adapter's layers at once (so
 * VeRA can size its shared projections by the largest layer).
 */
import type { Var } from '../autograd/var';
import type { Parameter } from '../autograd/var';
import type { LoadedTensor } from '../io/safetensors';
import type { Linear } from '../nn/layers';
import type { Tensor } from '../tensor/tensor';
import type { AdapterConfig, PeftType } from './config';
import type { JsonObject } from './fields';

/** A tensor's key suffix in the adapter file ('lora_A.weight', 'tera_lambda_1') and shape. */
export type TensorSpec = [suffix: string, shape: number[]];

export interface LayerPlan {
  /** The full dotted name of the Linear in the model. */
  moduleName: string;
  base: Linear;
  /** The trainable tensors this layer will have, in file order. */
  tensors: TensorSpec[];
}

export interface MethodLayer {
  /** Trainable parameters keyed by their file suffix, in file order. */
  readonly parameters: ReadonlyMap<string, Parameter>;
  /** The adapted layer's full output: base(x) plus the update. */
  forward(input: Var, base: Linear): Var;
  /** weight += sign * dW, without d_out x d_in temporaries where the method allows. */
  addDeltaTo(weight: Tensor, sign: 1 | -1): void;
  /** Frozen tensors shared between layers, by file key, for configs that save them. */
  sharedTensors(): Record<string, Tensor>;
  /**
   * Every frozen tensor this layer's update uses (shared or its own), by file key,
   * whatever the config saves; distributed training fingerprints them to check
   * that every rank regenerated the same ones.
   */
  frozenTensors(): Record<string, Tensor>;
  /** Frees this layer's tensors and its share of the shared ones. */
  dispose(): void;
}

/** What createLayers knows besides the config and the plans. */
export interface CreateContext {
  adapterName: string;
  /** The adapter file's tensors when loading (its shared frozen tensors may be used), null when injecting. */
  stored: Readonly<Record<string, LoadedTensor>> | null;
}

export interface AdapterMethod<C extends AdapterConfig = AdapterConfig> {
  readonly peftType: PeftType;
  /** The layer's trainable tensors; throws naming the module if it cannot take this adapter. */
  layerTensors(config: C, base: Linear, moduleName: string): TensorSpec[];
  /** The shared frozen tensors a file holds for these layers (empty unless the config saves them). */
  savedSharedShapes(config: C, plans: readonly LayerPlan[]): Record<string, number[]>;
  /** Allocates and initialises the layers (all or none: frees what it made if one fails). */
  createLayers(config: C, plans: readonly LayerPlan[], context: CreateContext): MethodLayer[];
  /** Why a file cannot be loaded with `config` beyond its keys and shapes (e.g. who wrote it), one line each. */
  fileProblems?(config: C, file: { writtenByTeraPeft: boolean }): string[];
  configFromJson(json: JsonObject): C;
}

/** Builds one layer per plan; if one fails, frees those already built and rethrows. */
export function createAll(plans: readonly LayerPlan[], build: (plan: LayerPlan) => MethodLayer): MethodLayer[] {
  const layers: MethodLayer[] = [];
  try {
    for (const plan of plans) layers.push(build(plan));
  } catch (error) {
    layers.forEach((layer) => layer.dispose());
    throw error;
  }
  return layers;
}
