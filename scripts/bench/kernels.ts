/**
 * Kernel benchmarks: Tucker reconstruction, mode products and the scaling-vector
 * gradient at the shapes TeRA uses, each next to OpenBLAS sgemm of the same output
 * size in the same interleaved run (its GFLOP/s is this machine's measured peak), and
 * next to a chain of PyTorch tensordots doing the same reconstruction when torch is there.
 *
 * Shapes: TeRA's default factorings, large modes (64, 128), a prime mode (43) and order 2
 * at full rank, each against the sgemm of its [d_out, d_in] output.
 *
 * The kernels are called through the native binding with outputs allocated once, so
 * the times are the kernels' own: the public kernels.* API adds an output allocation
 * per call (not zero-filled, but with page faults on fresh memory) on top.
 */
import { random, type Tensor, zeros } from '../../lib';
import { native } from '../../lib/native/loader';
import {
  type Contender,
  deviceTimer,
  interleave,
  pairedRatio,
  type SuiteContext,
  type Summary,
  summarize,
  torchOn,
  useThreads,
} from './measure';

export interface KernelShape {
  name: string;
  dOut: number;
  dIn: number;
  /** Output modes then input modes: maxModeSize 16's factoring (the performance issue's shapes), and larger modes. */
  modes: number[];
  /** The ranks; default min(I_n, 16). */
  ranks?: number[];
  /** Time modeProduct on the first, a middle and the last mode (off where each is a plain sgemm). */
  modeProducts: boolean;
}

function ranksOf(shape: KernelShape): number[] {
  return shape.ranks ?? shape.modes.map((m) => Math.min(m, 16));
}

export const kernelShapes: KernelShape[] = [
  { name: '1024x1024', dOut: 1024, dIn: 1024, modes: [8, 8, 16, 8, 8, 16], modeProducts: true },
  { name: '4096x4096 16^6', dOut: 4096, dIn: 4096, modes: [16, 16, 16, 16, 16, 16], modeProducts: true },
  { name: '4096x4096 8^8', dOut: 4096, dIn: 4096, modes: [8, 8, 8, 8, 8, 8, 8, 8], modeProducts: false },
  // 11008 = 2^8 * 43: the prime 43 stays one mode.
  { name: '4096x11008', dOut: 4096, dIn: 11008, modes: [16, 16, 16, 16, 16, 43], modeProducts: true },
  // Large modes (maxModeSize 64 or 128), ranks 16; then the adapter's default at 4096, full rank.
  { name: '4096x4096 64^4', dOut: 4096, dIn: 4096, modes: [64, 64, 64, 64], modeProducts: true },
  {
    name: '4096x4096 64^4 full rank',
    dOut: 4096,
    dIn: 4096,
    modes: [64, 64, 64, 64],
    ranks: [64, 64, 64, 64],
    modeProducts: false,
  },
  { name: '4096x4096 128x32', dOut: 4096, dIn: 4096, modes: [128, 32, 128, 32], modeProducts: true },
  // Order 2 at full rank: the MNIST model's first layer, and a 4096 layer as one mode each side.
  { name: '784x128 order 2', dOut: 128, dIn: 784, modes: [128, 784], ranks: [128, 784], modeProducts: false },
  {
    name: '4096x4096 order 2',
    dOut: 4096,
    dIn: 4096,
    modes: [4096, 4096],
    ranks: [4096, 4096],
    modeProducts: false,
  },
];

export interface KernelResult {
  device: 'cpu' | 'cuda';
  /** CPU threads (ours and torch's); null on the GPU. */
  threads: number | null;
  shape: string;
  modes: number[];
  ranks: number[];
  kernel: string;
  implementation: string;
  /** Floating-point operations per call (2 per multiply-add); null for a copy. */
  flop: number | null;
  ms: Summary;
  /** flop / median time. */
  gflops: number | null;
  /** GFLOP/s as a fraction of the same run's sgemm, per repetition. */
  ofSgemm: Summary | null;
  /** Time over the same run's reconstruction, per repetition (scaleGrad, PyTorch, copy). */
  vsReconstruct: Summary | null;
}

/** Multiply-adds of the successive mode products, last mode first (TuckerShape::reconstructMultiplyAdds). */
export function reconstructMultiplyAdds(modes: readonly number[], ranks: readonly number[]): number {
  let total = 0;
  for (let applied = modes.length - 1; applied >= 0; applied--) {
    let others = 1;
    for (let n = 0; n < modes.length; n++) if (n !== applied) others *= n > applied ? modes[n] : ranks[n];
    total += others * modes[applied] * ranks[applied];
  }
  return total;
}

interface TimedKernel {
  kernel: string;
  implementation: string;
  flop: number | null;
  /** Report its time over reconstruction's (scaleGrad's target, PyTorch's chain, a GPU copy). */
  againstReconstruct?: boolean;
  contender: Contender;
}

function normal(shape: number[], device: 'cpu' | 'cuda', key: number): Tensor {
  return random.normal(shape, { seed: 7, key, device, std: 1 / Math.sqrt(shape[shape.length - 1]) });
}

/** Our kernels and sgemm for one shape on one device, with everything allocated up front. */
function ourKernels(shape: KernelShape, device: 'cpu' | 'cuda'): { kernels: TimedKernel[]; free(): void } {
  const { modes } = shape;
  const ranks = ranksOf(shape);
  const order = modes.length;
  const core = normal(ranks, device, 1);
  const factors = modes.map((m, n) => normal([m, ranks[n]], device, 10 + n));
  const scales = ranks.map((r, n) => normal([r], device, 20 + n));
  const full = normal(modes, device, 2);
  const out = zeros(modes, { device });
  const grads = ranks.map((r) => zeros([r], { device }));
  // modeProduct's modes: the first, a middle one, the last (square matrices).
  const productModes = shape.modeProducts ? [0, order >> 1, order - 1] : [];
  const square = productModes.map((n) => normal([modes[n], modes[n]], device, 30 + n));
  // sgemm producing the same [dOut, dIn] output, with k = min(dOut, dIn).
  const k = Math.min(shape.dOut, shape.dIn);
  const a = normal([shape.dOut, k], device, 3);
  const b = normal([k, shape.dIn], device, 4);
  const c = zeros([shape.dOut, shape.dIn], { device });
  const all = [core, ...factors, ...scales, full, out, ...grads, ...square, a, b, c];

  const api = native();
  const time = deviceTimer(device);
  const storages = (list: Tensor[]) => list.map((t) => t.storage);
  const tuckerFlop = 2 * reconstructMultiplyAdds(modes, ranks);
  const modeProduct = (n: number, which: string, matrix: Tensor): TimedKernel => ({
    kernel: `modeProduct (${which} mode, ${modes[n]}x${modes[n]})`,
    implementation: 'tera-peft',
    flop: 2 * full.size * modes[n],
    contender: {
      name: `modeProduct ${which}`,
      once: () => time(() => api.modeProduct(full.storage, modes, n, matrix.storage, modes[n], null, out.storage)),
    },
  });
  const kernels: TimedKernel[] = [
    {
      kernel: 'reconstruct',
      implementation: 'tera-peft',
      flop: tuckerFlop,
      contender: {
        name: 'reconstruct',
        once: () =>
          time(() =>
            api.tuckerReconstruct(core.storage, modes, ranks, storages(factors), storages(scales), 1, out.storage),
          ),
      },
    },
    ...productModes.map((n, i) => modeProduct(n, ['first', 'middle', 'last'][i], square[i])),
    {
      // The projection into core space dominates; it has reconstruction's multiply-adds.
      kernel: 'scaleGrad',
      implementation: 'tera-peft',
      flop: tuckerFlop,
      againstReconstruct: true,
      contender: {
        name: 'scaleGrad',
        once: () =>
          time(() =>
            api.tuckerScaleGrad(
              full.storage,
              core.storage,
              modes,
              ranks,
              storages(factors),
              storages(scales),
              storages(grads),
              false,
            ),
          ),
      },
    },
    {
      kernel: `sgemm ${shape.dOut}x${shape.dIn}x${k}`,
      implementation: device === 'cpu' ? 'OpenBLAS' : 'cuBLAS',
      flop: 2 * shape.dOut * shape.dIn * k,
      contender: {
        name: 'sgemm',
        once: () => time(() => api.gemm(false, false, shape.dOut, shape.dIn, k, 1, a.storage, b.storage, 0, c.storage)),
      },
    },
  ];
  if (device === 'cuda') {
    kernels.push({
      kernel: 'device-to-device copy (same bytes)',
      implementation: 'cudaMemcpyAsync',
      flop: null,
      againstReconstruct: true,
      contender: { name: 'copy', once: () => time(() => out.storage.copyFrom(full.storage)) },
    });
  }
  return { kernels, free: () => all.forEach((t) => t.dispose()) };
}

async function torchKernels(context: SuiteContext, shape: KernelShape, device: 'cpu' | 'cuda'): Promise<TimedKernel[]> {
  const torch = torchOn(context, device);
  if (!torch) return [];
  const ranks = ranksOf(shape);
  const k = Math.min(shape.dOut, shape.dIn);
  const key = `kernels ${shape.name}`;
  await torch.request('setup', {
    key,
    case: {
      kind: 'kernel',
      device,
      modes: shape.modes,
      ranks,
      d_out: shape.dOut,
      d_in: shape.dIn,
      gemm: [shape.dOut, shape.dIn, k],
    },
  });
  return [
    {
      kernel: 'reconstruct (tensordot chain)',
      implementation: 'PyTorch',
      flop: 2 * reconstructMultiplyAdds(shape.modes, ranks),
      againstReconstruct: true,
      contender: { name: 'torch reconstruct', once: () => torch.time(key, 'reconstruct') },
    },
    {
      kernel: `sgemm ${shape.dOut}x${shape.dIn}x${k} (torch.mm)`,
      implementation: 'PyTorch',
      flop: 2 * shape.dOut * shape.dIn * k,
      contender: { name: 'torch sgemm', once: () => torch.time(key, 'sgemm') },
    },
  ];
}

export async function runKernels(context: SuiteContext, shapes: readonly KernelShape[]): Promise<KernelResult[]> {
  const results: KernelResult[] = [];
  for (const device of context.devices) {
    for (const threads of device === 'cpu' ? context.threads : [null]) {
      if (threads !== null) await useThreads(context, threads);
      for (const shape of shapes) {
        context.log(`kernels ${device}${threads === null ? '' : ` ${threads} thread(s)`} ${shape.name}`);
        const ours = ourKernels(shape, device);
        const theirs = await torchKernels(context, shape, device);
        const timed = [...ours.kernels, ...theirs];
        const samples = await interleave(
          timed.map((t) => t.contender),
          context.schedule,
        );
        ours.free();
        await torchOn(context, device)?.request('drop', { key: `kernels ${shape.name}` });

        const sgemm = samples.get('sgemm')!;
        const sgemmFlop = timed.find((t) => t.contender.name === 'sgemm')!.flop!;
        const reconstruct = samples.get('reconstruct')!;
        for (const t of timed) {
          const ms = samples.get(t.contender.name)!;
          const { flop } = t;
          const median = summarize(ms).median;
          results.push({
            device,
            threads,
            shape: shape.name,
            modes: shape.modes,
            ranks: ranksOf(shape),
            kernel: t.kernel,
            implementation: t.implementation,
            flop,
            ms: summarize(ms),
            gflops: flop === null ? null : flop / median / 1e6,
            // (flop / ms) / (sgemmFlop / sgemmMs) = flop * sgemmMs / (sgemmFlop * ms)
            ofSgemm:
              flop === null
                ? null
                : pairedRatio(
                    sgemm.map((s) => s * flop),
                    ms.map((m) => m * sgemmFlop),
                  ),
            vsReconstruct: t.againstReconstruct ? pairedRatio(ms, reconstruct) : null,
          });
        }
      }
    }
  }
  return results;
}
