/**
 * Tensor: a shape over native float32 storage on one device. Views made by
 * reshape() share the storage; dispose() drops this view's reference and the
 * memory goes when the last one is dropped or the garbage collector finalises it.
 */
import { types } from 'node:util';

import type { NativeStorage } from '../../binding';
import { native } from '../native/loader';
import { describeValue, formatShape } from '../shape';
import { type Device, type DeviceRequest, resolveDevice } from './device';

export interface TensorOptions {
  device?: DeviceRequest;
}

const MAX_ELEMENTS = 2 ** 48;

/** Checks a shape and returns its element count; `what` names the argument in errors. */
export function shapeSize(shape: readonly number[], what = 'shape'): number {
  if (!Array.isArray(shape)) throw new Error(`${what} must be an array of dimensions, got ${typeof shape}`);
  let size = 1;
  shape.forEach((dim, i) => {
    if (!Number.isInteger(dim) || dim < 1) {
      throw new Error(`${what}[${i}] is ${String(dim)}; dimensions must be positive integers`);
    }
    size *= dim;
    if (size > MAX_ELEMENTS) throw new Error(`${what} [${shape.join(', ')}] has more than 2^48 elements`);
  });
  return size;
}

export class Tensor {
  readonly shape: readonly number[];
  readonly device: Device;
  readonly size: number;
  #storage: NativeStorage | null;

  /** Wraps a storage this tensor now holds one reference to. Use tensor()/zeros() instead. */
  constructor(storage: NativeStorage, shape: readonly number[]) {
    const size = shapeSize(shape);
    if (size !== storage.length) {
      throw new Error(`shape ${formatShape(shape)} has ${size} elements but the storage holds ${storage.length}`);
    }
    this.#storage = storage;
    this.shape = Object.freeze([...shape]);
    this.device = storage.device;
    this.size = size;
  }

  get disposed(): boolean {
    return this.#storage === null || this.#storage.disposed;
  }

  /** The native storage; throws if this tensor was disposed. */
  get storage(): NativeStorage {
    if (this.#storage === null || this.#storage.disposed) {
      throw new Error(`tensor ${formatShape(this.shape)} has been disposed`);
    }
    return this.#storage;
  }

  get rank(): number {
    return this.shape.length;
  }

  toFloat32Array(): Float32Array {
    return this.storage.read();
  }

  /** The single value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) throw new Error(`item() needs a one-element tensor, this one is ${formatShape(this.shape)}`);
    return this.toFloat32Array()[0];
  }

  /** A view with another shape of the same size, sharing this tensor's memory. */
  reshape(shape: readonly number[]): Tensor {
    const storage = this.storage;
    const size = shapeSize(shape);
    if (size !== this.size) {
      throw new Error(
        `cannot reshape ${formatShape(this.shape)} (${this.size} elements) to ${formatShape(shape)} (${size})`,
      );
    }
    storage.retain();
    return new Tensor(storage, shape);
  }

  /** A copy with its own memory, on `device` (default: this tensor's). */
  clone(device?: DeviceRequest): Tensor {
    const target = device === undefined ? this.device : resolveDevice(device);
    const storage = this.storage;
    if (target === this.device) {
      const copy = new (native().Storage)(this.size, target, true);
      copy.copyFrom(storage);
      return new Tensor(copy, this.shape);
    }
    return fromArray(storage.read(), this.shape, target);
  }

  /** This tensor on `device`: itself if already there, else a copy. */
  to(device: DeviceRequest): Tensor {
    return resolveDevice(device) === this.device ? this : this.clone(device);
  }

  /** Overwrites the contents from a Float32Array of the same size. */
  set(data: Float32Array): this {
    checkFloat32Array(data, 'set()');
    if (data.length !== this.size) {
      throw new Error(`set(): got ${data.length} values for a tensor of ${this.size} ${formatShape(this.shape)}`);
    }
    this.storage.write(data);
    return this;
  }

  /** Releases this tensor's reference to its memory; later use throws. Safe to call twice. */
  dispose(): void {
    if (this.#storage === null) return;
    const storage = this.#storage;
    this.#storage = null;
    if (!storage.disposed) storage.release();
  }

  toString(): string {
    return `Tensor(${formatShape(this.shape)}, ${this.device}${this.disposed ? ', disposed' : ''})`;
  }
}

// util.types works across realms (jest sandboxes), unlike instanceof.
function checkFloat32Array(data: unknown, what: string): asserts data is Float32Array {
  if (!types.isFloat32Array(data)) throw new Error(`${what} needs a Float32Array, got ${describeValue(data)}`);
}

function fromArray(data: Float32Array, shape: readonly number[], device: Device): Tensor {
  const storage = new (native().Storage)(data.length, device, true);
  storage.write(data);
  return new Tensor(storage, shape);
}

/** A tensor holding a copy of `data` (default shape: [data.length]). */
export function tensor(data: Float32Array, shape?: readonly number[], options: TensorOptions = {}): Tensor {
  checkFloat32Array(data, 'tensor()');
  const dims = shape ?? [data.length];
  const size = shapeSize(dims);
  if (size !== data.length) {
    throw new Error(
      `tensor(): shape ${formatShape(dims)} needs ${size} values but the Float32Array has ${data.length}`,
    );
  }
  return fromArray(data, dims, resolveDevice(options.device));
}

export function zeros(shape: readonly number[], options: TensorOptions = {}): Tensor {
  const storage = new (native().Storage)(shapeSize(shape), resolveDevice(options.device));
  return new Tensor(storage, shape);
}

/**
 * A tensor whose memory is not zero-filled on the CPU, for a result that a kernel writes in
 * full right away (reading it before that would show stale memory). Internal: not exported
 * from the package.
 */
export function uninitialized(shape: readonly number[], options: TensorOptions = {}): Tensor {
  const storage = new (native().Storage)(shapeSize(shape), resolveDevice(options.device), true);
  return new Tensor(storage, shape);
}

export function full(shape: readonly number[], value: number, options: TensorOptions = {}): Tensor {
  const t = uninitialized(shape, options);
  native().fill(t.storage, value);
  return t;
}

export function ones(shape: readonly number[], options: TensorOptions = {}): Tensor {
  return full(shape, 1, options);
}
