/**
 * LoRA's method descriptor: shapes (r per module from rank_pattern), PEFT's
 * initialisations, and config parsing.
 */
import type { Linear } from '../../nn/layers';
import { kaimingUniform } from '../../nn/init';
import { normal } from '../../random';
import { type Tensor, zeros } from '../../tensor/tensor';
import { randomStream } from '../config';
import {
  type AdapterMethod,
  type CreateContext,
  type LayerPlan,
  type MethodLayer,
  type TensorSpec,
  createAll,
} from '../method';
import { LoraConfig } from './config';
import { LoraLayer } from './layer';

/** A [r, in] and B [out, r] as PEFT initialises them for `config.initLoraWeights`. */
function initialWeights(config: LoraConfig, { base, moduleName }: LayerPlan, adapterName: string): [Tensor, Tensor] {
  const r = config.rankOf(moduleName);
  const device = base.weight.device;
  const seed = BigInt(config.seed);
  // Each layer's A and B have their own streams, so layers (and adapters) start from different values.
  const stream = (what: string) => ({ seed, stream: randomStream(`lora/${adapterName}/${moduleName}${what}`) });
  if (config.initLoraWeights === 'gaussian') {
    const a = normal([r, base.inFeatures], { seed, key: stream('').stream, std: 1 / r, device });
    return [a, zeros([base.outFeatures, r], { device })];
  }
  const a = kaimingUniform([r, base.inFeatures], base.inFeatures, stream(''), device);
  if (config.initLoraWeights === true) return [a, zeros([base.outFeatures, r], { device })];
  // false: both as torch's Linear default, so the adapter is not a no-op (PEFT: for debugging).
  return [a, kaimingUniform([base.outFeatures, r], r, stream('/B'), device)];
}

export const loraMethod: AdapterMethod<LoraConfig> = {
  peftType: 'LORA',

  layerTensors(config: LoraConfig, base: Linear, moduleName: string): TensorSpec[] {
    const r = config.rankOf(moduleName);
    return [
      ['lora_A.weight', [r, base.inFeatures]],
      ['lora_B.weight', [base.outFeatures, r]],
    ];
  },

  savedSharedShapes(): Record<string, number[]> {
    return {};
  },

  createLayers(config: LoraConfig, plans: readonly LayerPlan[], { adapterName }: CreateContext): MethodLayer[] {
    return createAll(plans, (plan) => {
      const [a, b] = initialWeights(config, plan, adapterName);
      return new LoraLayer(a, b, config.scalingOf(plan.moduleName));
    });
  },

  configFromJson: (json) => LoraConfig.fromJson(json),
};
