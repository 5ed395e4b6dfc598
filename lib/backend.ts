/** What the loaded native backend is and how it runs. */
import { addon, native } from './native/loader';
import type { NativeBackendInfo } from '../binding';

export interface BackendInfo extends NativeBackendInfo {
  /** The .node file that was loaded. */
  addon: string;
}

export function backendInfo(): BackendInfo {
  return { ...native().backendInfo(), addon: addon().path };
}

/** Threads for our CPU kernels and OpenBLAS alike; 0 restores the default (TERA_NUM_THREADS, else all cores). */
export function setNumThreads(n: number): void {
  native().setNumThreads(n);
}

export function getNumThreads(): number {
  return native().getNumThreads();
}
