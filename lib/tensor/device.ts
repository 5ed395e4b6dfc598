/**
 * Device selection. 'auto' means the GPU when this binary has CUDA and a usable
 * device, else the CPU. TERA_DEVICE sets the default for calls that name none.
 */
import type { NativeDevice } from '../../binding';
import { native } from '../native/loader';

export type Device = NativeDevice;
export type DeviceRequest = Device | 'auto';

const DEVICES: readonly string[] = ['cpu', 'cuda', 'auto'];

let defaultRequest: DeviceRequest | undefined;

function parseRequest(value: unknown, source: string): DeviceRequest {
  if (typeof value !== 'string' || !DEVICES.includes(value)) {
    throw new Error(`${source}: unknown device ${JSON.stringify(value)}; expected 'cpu', 'cuda' or 'auto'`);
  }
  return value as DeviceRequest;
}

export function cudaAvailable(): boolean {
  return native().backendInfo().cuda.available;
}

/** Turns a request (or the default) into a concrete device; 'cuda' without a GPU throws with the reason. */
export function resolveDevice(request?: DeviceRequest): Device {
  const wanted =
    request !== undefined
      ? parseRequest(request, 'device')
      : (defaultRequest ?? (process.env.TERA_DEVICE ? parseRequest(process.env.TERA_DEVICE, 'TERA_DEVICE') : 'auto'));
  if (wanted === 'cpu') return 'cpu';
  const cuda = native().backendInfo().cuda;
  if (wanted === 'auto') return cuda.available ? 'cuda' : 'cpu';
  if (!cuda.available) {
    throw new Error(`device 'cuda' was requested but CUDA is unavailable: ${cuda.reason ?? 'unknown reason'}`);
  }
  return 'cuda';
}

/** Sets the device used when none is given (overrides TERA_DEVICE); undefined restores it. */
export function setDefaultDevice(request: DeviceRequest | undefined): void {
  defaultRequest = request === undefined ? undefined : parseRequest(request, 'setDefaultDevice');
}

/**
 * The device a tensor goes to when a call names none: setDefaultDevice()'s choice, else
 * TERA_DEVICE, else 'auto' (the GPU when this binary has CUDA and a usable device, else the CPU).
 */
export function defaultDevice(): Device {
  return resolveDevice();
}
