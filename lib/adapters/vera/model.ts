/**
 * VeRA's method descriptor. Like PEFT's VeraModel, it sizes the shared
 * projections by the largest targeted layer, acquires them (projections.ts:
 * those stored in a loaded file, else generated from the seed) and hands each
 * layer its reference.
 */
import type { Linear } from '../../nn/layers';
import {
  type AdapterMethod,
  type CreateContext,
  type LayerPlan,
  type MethodLayer,
  type TensorSpec,
  createAll,
} from '../method';
import { VeraConfig } from './config';
import { VeraLayer } from './layer';
import { VERA_A_KEY, VERA_B_KEY, acquireProjections, acquireStoredProjections } from './projections';

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

  createLayers(config: VeraConfig, plans: readonly LayerPlan[], { stored }: CreateContext): MethodLayer[] {
    const device = plans[0].base.weight.device;
    const elsewhere = plans.find((p) => p.base.weight.device !== device);
    if (elsewhere !== undefined) {
      throw new Error(
        `VeRA shares one A and B between its layers, but '${elsewhere.moduleName}' is on ${elsewhere.base.weight.device} ` +
          `and '${plans[0].moduleName}' on ${device}; move the model to one device first`,
      );
    }
    const { maxIn, maxOut } = largest(plans);
    const storedA = stored?.[VERA_A_KEY];
    const storedB = stored?.[VERA_B_KEY];
    return createAll(plans, ({ base }) => {
      const projections =
        storedA !== undefined && storedB !== undefined
          ? acquireStoredProjections(storedA, storedB, device)
          : acquireProjections(config.seed, config.r, maxIn, maxOut, device);
      try {
        return new VeraLayer(config, projections, base);
      } catch (error) {
        projections.release();
        throw error;
      }
    });
  },

  fileProblems(config: VeraConfig, { writtenByTeraPeft }): string[] {
    if (config.saveProjection || writtenByTeraPeft) return [];
    return [
      'the file has no vera_A / vera_B (save_projection is false) and was not written by tera-peft: its writer ' +
        "regenerates them from projection_prng_key with its own generator (PEFT: torch's), which tera-peft cannot " +
        'reproduce; save it with save_projection=True',
    ];
  },

  configFromJson: (json) => VeraConfig.fromJson(json),
};
