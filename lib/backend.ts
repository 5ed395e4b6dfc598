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

/** Most CPU threads setNumThreads and TERA_NUM_THREADS accept. */
const MAX_THREADS = 1024;

/**
 * Threads for our CPU kernels and OpenBLAS alike, an integer in [1, MAX_THREADS]; 0 restores the
 * default (TERA_NUM_THREADS, else all cores). If a thread cannot be started this throws and the
 * previous count stays in effect.
 */
export function setNumThreads(n: number): void {
  if (!Number.isInteger(n) || n < 0 || n > MAX_THREADS) {
    throw new Error(`setNumThreads: ${String(n)} is not an integer in [0, ${MAX_THREADS}] (0 restores the default)`);
  }
  native().setNumThreads(n);
}

export function getNumThreads(): number {
  return native().getNumThreads();
}
