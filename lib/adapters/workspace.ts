/**
 * Reusable buffers, one set per (device, d_out x d_in layer size), shared by
 * every TeRA layer of that size (calls run one after another, so they never
 * need the same buffer at once):
 * - `tensor`, d_out x d_in floats, allocated on first use: the merged path
 *   writes its effective weight W0 + dW here in the forward pass and tags the
 *   buffer with `holder`; if another layer has written since, backward rebuilds
 *   it, then reuses the same buffer for the core-space weight gradient. Merging
 *   an adapter into its base uses it too.
 * - `scratch(slot, size)`: temporaries of one forward or backward call
 *   (projected activations, the factored path's intermediates), kept between
 *   steps instead of allocated per step.
 * So the extra memory of a stack of adapted layers is one set per distinct
 * layer size, not one per layer. The sets live in the shared registry
 * (registry.ts): the last layer to release one frees it.
 */
import type { Device } from '../tensor/device';
import { type Tensor, uninitialized } from '../tensor/tensor';
import { type Shared, SharedRegistry } from './registry';

export class Workspace {
  readonly device: Device;
  /** Floats of the big buffer: d_out x d_in. */
  readonly size: number;
  /** Who last wrote an effective weight into `tensor` (null: nobody, or overwritten). */
  holder: object | null = null;
  #buffer: Tensor | null = null;
  readonly #scratch: Tensor[] = [];

  constructor(device: Device, size: number) {
    this.device = device;
    this.size = size;
  }

  /** The d_out x d_in buffer (made on first use; its contents are whatever was written last). */
  get tensor(): Tensor {
    this.#buffer ??= uninitialized([this.size], { device: this.device });
    return this.#buffer;
  }

  /** Whether the big buffer exists (the merged path or a merge has run). */
  get allocated(): boolean {
    return this.#buffer !== null;
  }

  /**
   * Temporary number `slot` of exactly `size` floats, valid until the next call that asks for
   * the same slot (by any layer of this size): for use within one forward or one backward call.
   */
  scratch(slot: number, size: number): Tensor {
    const held = this.#scratch[slot];
    if (held?.size === size) return held;
    held?.dispose();
    this.#scratch[slot] = uninitialized([size], { device: this.device });
    return this.#scratch[slot];
  }

  dispose(): void {
    this.#buffer?.dispose();
    this.#scratch.forEach((t) => t.dispose());
  }
}

const workspaces = new SharedRegistry<Workspace>();

/** The shared buffers for layers of `size` floats on `device`; release() them when done. */
export function acquireWorkspace(device: Device, size: number): Shared<Workspace> {
  return workspaces.acquire(`${device}:${size}`, () => new Workspace(device, size));
}

/**
 * How many workspaces are alive now: one per distinct TeRA layer size in use,
 * 0 once every TeRA adapter is deleted or unloaded.
 */
export function workspaceCount(): number {
  return workspaces.size;
}
