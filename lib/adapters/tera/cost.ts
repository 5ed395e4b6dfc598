/**
 * The cost model that picks, per call, how a TeRA layer is evaluated
 * (docs/math.md, "Choosing the path"): the merged path (reconstruct W0 + alpha dW,
 * then GEMMs with the layer's weight) or the factored path (never forms dW; its
 * big GEMMs are with the core, [R_out, R_in]). Each kernel's time is estimated
 * in one unit, a flop of the device's sgemm: a GEMM costs its flops, the Tucker
 * kernels their flops times how much slower than sgemm they run, and the
 * memory-bound passes the floats they move times what one float's traffic is
 * worth in sgemm flops. Only the ratio of the two totals matters.
 */
import type { Device } from '../../tensor/device';
import type { TeraEvaluation, TeraPath, TeraShape } from './config';

/** How fast a device runs each kind of work, relative to one flop of its sgemm. */
export interface DeviceRates {
  /** sgemm flops that one flop of a Tucker mode product (reconstruction, kroneckerRows) costs. */
  tuckerFlop: number;
  /** The same for a mode product whose sizes both reach BLAS_MODE_SIZE (run as a GEMM). */
  blasModeFlop: number;
  /** sgemm flops that the memory traffic of one float (read or written) costs. */
  float: number;
}

/** Mode sizes from which the CPU kernels hand a mode product to BLAS (kBlasModeSize in native/cpu/tucker_tiles.h). */
export const BLAS_MODE_SIZE = 64;

export const DEVICE_RATES: Readonly<Record<Device, DeviceRates>> = {
  // Measured on the benchmark machine (1 thread, d 4096, T 512): sgemm 93 GFLOP/s;
  // reconstruction 16^6 and kroneckerRows 16^3 at 47-54 GFLOP/s, 64^4 and 64^2 at
  // 64-81 GFLOP/s; 22 GB/s of memory traffic, 5.5 G floats/s.
  cpu: { tuckerFlop: 2.0, blasModeFlop: 1.35, float: 16 },
  // Not measured (no GPU was lent): an H200's fp32 sgemm (~50 TFLOP/s) against
  // its 4.8 TB/s, and the Tucker kernels assumed at a third of sgemm.
  cuda: { tuckerFlop: 3, blasModeFlop: 3, float: 40 },
};

/** What the backward pass of a call will compute. */
export interface CallNeeds {
  /** Autograd records the call: a backward pass will follow. */
  backward: boolean;
  /** It computes dx. */
  dx: boolean;
  /** It computes the l_n gradients. */
  dl: boolean;
}

export interface LayerCall {
  shape: TeraShape;
  /** Rows of x (tokens). */
  rows: number;
  device: Device;
  needs: CallNeeds;
  /**
   * The adapter's layers of this size: all but the last of a stack find their W_eff overwritten
   * in backward. (Counted per adapter, not per process, so that the choice, and with it the
   * rounding, does not depend on other models.)
   */
  siblings: number;
  /** Layers sharing the workspace now, of every adapter and model: they bound what the factored path keeps. */
  sharers: number;
  /** Whether the workspace's d_out x d_in buffer exists (then the factored path keeps nothing). */
  workspaceAllocated: boolean;
}

export interface PathPlan {
  path: TeraPath;
  /** Estimated cost of the merged path, in sgemm flops. */
  merged: number;
  /** Estimated cost of the factored path, in sgemm flops. */
  factored: number;
  /**
   * Whether the factored path keeps its projected activations ([rows, R_in] and [rows, R_out])
   * from forward to backward; if not, backward recomputes them.
   */
  keep: boolean;
}

const product = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);

/**
 * Estimated cost, in sgemm flops, of the successive mode products taking dims `from` to `to`
 * (last mode first): each product's flops at the rate of the kernel that runs it.
 */
export function chainCost(from: readonly number[], to: readonly number[], rates: DeviceRates): number {
  const cur = [...from];
  let total = 0;
  for (let n = cur.length - 1; n >= 0; n--) {
    const rate = Math.min(from[n], to[n]) >= BLAS_MODE_SIZE ? rates.blasModeFlop : rates.tuckerFlop;
    total += 2 * (product(cur) / cur[n]) * from[n] * to[n] * rate;
    cur[n] = to[n];
  }
  return total;
}

/**
 * Whether the factored path may keep its activations: every sharer's kept activations plus the
 * call's own scratch slots (u, du, gOut, dv: twice what one layer keeps) within one workspace, so
 * that a stack's extra memory stays one d_out x d_in buffer per layer size however deep it is.
 */
export function factoredKeeps(call: LayerCall): boolean {
  const { shape, rows } = call;
  const P = shape.outModes.length;
  const saved = rows * (product(shape.ranks.slice(P)) + product(shape.ranks.slice(0, P)));
  const workspace = product(shape.modes);
  return call.needs.backward && !call.workspaceAllocated && saved * (call.sharers + 2) <= workspace;
}

/** Both paths' estimated costs and the chosen path (`evaluation` forces one). */
export function planPath(call: LayerCall, evaluation: TeraEvaluation): PathPlan {
  // Costed for a training call whatever this call needs, and with this adapter's own layers as
  // the only sharers: the path changes the rounding, so it must not depend on the grad mode or
  // on what else is alive (an adapter saved after training must reload to identical outputs).
  // The actual keep may differ, which changes memory and time, never the values.
  const needs: CallNeeds = { backward: true, dx: true, dl: true };
  const { shape, rows: T } = call;
  const rates = DEVICE_RATES[call.device];
  const P = shape.outModes.length;
  const outRanks = shape.ranks.slice(0, P);
  const inRanks = shape.ranks.slice(P);
  const dOut = product(shape.outModes);
  const dIn = product(shape.inModes);
  const rOut = product(outRanks);
  const rIn = product(inRanks);

  const gemm = (m: number, n: number, k: number) => 2 * m * n * k + m * n * rates.float;
  const floats = (count: number) => count * rates.float;
  const rowProduct = (from: readonly number[], to: readonly number[]) => T * chainCost(from, to, rates);
  const reconstruct = chainCost(shape.ranks, shape.modes, rates) + floats(dOut * dIn);
  const contractIn = rowProduct(shape.inModes, inRanks);
  const contractOut = rowProduct(shape.outModes, outRanks);
  const expandIn = rowProduct(inRanks, shape.inModes);
  const expandOut = rowProduct(outRanks, shape.outModes);

  let merged = reconstruct + gemm(T, dOut, dIn);
  if (needs.backward) {
    if (needs.dx) merged += gemm(T, dIn, dOut) + (1 - 1 / Math.max(call.siblings, 1)) * reconstruct;
    if (needs.dl) merged += contractIn + contractOut + gemm(rOut, rIn, T) + floats(2 * rOut * rIn);
  }

  const keep = factoredKeeps(call);
  const keepAlone = factoredKeeps({ ...call, needs, sharers: call.siblings, workspaceAllocated: false });
  let factored = contractIn + floats(2 * T * rIn) + gemm(T, rOut, rIn) + expandOut + gemm(T, dOut, dIn);
  factored += floats(T * dOut); // the GEMM adds x W0^T to what is already in y
  if (needs.backward && (needs.dx || needs.dl)) {
    factored += contractOut + floats(2 * T * rOut) + gemm(T, rIn, rOut);
    if (needs.dl) {
      factored += floats(2 * T * (rIn + rOut));
      if (!keepAlone) factored += contractIn + floats(2 * T * rIn) + gemm(T, rOut, rIn);
    }
    if (needs.dx) factored += expandIn + gemm(T, dIn, dOut) + floats(T * dIn);
  }

  const path = evaluation !== 'auto' ? evaluation : factored < merged ? 'factored' : 'merged';
  return { path, merged, factored, keep };
}
