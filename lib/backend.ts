/** What the loaded native backend is and how it runs. */
import { addon, native } from './native/loader';
import type { AddonSource } from './native/loader';
import type { NativeBackendInfo } from '../binding';

export interface BackendInfo extends NativeBackendInfo {
  /** The .node file that was loaded. */
  addon: string;
  /** Where that file came from: the package's prebuilt binary, a local source build, or TERA_ADDON_PATH. */
  addonSource: AddonSource;
}

export function backendInfo(): BackendInfo {
  const { path, source } = addon();
  return { ...native().backendInfo(), addon: path, addonSource: source };
}

/** Threads for our CPU kernels and OpenBLAS alike; 0 restores the default (TERA_NUM_THREADS, else all cores). */
export function setNumThreads(n: number): void {
  native().setNumThreads(n);
}

export function getNumThreads(): number {
  return native().getNumThreads();
}
