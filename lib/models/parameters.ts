/**
 * The parameters of a language model, handed to its modules by Hugging Face
 * name from expectedParameters(config), the one list of names and shapes that
 * the checkpoint reader and writer use too. Each module asks for its tensors
 * (through the ParameterFactory it was given) while the model is built; the
 * bank refuses a name the list does not have, a shape it does not give, or a
 * name asked for twice, and finish() refuses a name never asked for. So the
 * module tree's names are the checkpoint's by construction.
 *
 * A bank either allocates the tensors for a loader to fill (forLoading) or
 * initialises them as transformers' _init_weights does (initialised).
 */
import type { Parameter } from '../autograd/var';
import type { ParameterFactory } from '../nn/init';
import { initKey } from '../nn/init';
import { normal } from '../random';
import { formatShape, sameShape } from '../shape';
import { type Device, type DeviceRequest, resolveDevice } from '../tensor/device';
import { type Tensor, full, uninitialized, zeros } from '../tensor/tensor';
import { type ModelConfig, expectedParameters } from './config';

type Maker = (name: string, shape: readonly number[], index: number) => Tensor;

export class ParameterBank {
  readonly config: ModelConfig;
  readonly device: Device;
  readonly #expected: Map<string, { shape: readonly number[]; index: number }>;
  readonly #made = new Map<string, Tensor>();
  readonly #make: Maker;

  private constructor(config: ModelConfig, device: Device, make: Maker) {
    this.config = config;
    this.device = device;
    this.#expected = new Map(expectedParameters(config).map((p, index) => [p.name, { shape: p.shape, index }]));
    this.#make = make;
  }

  /** Tensors for a checkpoint loader to fill: allocated, not initialised. */
  static forLoading(config: ModelConfig, device?: DeviceRequest): ParameterBank {
    const target = resolveDevice(device);
    return new ParameterBank(config, target, (_name, shape) => uninitialized(shape, { device: target }));
  }

  /**
   * transformers' initialisation: matrices and embeddings N(0,
   * initializer_range) (GPT-2's c_proj weights divided by sqrt(2 n_layer)),
   * biases 0, norm weights 1. Each tensor draws its own stream of `seed`
   * (the global seed of manualSeed when not given).
   */
  static initialised(
    config: ModelConfig,
    options: { device?: DeviceRequest; seed?: number | bigint } = {},
  ): ParameterBank {
    const target = resolveDevice(options.device);
    const range = config.json.initializer_range ?? 0.02;
    if (typeof range !== 'number' || !(range >= 0) || !Number.isFinite(range)) {
      throw new Error(`config.json: initializer_range must be a finite number >= 0, got ${String(range)}`);
    }
    return new ParameterBank(config, target, (name, shape, index) => {
      if (name.endsWith('.bias')) return zeros(shape, { device: target });
      if (shape.length === 1) return full(shape, 1, { device: target });
      const scaled = config.modelType === 'gpt2' && name.endsWith('c_proj.weight');
      const std = scaled ? range / Math.sqrt(2 * config.numLayers) : range;
      const key = initKey(options.seed, index);
      return normal(shape, { seed: key.seed, key: key.stream, std, device: target });
    });
  }

  /** The factory for the modules: names are full Hugging Face names ('transformer.h.0.attn.c_attn.weight'). */
  get factory(): ParameterFactory {
    return (name, shape, request) => this.#take(name, shape, request?.storedTransposed ?? false);
  }

  #take(name: string, shape: readonly number[], storedTransposed: boolean): Tensor {
    const spec = this.#expected.get(name);
    if (spec === undefined) throw new Error(`internal: the model asks for '${name}', which its config does not list`);
    if (this.#made.has(name)) throw new Error(`internal: the model asks for '${name}' twice`);
    const stored = storedTransposed ? [...shape].reverse() : shape;
    if (!sameShape(stored, spec.shape)) {
      throw new Error(
        `internal: the model asks for '${name}' as ${formatShape(shape)}${storedTransposed ? ' (stored transposed)' : ''}, ` +
          `its config gives ${formatShape(spec.shape)}`,
      );
    }
    const tensor = this.#make(name, shape, spec.index);
    this.#made.set(name, tensor);
    return tensor;
  }

  /** Checks that every listed parameter was made. */
  finish(): void {
    const missing = [...this.#expected.keys()].filter((name) => !this.#made.has(name));
    if (missing.length > 0) throw new Error(`internal: the model never asked for ${missing.join(', ')}`);
  }

  /** Frees what was made (a build that failed part way). */
  abandon(): void {
    for (const tensor of this.#made.values()) tensor.dispose();
  }
}

/** Builds a model's modules from `bank`, freeing every tensor made if the build fails. */
export function buildWith<T>(bank: ParameterBank, build: (factory: ParameterFactory) => T): T {
  try {
    const built = build(bank.factory);
    bank.finish();
    return built;
  } catch (error) {
    bank.abandon();
    throw error;
  }
}

/** A [rows, cols] row-major matrix transposed to [cols, rows]. */
export function transposeMatrix(values: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(values.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = values[r * cols + c];
  return out;
}

/** A shared Parameter (tied weights) offered through a factory for one name. */
export function tiedFactory(parameter: Parameter, name = 'weight'): ParameterFactory {
  return (requested, shape) => {
    if (requested !== name || !sameShape(shape, parameter.shape)) {
      throw new Error(`internal: a tied layer asks for '${requested}' ${formatShape(shape)}`);
    }
    return parameter;
  };
}
