/**
 * The low-level kernel API: each call checks its arguments here (shapes, devices,
 * disposed tensors) with messages that name the mistake, then writes the result
 * into the caller's `out` tensor (as torch's `out=`) or into a fresh one, and
 * runs the native kernel. The *Async variants run off the main thread.
 *
 * Ownership: a fresh result belongs to the caller (dispose() it); an `out`
 * tensor stays the caller's and is returned as given.
 */
import { native } from '../native/loader';
import { describeValue, formatShape, gemmDims, sameShape } from '../shape';
import type { Device } from '../tensor/device';
import { Tensor, uninitialized } from '../tensor/tensor';

export { narrow, writeSlice } from './slices';

const MAX_ORDER = 8;
const MAX_ELEMENTS = 2 ** 48;
/** BLAS (OpenBLAS, cuBLAS) takes its sizes as 32-bit ints. */
const BLAS_INDEX_LIMIT = 2 ** 31 - 1;

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

/** Where a kernel writes its result instead of a fresh tensor (as torch's `out=`). */
export interface OutOptions {
  /**
   * Overwritten entirely and returned. It must have the result's shape and device, and share
   * no memory with an input (the kernels read inputs after writing parts of the output).
   */
  out?: Tensor;
}

/**
 * The caller's `out` once checked, or a fresh tensor for the result. The kernels given here
 * write every element, so a fresh result is not zero-filled first. Runs after every other
 * check, so a refused call allocates nothing.
 */
function resultTensor(
  kernel: string,
  out: Tensor | undefined,
  shape: readonly number[],
  device: Device,
  inputs: [Tensor | null | undefined, string][],
  what = 'out',
): Tensor {
  if (out === undefined) return uninitialized(shape, { device });
  live(out, `${kernel}: ${what}`);
  if (!sameShape(out.shape, shape)) {
    throw new Error(`${kernel}: ${what} has shape ${formatShape(out.shape)} but the result is ${formatShape(shape)}`);
  }
  if (out.device !== device) throw new Error(`${kernel}: ${what} is on ${out.device} but the inputs are on ${device}`);
  for (const [input, name] of inputs) {
    if (input && input.storage === out.storage)
      throw new Error(`${kernel}: ${what} must not share memory with ${name}`);
  }
  return out;
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
  // The kernels' intermediates mix modes and ranks; the native side refuses the same bound.
  const widest = modes.reduce((p, m, n) => p * Math.max(m, ranks[n]), 1);
  if (widest > MAX_ELEMENTS) {
    throw new Error(
      `${kernel}: modes ${formatShape(modes)} with ranks ${formatShape(ranks)} need an intermediate of more than 2^48 elements`,
    );
  }
  sameDevice(kernel, [
    [core, 'core'],
    ...factors.map((f, n): [Tensor, string] => [f, `factors[${n}]`]),
    ...scaleList.map((s, n): [Tensor | null, string] => [s, `scales[${n}]`]),
  ]);
  return { modes, ranks, factors: [...factors], scales: scaleList };
}

export interface ReconstructOptions extends OutOptions {
  /** Multiplies the result (default 1). */
  alpha?: number;
  /**
   * Added to the result (out = base + alpha X, as W0 + alpha dW) in the pass that writes it, with no
   * pass of its own. It has the result's shape and device and shares no memory with out.
   */
  base?: Tensor;
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
  const { base } = options;
  if (base !== undefined) {
    live(base, 'tuckerReconstruct: base');
    if (!sameShape(base.shape, parts.modes)) {
      throw new Error(
        `tuckerReconstruct: base has shape ${formatShape(base.shape)} but the result is ${formatShape(parts.modes)}`,
      );
    }
    sameDevice('tuckerReconstruct', [
      [core, 'core'],
      [base, 'base'],
    ]);
  }
  const out = resultTensor('tuckerReconstruct', options.out, parts.modes, core.device, [
    [core, 'core'],
    ...parts.factors.map((f, n): [Tensor, string] => [f, `factors[${n}]`]),
    ...parts.scales.map((s, n): [Tensor | null, string] => [s, `scales[${n}]`]),
    [base, 'base'],
  ]);
  const args = [
    core.storage,
    parts.modes,
    parts.ranks,
    parts.factors.map((f) => f.storage),
    parts.scales.map((s) => s?.storage ?? null),
    alpha,
    out.storage,
    base?.storage ?? null,
  ] as const;
  return { out, args };
}

/**
 * X = alpha G x_1 (A_1 diag(l_1)) ... x_N (A_N diag(l_N)), shape [I_1..I_N], plus options.base if
 * given; written into options.out if given.
 */
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

function prepareModeProduct(
  x: Tensor,
  matrix: Tensor,
  mode: number,
  scale: Tensor | null | undefined,
  options: OutOptions,
) {
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
  const out = resultTensor('modeProduct', options.out, outShape, x.device, [
    [x, 'x'],
    [matrix, 'matrix'],
    [scale, 'scale'],
  ]);
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

/** Y = X x_mode (M diag(scale)): contracts mode `mode` of x (size K) with M [J, K]; written into options.out if given. */
export function modeProduct(
  x: Tensor,
  matrix: Tensor,
  mode: number,
  scale?: Tensor | null,
  options: OutOptions = {},
): Tensor {
  const { out, args } = prepareModeProduct(x, matrix, mode, scale, options);
  native().modeProduct(...args);
  return out;
}

export async function modeProductAsync(
  x: Tensor,
  matrix: Tensor,
  mode: number,
  scale?: Tensor | null,
  options: OutOptions = {},
): Promise<Tensor> {
  const { out, args } = prepareModeProduct(x, matrix, mode, scale, options);
  await native().modeProductAsync(...args);
  return out;
}

export interface ScaleGradOptions {
  /**
   * One tensor per mode, shapes [R_n], overwritten and returned (as torch's `out=`); they must be
   * on the core's device and share no memory with each other or with an input.
   */
  out?: readonly Tensor[];
}

function prepareScaleGrad(
  gradX: Tensor,
  core: Tensor,
  factors: readonly Tensor[],
  scales: readonly (Tensor | null)[],
  options: ScaleGradOptions,
) {
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
  const inputs: [Tensor | null, string][] = [
    [gradX, 'gradX'],
    [core, 'core'],
    ...parts.factors.map((f, n): [Tensor, string] => [f, `factors[${n}]`]),
    ...parts.scales.map((s, n): [Tensor | null, string] => [s, `scales[${n}]`]),
  ];
  const grads = gradientTensors('tuckerScaleGrad', parts.ranks, core.device, inputs, options.out);
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

/** dl_n = d<gradX, X(l)>/dl_n for every mode n (X without alpha), one tensor [R_n] each (options.out if given). */
export function tuckerScaleGrad(
  gradX: Tensor,
  core: Tensor,
  factors: readonly Tensor[],
  scales: readonly (Tensor | null)[],
  options: ScaleGradOptions = {},
): Tensor[] {
  const { grads, args } = prepareScaleGrad(gradX, core, factors, scales, options);
  native().tuckerScaleGrad(...args);
  return grads;
}

export async function tuckerScaleGradAsync(
  gradX: Tensor,
  core: Tensor,
  factors: readonly Tensor[],
  scales: readonly (Tensor | null)[],
  options: ScaleGradOptions = {},
): Promise<Tensor[]> {
  const { grads, args } = prepareScaleGrad(gradX, core, factors, scales, options);
  await native().tuckerScaleGradAsync(...args);
  return grads;
}

/** One result tensor per rank, [R_n] each: options.out's (checked) or fresh ones. */
function gradientTensors(
  kernel: string,
  ranks: readonly number[],
  device: Device,
  inputs: [Tensor | null | undefined, string][],
  out: readonly Tensor[] | undefined,
): Tensor[] {
  if (out !== undefined && (!Array.isArray(out) || out.length !== ranks.length)) {
    throw new Error(
      `${kernel}: out must be an array of ${ranks.length} tensors, one per mode, got ${Array.isArray(out) ? out.length : typeof out}`,
    );
  }
  const checked = [...inputs];
  return ranks.map((r, n) => {
    const what = `out[${n}]`;
    const grad = resultTensor(kernel, out?.[n], [r], device, checked, what);
    checked.push([grad, what]);
    return grad;
  });
}

function prepareCoreGrad(z: Tensor, core: Tensor, scales: readonly (Tensor | null)[], options: ScaleGradOptions) {
  live(z, 'tuckerCoreGrad: z');
  live(core, 'tuckerCoreGrad: core');
  if (core.rank < 1 || core.rank > MAX_ORDER) {
    throw new Error(`tuckerCoreGrad: core has order ${core.rank}; orders 1 to ${MAX_ORDER} are supported`);
  }
  if (!sameShape(z.shape, core.shape)) {
    throw new Error(`tuckerCoreGrad: z has shape ${formatShape(z.shape)} but core is ${formatShape(core.shape)}`);
  }
  const ranks = [...core.shape];
  const scaleList = checkScales('tuckerCoreGrad', scales, ranks, true);
  sameDevice('tuckerCoreGrad', [
    [z, 'z'],
    [core, 'core'],
    ...scaleList.map((s, n): [Tensor | null, string] => [s, `scales[${n}]`]),
  ]);
  const inputs: [Tensor | null, string][] = [
    [z, 'z'],
    [core, 'core'],
    ...scaleList.map((s, n): [Tensor | null, string] => [s, `scales[${n}]`]),
  ];
  const grads = gradientTensors('tuckerCoreGrad', ranks, core.device, inputs, options.out);
  const args = [
    z.storage,
    core.storage,
    ranks,
    scaleList.map((s) => s?.storage ?? null),
    grads.map((g) => g.storage),
  ] as const;
  return { grads, args };
}

/**
 * The scale gradients from a core-space gradient z (shape of the core): grads[n] = d/dl_n of
 * sum_r z[r] core[r] prod_m l_m[r_m], one tensor [R_n] each (options.out if given). With z the
 * projection of a full gradient, these are tuckerScaleGrad's results.
 */
export function tuckerCoreGrad(
  z: Tensor,
  core: Tensor,
  scales: readonly (Tensor | null)[],
  options: ScaleGradOptions = {},
): Tensor[] {
  const { grads, args } = prepareCoreGrad(z, core, scales, options);
  native().tuckerCoreGrad(...args);
  return grads;
}

export async function tuckerCoreGradAsync(
  z: Tensor,
  core: Tensor,
  scales: readonly (Tensor | null)[],
  options: ScaleGradOptions = {},
): Promise<Tensor[]> {
  const { grads, args } = prepareCoreGrad(z, core, scales, options);
  await native().tuckerCoreGradAsync(...args);
  return grads;
}

/** Scale vectors, one per rank, each [R_n] (null entries allowed when `nullable`). */
function checkScales(
  kernel: string,
  scales: readonly (Tensor | null)[] | undefined,
  ranks: readonly number[],
  nullable: boolean,
): (Tensor | null)[] {
  if (!Array.isArray(scales) || scales.length !== ranks.length) {
    throw new Error(
      `${kernel}: expected ${ranks.length} scale vectors${nullable ? ' (or null entries)' : ''}, got ${Array.isArray(scales) ? scales.length : typeof scales}`,
    );
  }
  return scales.map((entry: Tensor | null, n) => {
    if (entry === null && nullable) return null;
    const s = live(entry, `${kernel}: scales[${n}]`);
    if (s.rank !== 1 || s.size !== ranks[n]) {
      throw new Error(`${kernel}: scales[${n}] has shape ${formatShape(s.shape)} but must be [${ranks[n]}]`);
    }
    return s;
  });
}

export interface KroneckerRowsOptions extends OutOptions {
  /** Multiplies the result (default 1). */
  alpha?: number;
  /** x K (rows of prod modes to rows of prod ranks) instead of x K^T (default false). */
  contract?: boolean;
}

function prepareKroneckerRows(
  x: Tensor,
  factors: readonly Tensor[],
  scales: readonly (Tensor | null)[] | undefined,
  options: KroneckerRowsOptions,
) {
  const kernel = 'kroneckerRows';
  live(x, `${kernel}: x`);
  if (!Array.isArray(factors) || factors.length < 1 || factors.length > MAX_ORDER) {
    throw new Error(
      `${kernel}: expected 1 to ${MAX_ORDER} factors, got ${Array.isArray(factors) ? factors.length : typeof factors}`,
    );
  }
  const modes: number[] = [];
  const ranks: number[] = [];
  factors.forEach((f, n) => {
    live(f, `${kernel}: factors[${n}]`);
    if (f.rank !== 2)
      throw new Error(`${kernel}: factors[${n}] has shape ${formatShape(f.shape)} but must be [I_${n}, R_${n}]`);
    modes.push(f.shape[0]);
    ranks.push(f.shape[1]);
  });
  const scaleList = checkScales(kernel, scales ?? factors.map(() => null), ranks, true);
  const alpha = options.alpha ?? 1;
  if (!Number.isFinite(alpha)) throw new Error(`${kernel}: alpha must be a finite number, got ${String(alpha)}`);
  const contract = options.contract ?? false;
  const product = (dims: readonly number[]) => dims.reduce((a, b) => a * b, 1);
  const [inRow, outRow] = contract ? [product(modes), product(ranks)] : [product(ranks), product(modes)];
  if (x.rank < 1 || x.shape[x.rank - 1] !== inRow) {
    throw new Error(
      `${kernel}: x has shape ${formatShape(x.shape)} but its rows must hold ${inRow} values (the product of the ${contract ? 'modes' : 'ranks'})`,
    );
  }
  const inputs: [Tensor | null, string][] = [
    [x, 'x'],
    ...factors.map((f, n): [Tensor, string] => [f, `factors[${n}]`]),
    ...scaleList.map((s, n): [Tensor | null, string] => [s, `scales[${n}]`]),
  ];
  sameDevice(kernel, inputs);
  const out = resultTensor(kernel, options.out, [...x.shape.slice(0, -1), outRow], x.device, inputs);
  const args = [
    x.storage,
    x.size / inRow,
    modes,
    ranks,
    factors.map((f) => f.storage),
    scaleList.map((s) => s?.storage ?? null),
    alpha,
    contract,
    out.storage,
  ] as const;
  return { out, args };
}

/**
 * Each row of x (its last dimension) times K = (A_1 diag(s_1)) (x) ... (x) (A_Q diag(s_Q)), with
 * A_n = factors[n] [I_n, R_n]: alpha x K^T (rows of prod R_n become rows of prod I_n), or with
 * options.contract alpha x K (the other way). The factored TeRA path's row products; never forms K.
 */
export function kroneckerRows(
  x: Tensor,
  factors: readonly Tensor[],
  scales?: readonly (Tensor | null)[],
  options: KroneckerRowsOptions = {},
): Tensor {
  const { out, args } = prepareKroneckerRows(x, factors, scales, options);
  native().kroneckerRows(...args);
  return out;
}

export async function kroneckerRowsAsync(
  x: Tensor,
  factors: readonly Tensor[],
  scales?: readonly (Tensor | null)[],
  options: KroneckerRowsOptions = {},
): Promise<Tensor> {
  const { out, args } = prepareKroneckerRows(x, factors, scales, options);
  await native().kroneckerRowsAsync(...args);
  return out;
}

export interface KroneckerScaleOptions {
  /** Multiplies lambda (default 1). */
  alpha?: number;
  /** Overwritten with the result and returned; it may be x itself. */
  out?: Tensor;
}

/** The ranks given by the scale vectors, and x checked against their product. */
function scaledRows(kernel: string, x: Tensor, scales: readonly Tensor[], what: string) {
  if (!Array.isArray(scales) || scales.length < 1 || scales.length > MAX_ORDER) {
    throw new Error(
      `${kernel}: expected 1 to ${MAX_ORDER} scale vectors, got ${Array.isArray(scales) ? scales.length : typeof scales}`,
    );
  }
  const ranks = scales.map((s, n) => {
    live(s, `${kernel}: scales[${n}]`);
    if (s.rank !== 1) throw new Error(`${kernel}: scales[${n}] has shape ${formatShape(s.shape)} but must be a vector`);
    return s.size;
  });
  const cols = ranks.reduce((a, b) => a * b, 1);
  live(x, `${kernel}: ${what}`);
  if (x.rank < 1 || x.shape[x.rank - 1] !== cols) {
    throw new Error(
      `${kernel}: ${what} has shape ${formatShape(x.shape)} but its rows must hold ${cols} values (the product of the scale lengths)`,
    );
  }
  return { ranks, rows: x.size / cols };
}

function prepareKroneckerScale(x: Tensor, scales: readonly Tensor[], options: KroneckerScaleOptions) {
  const kernel = 'kroneckerScale';
  const { ranks, rows } = scaledRows(kernel, x, scales, 'x');
  const alpha = options.alpha ?? 1;
  if (!Number.isFinite(alpha)) throw new Error(`${kernel}: alpha must be a finite number, got ${String(alpha)}`);
  const vectors = scales.map((s, n): [Tensor, string] => [s, `scales[${n}]`]);
  sameDevice(kernel, [[x, 'x'], ...vectors]);
  // In place is allowed (the scaling is elementwise): out may hold x's memory, not a scale vector's.
  const inPlace = options.out !== undefined && options.out.storage === x.storage;
  const out = resultTensor(kernel, options.out, x.shape, x.device, inPlace ? vectors : [[x, 'x'], ...vectors]);
  const args = [x.storage, rows, ranks, scales.map((s) => s.storage), alpha, out.storage] as const;
  return { out, args };
}

/** x with each row scaled elementwise by lambda = alpha scales[0] (x) ... (x) scales[Q-1] (into options.out, which may be x). */
export function kroneckerScale(x: Tensor, scales: readonly Tensor[], options: KroneckerScaleOptions = {}): Tensor {
  const { out, args } = prepareKroneckerScale(x, scales, options);
  native().kroneckerScale(...args);
  return out;
}

export async function kroneckerScaleAsync(
  x: Tensor,
  scales: readonly Tensor[],
  options: KroneckerScaleOptions = {},
): Promise<Tensor> {
  const { out, args } = prepareKroneckerScale(x, scales, options);
  await native().kroneckerScaleAsync(...args);
  return out;
}

export interface KroneckerScaleGradOptions extends ScaleGradOptions {
  /** Multiplies the gradients (default 1). */
  alpha?: number;
}

function prepareKroneckerScaleGrad(
  a: Tensor,
  b: Tensor,
  scales: readonly Tensor[],
  options: KroneckerScaleGradOptions,
) {
  const kernel = 'kroneckerScaleGrad';
  const { ranks, rows } = scaledRows(kernel, a, scales, 'a');
  live(b, `${kernel}: b`);
  if (!sameShape(a.shape, b.shape)) {
    throw new Error(`${kernel}: a has shape ${formatShape(a.shape)} but b has ${formatShape(b.shape)}`);
  }
  const alpha = options.alpha ?? 1;
  if (!Number.isFinite(alpha)) throw new Error(`${kernel}: alpha must be a finite number, got ${String(alpha)}`);
  const inputs: [Tensor, string][] = [
    [a, 'a'],
    [b, 'b'],
    ...scales.map((s, n): [Tensor, string] => [s, `scales[${n}]`]),
  ];
  sameDevice(kernel, inputs);
  const grads = gradientTensors(kernel, ranks, a.device, inputs, options.out);
  const args = [
    a.storage,
    b.storage,
    rows,
    ranks,
    scales.map((s) => s.storage),
    alpha,
    grads.map((g) => g.storage),
  ] as const;
  return { grads, args };
}

/**
 * kroneckerScale's scale gradients: grads[n] = d/ds_n of alpha sum_{t,r} a[t, r] b[t, r]
 * (scales[0] (x) ... (x) scales[Q-1])[r], one tensor [R_n] each (options.out if given), from suffix
 * contractions and prefix products (never dividing by a scale).
 */
export function kroneckerScaleGrad(
  a: Tensor,
  b: Tensor,
  scales: readonly Tensor[],
  options: KroneckerScaleGradOptions = {},
): Tensor[] {
  const { grads, args } = prepareKroneckerScaleGrad(a, b, scales, options);
  native().kroneckerScaleGrad(...args);
  return grads;
}

export async function kroneckerScaleGradAsync(
  a: Tensor,
  b: Tensor,
  scales: readonly Tensor[],
  options: KroneckerScaleGradOptions = {},
): Promise<Tensor[]> {
  const { grads, args } = prepareKroneckerScaleGrad(a, b, scales, options);
  await native().kroneckerScaleGradAsync(...args);
  return grads;
}

export interface GemmOptions extends OutOptions {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  /** Weight of c's previous contents (default 1); only with c. */
  beta?: number;
  /** Accumulate into this tensor (C = alpha op(A) op(B) + beta C); it is returned. Not with out. */
  c?: Tensor;
}

function prepareGemm(a: Tensor, b: Tensor, options: GemmOptions) {
  live(a, 'gemm: a');
  live(b, 'gemm: b');
  if (a.rank !== 2 || b.rank !== 2)
    throw new Error(`gemm: a ${formatShape(a.shape)} and b ${formatShape(b.shape)} must both be matrices`);
  const { transA = false, transB = false, alpha = 1 } = options;
  const { m, n, k } = gemmDims('gemm', a.shape, b.shape, transA, transB);
  for (const [name, size] of [
    ['m', m],
    ['n', n],
    ['k', k],
  ] as const) {
    if (size > BLAS_INDEX_LIMIT)
      throw new Error(`gemm: ${name} = ${size} exceeds the BLAS 32-bit index limit (2^31 - 1)`);
  }
  const { c } = options;
  if (c !== undefined && options.out !== undefined) {
    throw new Error('gemm: give c (to accumulate into) or out (to overwrite), not both');
  }
  if (options.beta !== undefined && c === undefined) {
    throw new Error('gemm: beta weighs the previous contents of c; without c there are none');
  }
  if (c !== undefined) {
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
  // beta = 0: BLAS then writes every element of the result without reading it.
  const beta = c === undefined ? 0 : (options.beta ?? 1);
  const result =
    c ??
    resultTensor('gemm', options.out, [m, n], a.device, [
      [a, 'a'],
      [b, 'b'],
    ]);
  const args = [transA, transB, m, n, k, alpha, a.storage, b.storage, beta, result.storage] as const;
  return { c: result, args };
}

/** C = alpha op(A) op(B) + beta C (with options.c), or alpha op(A) op(B) into options.out or a fresh tensor. */
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

/** Float32 holds every integer up to 2^24 exactly, and argmax returns indices as float32. */
const MAX_EXACT_INDEX = 2 ** 24;

/**
 * The index of the largest value in each row of a matrix [rows, cols], as a tensor [rows] of
 * float32 indices (into options.out if given). NaN counts as the largest value and ties go to the
 * first index, as torch.argmax(x, 1).
 */
export function argmax(x: Tensor, options: OutOptions = {}): Tensor {
  live(x, 'argmax: x');
  if (x.rank !== 2) throw new Error(`argmax: x has shape ${formatShape(x.shape)} but must be a matrix [rows, cols]`);
  const [rows, cols] = x.shape;
  if (cols > MAX_EXACT_INDEX) {
    throw new Error(`argmax: rows of ${cols} values have indices past 2^24, which float32 cannot hold exactly`);
  }
  const out = resultTensor('argmax', options.out, [rows], x.device, [[x, 'x']]);
  native().argmaxRows(out.storage, x.storage, rows, cols);
  return out;
}
