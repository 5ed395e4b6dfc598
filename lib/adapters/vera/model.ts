/**
 * VeRA's method descriptor. Like PEFT's VeraModel, it sizes the shared
 * projections by the largest targeted layer, acquires them (projections.ts)
 * and hands each layer its reference.
 */
import type { Linear } from '../../nn/layers';
import { type AdapterMethod, type LayerPlan, type MethodLayer, type TensorSpec, createAll } from '../method';
import { VeraConfig } from './config';
import { VeraLayer } from './layer';
import { VERA_A_KEY, VERA_B_KEY, acquireProjections } from './projections';

function largest(plans: readonly LayerPlan[]): { maxIn: number; maxOut: number } {
  return {
    maxIn: Math.max(...plans.map((p) => p.base.inFeatures)),
    maxOut: Math.max(...plans.map((p) => p.base.outFeatures)),
  };
}

export const veraMethod: AdapterMethod<VeraConfig> = {
  peftType: 'VERA',

  layerTensors(config: VeraConfig, base: Linear): TensorSpec[] {
    return [
      ['vera_lambda_b', [base.outFeatures]],
      ['vera_lambda_d', [config.r]],
    ];
  },

  savedSharedShapes(config: VeraConfig, plans: readonly LayerPlan[]): Record<string, number[]> {
    if (!config.saveProjection) return {};
    const { maxIn, maxOut } = largest(plans);
    return { [VERA_A_KEY]: [config.r, maxIn], [VERA_B_KEY]: [maxOut, config.r] };
  },

  createLayers(config: VeraConfig, plans: readonly LayerPlan[]): MethodLayer[] {
    const device = plans[0].base.weight.device;
    const elsewhere = plans.find((p) => p.base.weight.device !== device);
    if (elsewhere !== undefined) {
      throw new Error(
        `VeRA shares one A and B between its layers, but '${elsewhere.moduleName}' is on ${elsewhere.base.weight.device} ` +
          `and '${plans[0].moduleName}' on ${device}; move the model to one device first`,
      );
    }
    const { maxIn, maxOut } = largest(plans);
    return createAll(plans, ({ base }) => {
      const projections = acquireProjections(config.seed, config.r, maxIn, maxOut, device);
      try {
        return new VeraLayer(config, projections, base);
      } catch (error) {
        projections.release();
        throw error;
      }
    });
  },

  configFromJson: (json) => VeraConfig.fromJson(json),
};
