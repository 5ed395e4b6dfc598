/**
 * Reusable d_out x d_in buffers, one per (device, size), shared by every TeRA
 * layer of that size. A layer writes its effective weight W0 + dW here in the
 * forward pass and tags the buffer as its own; if another layer has written
 * since, backward rebuilds it, then reuses the same buffer for the weight
 * gradient. So the extra memory of a stack of adapted layers is one buffer per
 * distinct layer size, not one per layer. The buffers live in the shared
 * registry (registry.ts): the last layer to release one frees it.
 */
import type { Device } from '../tensor/device';
import { type Tensor, zeros } from '../tensor/tensor';
import { type Shared, SharedRegistry } from './registry';

export class Workspace {
  readonly tensor: Tensor;
  /** Who last wrote an effective weight here (null: nobody, or overwritten). */
  holder: object | null = null;

  constructor(device: Device, size: number) {
    this.tensor = zeros([size], { device });
  }

  dispose(): void {
    this.tensor.dispose();
  }
}

const workspaces = new SharedRegistry<Workspace>();

/** The shared buffer of `size` floats on `device`; release() it when done. */
export function acquireWorkspace(device: Device, size: number): Shared<Workspace> {
  return workspaces.acquire(`${device}:${size}`, () => new Workspace(device, size));
}

/**
 * How many workspace buffers are alive now: one per distinct TeRA layer size
 * in use, 0 once every TeRA adapter is deleted or unloaded.
 */
export function workspaceCount(): number {
  return workspaces.size;
}
