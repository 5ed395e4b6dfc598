/**
 * The typed surface of the native addon (build/Release/tera.node or a prebuild).
 * lib/ wraps it; users normally call the TypeScript API instead. All matrices are
 * row-major float32; every kernel validates its arguments and throws an Error that
 * names the problem instead of crashing.
 */

export type NativeDevice = 'cpu' | 'cuda';
export type ActivationName = 'relu' | 'gelu' | 'tanh';

/** A reference-counted block of float32 memory on one device. */
export interface NativeStorage {
  readonly device: NativeDevice;
  readonly length: number;
  readonly disposed: boolean;
  readonly refCount: number;
  retain(): void;
  /** Drops one reference; the memory is freed when none are left. */
  release(): void;
  read(): Float32Array;
  write(data: Float32Array): void;
  copyFrom(source: NativeStorage): void;
}

export interface NativeStorageConstructor {
  /** Zero-filled storage of `length` floats. */
  new (length: number, device: NativeDevice): NativeStorage;
}

export interface NativeCpuInfo {
  threads: number;
  defaultThreads: number;
  blas: string;
  blasCore: string;
  simd: string;
}

export interface NativeCudaInfo {
  built: boolean;
  available: boolean;
  reason?: string;
  archs?: string;
  device?: string;
  computeCapability?: number;
  totalMemory?: number;
  cublas?: string;
  driverVersion?: number;
  runtimeVersion?: number;
}

export interface NativeBackendInfo {
  cpu: NativeCpuInfo;
  cuda: NativeCudaInfo;
  napiVersion: number;
}

type S = NativeStorage;

export interface NativeBinding {
  Storage: NativeStorageConstructor;

  /** C = alpha op(A) op(B) + beta C; op(A) is m x k, op(B) k x n. */
  gemm(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: S,
    b: S,
    beta: number,
    c: S,
  ): void;
  gemmAsync(
    transA: boolean,
    transB: boolean,
    m: number,
    n: number,
    k: number,
    alpha: number,
    a: S,
    b: S,
    beta: number,
    c: S,
  ): Promise<void>;
  /** y = x x_mode (matrix diag(scale)), matrix is [rows, shape[mode]]. */
  modeProduct(x: S, shape: readonly number[], mode: number, matrix: S, rows: number, scale: S | null, y: S): void;
  modeProductAsync(
    x: S,
    shape: readonly number[],
    mode: number,
    matrix: S,
    rows: number,
    scale: S | null,
    y: S,
  ): Promise<void>;
  /** out = alpha G x_1 (A_1 diag(l_1)) ... x_N (A_N diag(l_N)). */
  tuckerReconstruct(
    core: S,
    modes: readonly number[],
    ranks: readonly number[],
    factors: readonly S[],
    scales: readonly (S | null)[],
    alpha: number,
    out: S,
  ): void;
  tuckerReconstructAsync(
    core: S,
    modes: readonly number[],
    ranks: readonly number[],
    factors: readonly S[],
    scales: readonly (S | null)[],
    alpha: number,
    out: S,
  ): Promise<void>;
  /** grads[n] = d<gradX, X(l)>/dl_n. overwriteGradX lets the kernel use gradX as workspace. */
  tuckerScaleGrad(
    gradX: S,
    core: S,
    modes: readonly number[],
    ranks: readonly number[],
    factors: readonly S[],
    scales: readonly (S | null)[],
    grads: readonly S[],
    overwriteGradX: boolean,
  ): void;
  tuckerScaleGradAsync(
    gradX: S,
    core: S,
    modes: readonly number[],
    ranks: readonly number[],
    factors: readonly S[],
    scales: readonly (S | null)[],
    grads: readonly S[],
    overwriteGradX: boolean,
  ): Promise<void>;

  /** Philox4x32-10 fill: element k uses counter (k, stream) and key seed. normal: (mean a, std b); uniform: [a, b). */
  randomFill(out: S, distribution: 'uniform' | 'normal', seed: bigint, stream: bigint, a: number, b: number): void;
  /** One raw Philox4x32-10 block, for known-answer tests. */
  philox4x32(counter: readonly number[], key: readonly number[]): number[];

  fill(out: S, value: number): void;
  /** y = a x + b y */
  axpby(y: S, x: S, a: number, b: number): void;
  multiply(out: S, x: S, y: S): void;
  /** out[i,j] = x[i,j] v[j] (perColumn) or x[i,j] v[i]. */
  scaleMatrix(out: S, x: S, v: S, rows: number, cols: number, perColumn: boolean): void;
  /** x[i,j] += v[j] */
  addRowVector(x: S, v: S, rows: number, cols: number): void;
  /** overColumns: out[i] = beta out[i] + sum_j x[i,j]; else out[j] = beta out[j] + sum_i x[i,j]. */
  sumAxis(out: S, x: S, rows: number, cols: number, overColumns: boolean, beta: number): void;
  activationForward(kind: ActivationName, y: S, x: S): void;
  /** dx = beta dx + dy f'(x) */
  activationBackward(kind: ActivationName, dx: S, x: S, dy: S, beta: number): void;
  sum(x: S): number;
  dot(x: S, y: S): number;
  /** Mean cross-entropy; grad (optional) = scale (softmax - onehot) / rows. */
  softmaxCrossEntropy(logits: S, labels: S, rows: number, classes: number, grad: S | null, scale: number): number;
  argmaxRows(out: S, x: S, rows: number, cols: number): void;
  adamwStep(
    param: S,
    grad: S,
    m: S,
    v: S,
    lr: number,
    beta1: number,
    beta2: number,
    eps: number,
    weightDecay: number,
    step: number,
  ): void;
  sgdStep(
    param: S,
    grad: S,
    momentum: S | null,
    lr: number,
    momentum_: number,
    weightDecay: number,
    nesterov: boolean,
  ): void;

  setNumThreads(n: number): void;
  getNumThreads(): number;
  backendInfo(): NativeBackendInfo;
}

/** Whether NCCL can be used here (a CUDA build, a GPU, and libnccl found at run time). */
export interface NativeNcclStatus {
  available: boolean;
  reason?: string;
  /** The libnccl file that was loaded. */
  library?: string;
  /** ncclGetVersion's code, e.g. 22105 for 2.21.5. */
  version?: number;
}

/** Distributed training's entries (lib/distributed); merged into NativeBinding. */
export interface NativeBinding {
  /**
   * bucket[offsets[i] ...] = scale * sources[i]. The bucket is a storage on the tensors'
   * device or, for CPU tensors, a Float32Array (the host buffer MPI reduces in place).
   */
  packInto(bucket: S | Float32Array, sources: readonly S[], offsets: readonly number[], scale: number): void;
  /** targets[i] = scale * bucket[offsets[i] ...]. */
  unpackFrom(bucket: S | Float32Array, targets: readonly S[], offsets: readonly number[], scale: number): void;
  ncclStatus(): NativeNcclStatus;
  /** 128 bytes; rank 0 makes it and MPI broadcasts it. */
  ncclUniqueId(): Uint8Array;
  /** The PCI bus id of the GPU this process computes on. */
  ncclDeviceBusId(): string;
  /** Joins the communicator; blocks until every rank has called it. */
  ncclInit(uniqueId: Uint8Array, rank: number, size: number): void;
  ncclDestroy(): void;
  /** In place on a CUDA tensor; a failure or the timeout aborts the communicator and throws. */
  ncclAllReduce(data: S, op: 'sum' | 'max' | 'min', timeoutSeconds: number): void;
  ncclAllReduceAsync(data: S, op: 'sum' | 'max' | 'min', timeoutSeconds: number): Promise<void>;
  ncclBroadcast(data: S, root: number, timeoutSeconds: number): void;
  ncclBroadcastAsync(data: S, root: number, timeoutSeconds: number): Promise<void>;
}
