/** LoRA's method descriptor: shapes, initialisation and config parsing. */
import type { Linear } from '../../nn/layers';
import { kaimingUniform } from '../../nn/init';
import { zeros } from '../../tensor/tensor';
import { randomStream } from '../config';
import { type AdapterMethod, type LayerPlan, type MethodLayer, type TensorSpec, createAll } from '../method';

import { LoraConfig } from './config';
import { LoraLayer } from './layer';

export const loraMethod: AdapterMethod<LoraConfig> = {
  peftType: 'LORA',

  layerTensors(config: LoraConfig, base: Linear): TensorSpec[] {
    return [
      ['lora_A.weight', [config.r, base.inFeatures]],
      ['lora_B.weight', [base.outFeatures, config.r]],
    ];
  },

  savedSharedShapes(): Record<string, number[]> {
    return {};
  },

  createLayers(config: LoraConfig, plans: readonly LayerPlan[], adapterName: string): MethodLayer[] {
    return createAll(plans, ({ base, moduleName }) => {
      // Each layer's A has its own stream, so layers (and adapters) start from different A.
      const key = { seed: BigInt(config.seed), stream: randomStream(`lora/${adapterName}/${moduleName}`) };
      const a = kaimingUniform([config.r, base.inFeatures], base.inFeatures, key, base.weight.device);
      const b = zeros([base.outFeatures, config.r], { device: base.weight.device });
      return new LoraLayer(a, b, config.scaling);
    });
  },

  configFromJson: (json) => LoraConfig.fromJson(json),
};
