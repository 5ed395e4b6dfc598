/**
 * The low-level kernel API: each call checks its arguments here (shapes, devices,
 * disposed tensors) with messages that name the mistake, allocates the result and
 * runs the native kernel. The *Async variants run off the main thread.
 */
import { native } from '../native/loader';
import { describeValue, formatShape, gemmDims, sameShape } from '../shape';
import { Tensor, zeros } from '../tensor/tensor';

const MAX_ORDER = 8;

function live(t: unknown, what: string): Tensor {
  if (!(t instanceof Tensor)) throw new Error(`${what} must be a Tensor, got ${describeValue(t)}`);
  if (t.disposed) throw new Error(`${what} ${formatShape(t.shape)} has been disposed`);
  return t;
}

function sameDevice(kernel: string, tensors: [Tensor | null | undefined, string][]): void {
  const present = tensors.filter((entry): entry is [Tensor, string] => entry[0] instanceof Tensor);
  const [first, firstName] = present[0];
  for (const [t, name] of present) {
    if (t.device !== first.device) {
      throw new Error(
        `${kernel}: ${name} is on ${t.device} but ${firstName} is on ${first.device}; move them to one device`,
      );
    }
  }
}

function checkMode(mode: number, order: number, kernel: string): void {
  if (!Number.isInteger(mode) || mode < 0 || mode >= order) {
    throw new Error(
      `${kernel}: mode ${String(mode)} is out of range for a tensor of order ${order} (modes are 0-based)`,
    );
  }
}

interface TuckerParts {
  modes: number[];
  ranks: number[];
  factors: Tensor[];
  scales: (Tensor | null)[];
}

function tuckerParts(
  kernel: string,
  core: Tensor,
  factors: readonly Tensor[],
  scales: readonly (Tensor | null | undefined)[] | undefined,
): TuckerParts {
  live(core, `${kernel}: core`);
  const order = core.rank;
  if (order < 1 || order > MAX_ORDER)
    throw new Error(`${kernel}: core has order ${order}; orders 1 to ${MAX_ORDER} are supported`);
  if (!Array.isArray(factors) || factors.length !== order) {
    throw new Error(
      `${kernel}: core ${formatShape(core.shape)} has order ${order} but ${Array.isArray(factors) ? factors.length : 'no'} factors were given`,
    );
  }
  if (scales !== undefined && (!Array.isArray(scales) || scales.length !== order)) {
    throw new Error(
      `${kernel}: expected ${order} scale vectors (or null entries), got ${Array.isArray(scales) ? scales.length : typeof scales}`,
    );
  }
  const modes: number[] = [];
  const ranks = [...core.shape];
  const scaleList: (Tensor | null)[] = [];
  factors.forEach((f, n) => {
    live(f, `${kernel}: factors[${n}]`);
    if (f.rank !== 2 || f.shape[1] !== ranks[n]) {
      throw new Error(
        `${kernel}: factors[${n}] has shape ${formatShape(f.shape)} but must be [I_${n}, ${ranks[n]}] to match core ${formatShape(core.shape)}`,
      );
    }
    modes.push(f.shape[0]);
    const s = scales?.[n] ?? null;
    if (s !== null) {
      live(s, `${kernel}: scales[${n}]`);
      if (s.size !== ranks[n] || s.rank !== 1) {
        throw new Error(`${kernel}: scales[${n}] has shape ${formatShape(s.shape)} but must be [${ranks[n]}]`);
      }
    }
    scaleList.push(s);
  });
  sameDevice(kernel, [
    [core, 'core'],
    ...factors.map((f, n): [Tensor, string] => [f, `factors[${n}]`]),
    ...scaleList.map((s, n): [Tensor | null, string] => [s, `scales[${n}]`]),
  ]);
  return { modes, ranks, factors: [...factors], scales: scaleList };
}

export interface ReconstructOptions {
  /** Multiplies the result (default 1). */
  alpha?: number;
}

function prepareReconstruct(
  core: Tensor,
  factors: readonly Tensor[],
  scales: readonly (Tensor | null)[] | undefined,
  options: ReconstructOptions,
) {
  const parts = tuckerParts('tuckerReconstruct', core, factors, scales);
  const alpha = options.alpha ?? 1;
  if (!Number.isFinite(alpha))
    throw new Error(`tuckerReconstruct: alpha must be a finite number, got ${String(alpha)}`);
  const out = zeros(parts.modes, { device: core.device });
  const args = [
    core.storage,
    parts.modes,
    parts.ranks,
    parts.factors.map((f) => f.storage),
    parts.scales.map((s) => s?.storage ?? null),
    alpha,
    out.storage,
  ] as const;
  return { out, args };
}

/** X = alpha G x_1 (A_1 diag(l_1)) ... x_N (A_N diag(l_N)), shape [I_1..I_N]. */
export function tuckerReconstruct(
  core: Tensor,
  factors: readonly Tensor[],
  scales?: readonly (Tensor | null)[],
  options: ReconstructOptions = {},
): Tensor {
  const { out, args } = prepareReconstruct(core, factors, scales, options);
  native().tuckerReconstruct(...args);
  return out;
}

export async function tuckerReconstructAsync(
  core: Tensor,
  factors: readonly Tensor[],
  scales?: readonly (Tensor | null)[],
  options: ReconstructOptions = {},
): Promise<Tensor> {
  const { out, args } = prepareReconstruct(core, factors, scales, options);
  await native().tuckerReconstructAsync(...args);
  return out;
}

function prepareModeProduct(x: Tensor, matrix: Tensor, mode: number, scale: Tensor | null | undefined) {
  live(x, 'modeProduct: x');
  live(matrix, 'modeProduct: matrix');
  if (x.rank < 1 || x.rank > MAX_ORDER)
    throw new Error(`modeProduct: x has order ${x.rank}; orders 1 to ${MAX_ORDER} are supported`);
  checkMode(mode, x.rank, 'modeProduct');
  if (matrix.rank !== 2 || matrix.shape[1] !== x.shape[mode]) {
    throw new Error(
      `modeProduct: matrix has shape ${formatShape(matrix.shape)} but must be [J, ${x.shape[mode]}] for mode ${mode} of x ${formatShape(x.shape)}`,
    );
  }
  if (scale) {
    live(scale, 'modeProduct: scale');
    if (scale.rank !== 1 || scale.size !== x.shape[mode]) {
      throw new Error(`modeProduct: scale has shape ${formatShape(scale.shape)} but must be [${x.shape[mode]}]`);
    }
  }
  sameDevice('modeProduct', [
    [x, 'x'],
    [matrix, 'matrix'],
    [scale, 'scale'],
  ]);
  const outShape = [...x.shape];
  outShape[mode] = matrix.shape[0];
  const out = zeros(outShape, { device: x.device });
  const args = [
    x.storage,
    [...x.shape],
    mode,
    matrix.storage,
    matrix.shape[0],
    scale?.storage ?? null,
    out.storage,
  ] as const;
  return { out, args };
}

/** Y = X x_mode (M diag(scale)): contracts mode `mode` of x (size K) with M [J, K]. */
export function modeProduct(x: Tensor, matrix: Tensor, mode: number, scale?: Tensor | null): Tensor {
  const { out, args } = prepareModeProduct(x, matrix, mode, scale);
  native().modeProduct(...args);
  return out;
}

export async function modeProductAsync(
  x: Tensor,
  matrix: Tensor,
  mode: number,
  scale?: Tensor | null,
): Promise<Tensor> {
  const { out, args } = prepareModeProduct(x, matrix, mode, scale);
  await native().modeProductAsync(...args);
  return out;
}

function prepareScaleGrad(gradX: Tensor, core: Tensor, factors: readonly Tensor[], scales: readonly (Tensor | null)[]) {
  const parts = tuckerParts('tuckerScaleGrad', core, factors, scales);
  live(gradX, 'tuckerScaleGrad: gradX');
  if (!sameShape(gradX.shape, parts.modes)) {
    throw new Error(
      `tuckerScaleGrad: gradX has shape ${formatShape(gradX.shape)} but the factors give ${formatShape(parts.modes)}`,
    );
  }
  sameDevice('tuckerScaleGrad', [
    [core, 'core'],
    [gradX, 'gradX'],
  ]);
  const grads = parts.ranks.map((r) => zeros([r], { device: core.device }));
  const args = [
    gradX.storage,
    core.storage,
    parts.modes,
    parts.ranks,
    parts.factors.map((f) => f.storage),
    parts.scales.map((s) => s?.storage ?? null),
    grads.map((g) => g.storage),
    false,
  ] as const;
  return { grads, args };
}

/** dl_n = d<gradX, X(l)>/dl_n for every mode n (X without alpha), one tensor [R_n] each. */
export function tuckerScaleGrad(
  gradX: Tensor,
  core: Tensor,
  factors: readonly Tensor[],
  scales: readonly (Tensor | null)[],
): Tensor[] {
  const { grads, args } = prepareScaleGrad(gradX, core, factors, scales);
  native().tuckerScaleGrad(...args);
  return grads;
}

export async function tuckerScaleGradAsync(
  gradX: Tensor,
  core: Tensor,
  factors: readonly Tensor[],
  scales: readonly (Tensor | null)[],
): Promise<Tensor[]> {
  const { grads, args } = prepareScaleGrad(gradX, core, factors, scales);
  await native().tuckerScaleGradAsync(...args);
  return grads;
}

export interface GemmOptions {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  beta?: number;
  /** Accumulate into this tensor (C = alpha op(A) op(B) + beta C); it is returned. */
  c?: Tensor;
}

function prepareGemm(a: Tensor, b: Tensor, options: GemmOptions) {
  live(a, 'gemm: a');
  live(b, 'gemm: b');
  if (a.rank !== 2 || b.rank !== 2)
    throw new Error(`gemm: a ${formatShape(a.shape)} and b ${formatShape(b.shape)} must both be matrices`);
  const { transA = false, transB = false, alpha = 1 } = options;
  const { m, n, k } = gemmDims('gemm', a.shape, b.shape, transA, transB);
  let c = options.c;
  const beta = options.beta ?? (c ? 1 : 0);
  if (c) {
    live(c, 'gemm: c');
    if (!sameShape(c.shape, [m, n]))
      throw new Error(`gemm: c has shape ${formatShape(c.shape)}, expected [${m}, ${n}]`);
    if (c.storage === a.storage || c.storage === b.storage)
      throw new Error('gemm: c must not share memory with a or b');
  }
  sameDevice('gemm', [
    [a, 'a'],
    [b, 'b'],
    [c, 'c'],
  ]);
  c ??= zeros([m, n], { device: a.device });
  const args = [transA, transB, m, n, k, alpha, a.storage, b.storage, beta, c.storage] as const;
  return { c, args };
}

/** C = alpha op(A) op(B) + beta C. */
export function gemm(a: Tensor, b: Tensor, options: GemmOptions = {}): Tensor {
  const { c, args } = prepareGemm(a, b, options);
  native().gemm(...args);
  return c;
}

export async function gemmAsync(a: Tensor, b: Tensor, options: GemmOptions = {}): Promise<Tensor> {
  const { c, args } = prepareGemm(a, b, options);
  await native().gemmAsync(...args);
  return c;
}
