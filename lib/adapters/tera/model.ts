/**
 * TeRA's method descriptor: the shapes a layer's adapter takes, and the
 * construction of its layers. Like PEFT's tuners, the descriptor acquires the
 * shared frozen tensors (factors.ts) and the shared workspace (../workspace.ts)
 * and hands them to each layer, which owns one reference to each from then on.
 */
import type { Linear } from '../../nn/layers';
import { type AdapterMethod, type LayerPlan, type MethodLayer, type TensorSpec, createAll } from '../method';
import { acquireWorkspace } from '../workspace';
import { TeraConfig, type TeraShape, teraShape } from './config';
import { acquireFactors, factorKeys } from './factors';
import { TeraLayer } from './layer';

function shapeOf(config: TeraConfig, base: Linear, moduleName: string): TeraShape {
  return teraShape(config, base.outFeatures, base.inFeatures, moduleName);
}

function createLayer(config: TeraConfig, { base, moduleName }: LayerPlan, siblings: number): MethodLayer {
  const device = base.weight.device;
  const factors = acquireFactors(config.seed, shapeOf(config, base, moduleName), device);
  let workspace;
  try {
    workspace = acquireWorkspace(device, base.outFeatures * base.inFeatures);
    return new TeraLayer(config, factors, workspace, siblings);
  } catch (error) {
    factors.release();
    workspace?.release();
    throw error;
  }
}

export const teraMethod: AdapterMethod<TeraConfig> = {
  peftType: 'TERA',

  layerTensors(config: TeraConfig, base: Linear, moduleName: string): TensorSpec[] {
    return shapeOf(config, base, moduleName).ranks.map((r, n) => [`tera_lambda_${n + 1}`, [r]]);
  },

  savedSharedShapes(config: TeraConfig, plans: readonly LayerPlan[]): Record<string, number[]> {
    const out: Record<string, number[]> = {};
    if (!config.saveFactors) return out;
    for (const plan of plans) {
      const shape = shapeOf(config, plan.base, plan.moduleName);
      const keys = factorKeys(shape);
      out[keys.core] = [...shape.ranks];
      keys.factors.forEach((key, n) => (out[key] = [shape.modes[n], shape.ranks[n]]));
    }
    return out;
  },

  // A file's stored factors are not used in place of the generated ones: loadAdapter checks they are equal.
  createLayers(config: TeraConfig, plans: readonly LayerPlan[]): MethodLayer[] {
    // Layers of one size share a workspace: the cost model expects all but one of them to
    // find it overwritten in backward. Counted within the adapter, so that a layer's path
    // (and its rounding) does not depend on other models alive in the process.
    const sizeOf = (plan: LayerPlan) => `${plan.base.outFeatures}x${plan.base.inFeatures}`;
    const siblings = (plan: LayerPlan) => plans.filter((p) => sizeOf(p) === sizeOf(plan)).length;
    return createAll(plans, (plan) => createLayer(config, plan, siblings(plan)));
  },

  configFromJson: (json) => TeraConfig.fromJson(json),
};
