/**
 * Reusable d_out x d_in buffers, one per (device, size), shared by every TeRA
 * layer of that size. A layer writes its effective weight W0 + dW here in the
 * forward pass and tags the buffer as its own; if another layer has written
 * since, backward rebuilds it, then reuses the same buffer for the weight
 * gradient. So the extra memory of a stack of adapted layers is one buffer per
 * distinct layer size, not one per layer.
 */
import type { Device } from '../tensor/device';
import { type Tensor, zeros } from '../tensor/tensor';

export interface Workspace {
  readonly tensor: Tensor;
  /** Who last wrote an effective weight here (null: nobody, or overwritten). */
  holder: object | null;
}

interface Entry {
  workspace: Workspace;
  users: number;
}

const entries = new Map<string, Entry>();

/** The shared buffer of `size` floats on `device`; release it when done. */
export function acquireWorkspace(device: Device, size: number): Workspace {
  const key = `${device}:${size}`;
  let entry = entries.get(key);
  if (entry === undefined) {
    entry = { workspace: { tensor: zeros([size], { device }), holder: null }, users: 0 };
    entries.set(key, entry);
  }
  entry.users++;
  return entry.workspace;
}

export function releaseWorkspace(workspace: Workspace): void {
  const key = `${workspace.tensor.device}:${workspace.tensor.size}`;
  const entry = entries.get(key);
  if (entry === undefined || entry.workspace !== workspace) return;
  if (--entry.users === 0) {
    entries.delete(key);
    workspace.tensor.dispose();
  }
}

/** How many workspace buffers exist now (for tests and memory accounting). */
export function workspaceCount(): number {
  return entries.size;
}
