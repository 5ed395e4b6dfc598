/**
 * Reusable d_out x d_in buffers, one per (device, size), shared by every TeRA
 * layer of that size. A layer writes its effective weight W0 + dW here in the
 * forward pass and tags the buffer as its own; if another layer has written
 * since, backward rebuilds it, then reuses the same buffer for the weight
 * gradient. So the extra memory of a stack of adapted layers is one buffer per
 * distinct layer size, not one per layer.
 *
 * The registry holds buffers weakly: layers hold them, release() frees one as
 * soon as its last layer lets go, and a model dropped without unload() does
 * not pin its buffer.
 */
import type { Device } from '../tensor/device';
import { type Tensor, zeros } from '../tensor/tensor';

export class Workspace {
  readonly tensor: Tensor;
  /** Who last wrote an effective weight here (null: nobody, or overwritten). */
  holder: object | null = null;
  #users = 0;

  constructor(
    readonly key: string,
    device: Device,
    size: number,
  ) {
    this.tensor = zeros([size], { device });
  }

  /** @internal */
  addUser(): this {
    this.#users++;
    return this;
  }

  /** Drops one user; the last one frees the buffer. */
  release(): void {
    if (--this.#users > 0) return;
    if (registry.get(this.key)?.deref() === this) registry.delete(this.key);
    this.tensor.dispose();
  }
}

const registry = new Map<string, WeakRef<Workspace>>();

/** The shared buffer of `size` floats on `device`; release() it when done. */
export function acquireWorkspace(device: Device, size: number): Workspace {
  const key = `${device}:${size}`;
  let workspace = registry.get(key)?.deref();
  if (workspace === undefined) {
    workspace = new Workspace(key, device, size);
    registry.set(key, new WeakRef(workspace));
  }
  return workspace.addUser();
}

/** How many workspace buffers are alive now (for tests and memory accounting). */
export function workspaceCount(): number {
  for (const [key, ref] of registry) if (ref.deref() === undefined) registry.delete(key);
  return registry.size;
}
