/**
 * The typed surface of the native addon (build/Release/tera.node or a prebuild).
 * lib/ wraps it; users normally call the TypeScript API instead. All matrices are
 * row-major float32; every kernel validates its arguments (storage lengths, devices,
 * aliasing, sizes) and throws an Error that names the problem instead of crashing.
 * Kernels run one at a time per device; the *Async twins take the same arguments,
 * run on a libuv worker thread and keep their storages alive until they settle.
 * test/03-binding-declaration.test.ts checks that this file and the addon's exports
 * name the same members.
 */

export type NativeDevice = 'cpu' | 'cuda';
/** gelu is the exact (erf) GELU; geluTanh GPT-2's tanh approximation ("gelu_new"); silu is x sigmoid(x). */
export type ActivationName = 'relu' | 'gelu' | 'tanh' | 'geluTanh' | 'silu';
/** layer: torch.nn.LayerNorm (biased variance); rms: Hugging Face's LlamaRMSNorm. */
export type NormName = 'layer' | 'rms';
export type DistributionName = 'uniform' | 'normal';

/** A reference-counted block of float32 memory on one device. */
export interface NativeStorage {
  /** The device the memory lives on. */
  readonly device: NativeDevice;
  /** Number of float32 elements. */
  readonly length: number;
  /** True once the last reference was released (the memory is then freed). */
  readonly disposed: boolean;
  /** References held: 1 at creation, plus one per retain() and per running async kernel. */
  readonly refCount: number;
  /** Adds a reference (a view sharing this memory); throws if disposed. */
  retain(): void;
  /** Drops one reference; the memory is freed when none are left. */
  release(): void;
  /** A copy of the contents. */
  read(): Float32Array;
  /** Overwrites the contents; `data` must have exactly `length` elements. */
  write(data: Float32Array): void;
  /** Overwrites the contents with those of a storage of the same length on the same device. */
  copyFrom(source: NativeStorage): void;
}

export interface NativeStorageConstructor {
  /**
   * Storage of `length` floats (an integer in [0, 2^48]) on `device`, zero-filled unless
   * `uninitialized` (for outputs a kernel overwrites entirely). CPU memory is a V8 ArrayBuffer,
   * so V8 counts it and frees it when the storage is collected; throws when memory runs out.
   */
  new (length: number, device: NativeDevice, uninitialized?: boolean): NativeStorage;
}

export interface NativeCpuInfo {
  /** Threads the CPU kernels and OpenBLAS use now. */
  threads: number;
  /** Threads they use by default: TERA_NUM_THREADS, else the number of cores. */
  defaultThreads: number;
  /** OpenBLAS's build configuration string. */
  blas: string;
  /** The OpenBLAS kernel chosen for this CPU. */
  blasCore: string;
  /** 'avx2+fma' when the vector Tucker kernels run, else 'scalar'. */
  simd: string;
}

export interface NativeCudaInfo {
  /** Whether this binary was compiled with the CUDA backend. */
  built: boolean;
  /** Whether a device, a recent enough driver and cuBLAS were found. */
  available: boolean;
  /** Why CUDA is not available. */
  reason?: string;
  /** The CUDA architectures compiled in (when built). */
  archs?: string;
  /** The device's name (when available). */
  device?: string;
  /** Its compute capability, e.g. 8.6. */
  computeCapability?: number;
  /** Its memory in bytes. */
  totalMemory?: number;
  /** The cuBLAS library file that was loaded. */
  cublas?: string;
  /** The driver's CUDA version, as cudaDriverGetVersion reports it (e.g. 12040). */
  driverVersion?: number;
  /** The CUDA runtime version the binary was built against. */
  runtimeVersion?: number;
}

export interface NativeBackendInfo {
  /** The CPU backend (always present). */
  cpu: NativeCpuInfo;
  /** The CUDA backend: whether it is built and usable, and why not. */
  cuda: NativeCudaInfo;
  /** The Node-API version the addon was built for. */
  napiVersion: number;
}

type S = NativeStorage;

/** gemm: C = alpha op(A) op(B) + beta C, op(A) is m x k, op(B) is k x n; m, n, k at most 2^31 - 1; c shares no memory with a or b. */
export type GemmArgs = [
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
];

/** modeProduct: y = x x_mode (matrix diag(scale)); matrix is [rows, shape[mode]], y has shape[mode] replaced by rows. */
export type ModeProductArgs = [
  x: S,
  shape: readonly number[],
  mode: number,
  matrix: S,
  rows: number,
  scale: S | null,
  y: S,
];

/**
 * tuckerReconstruct: out = alpha G x_1 (A_1 diag(l_1)) ... x_N (A_N diag(l_N)), plus base when given
 * (W0 + alpha dW in the pass that writes the result); out shares no memory with an input or base.
 */
export type TuckerReconstructArgs = [
  core: S,
  modes: readonly number[],
  ranks: readonly number[],
  factors: readonly S[],
  scales: readonly (S | null)[],
  alpha: number,
  out: S,
  base?: S | null,
];

/**
 * tuckerScaleGrad: grads[n] = d<gradX, X(l)>/dl_n. overwriteGradX lets the kernel use gradX as
 * workspace; gradX must then share no memory with the core, a factor or a scale vector.
 */
export type TuckerScaleGradArgs = [
  gradX: S,
  core: S,
  modes: readonly number[],
  ranks: readonly number[],
  factors: readonly S[],
  scales: readonly (S | null)[],
  grads: readonly S[],
  overwriteGradX: boolean,
];

/** The shape of an attention call: q is [batch, heads, Tq, headDim], k and v [batch, kvHeads, Tk, headDim]. */
export type AttentionShapeArgs = [
  batch: number,
  heads: number,
  kvHeads: number,
  queryLength: number,
  keyLength: number,
  headDim: number,
];

/**
 * attentionForward: probs = softmax(scale q k^T) [batch, heads, Tq, Tk] with masked entries exactly 0
 * (key j of query i is kept when keyMask[b, j] != 0 and, if causal, j <= queryOffset + i; a row keeping
 * nothing is all zeros), out = probs v [batch, heads, Tq, headDim]. Query head h uses key/value head
 * h / (heads / kvHeads). queryOffset is 0 unless causal, and queryOffset + Tq <= Tk when causal.
 */
export type AttentionForwardArgs = [
  q: S,
  k: S,
  v: S,
  keyMask: S | null,
  probs: S,
  out: S,
  ...shape: AttentionShapeArgs,
  queryOffset: number,
  causal: boolean,
  scale: number,
];

/**
 * attentionBackward: dq, dk, dv (each null to skip, else overwritten) from the forward pass's probs and the
 * output gradient dOut; workspace (batch * heads * Tq * Tk floats) is needed for dq or dk.
 */
export type AttentionBackwardArgs = [
  q: S,
  k: S,
  v: S,
  probs: S,
  dOut: S,
  workspace: S | null,
  dq: S | null,
  dk: S | null,
  dv: S | null,
  ...shape: AttentionShapeArgs,
  scale: number,
];

/**
 * rope: y = x [batch, heads, tokens, headDim] rotated in Hugging Face's rotate-half convention over its first
 * rotaryDim (even) features, angle = position * theta^(-2i / rotaryDim) in float32; positions are [batch,
 * tokens] (positionsPerBatch) or [tokens], integers as floats; inverse rotates back (the backward pass); y may be x.
 */
export type RopeArgs = [
  y: S,
  x: S,
  positions: S,
  batch: number,
  heads: number,
  tokens: number,
  headDim: number,
  rotaryDim: number,
  theta: number,
  positionsPerBatch: boolean,
  inverse: boolean,
];

/**
 * tuckerCoreGrad: grads[n] = d/dl_n sum_r z[r] core[r] prod_m l_m[r_m], the scale gradients from a
 * core-space gradient z (shape ranks); grads share no memory with each other or an input.
 */
export type TuckerCoreGradArgs = [
  z: S,
  core: S,
  ranks: readonly number[],
  scales: readonly (S | null)[],
  grads: readonly S[],
];

/**
 * kroneckerRows: each of `rows` rows times K = (A_1 diag(s_1)) (x) ... (x) (A_Q diag(s_Q)), A_n [modes[n],
 * ranks[n]]: y = alpha x K^T ([rows, prod ranks] to [rows, prod modes]), or with contract y = alpha x K
 * (the other way); y shares no memory with an input.
 */
export type KroneckerRowsArgs = [
  x: S,
  rows: number,
  modes: readonly number[],
  ranks: readonly number[],
  factors: readonly S[],
  scales: readonly (S | null)[],
  alpha: number,
  contract: boolean,
  y: S,
];

/** kroneckerScale: y[t, r] = x[t, r] lambda[r], lambda = alpha s_1 (x) ... (x) s_Q (in double, rounded once); y may be x. */
export type KroneckerScaleArgs = [
  x: S,
  rows: number,
  ranks: readonly number[],
  scales: readonly (S | null)[],
  alpha: number,
  y: S,
];

/**
 * kroneckerScaleGrad: grads[n] = d/ds_n alpha sum_{t,r} a[t, r] b[t, r] (s_1 (x) ... (x) s_Q)[r], the
 * scale gradients of kroneckerScale; grads share no memory with each other or an input.
 */
export type KroneckerScaleGradArgs = [
  a: S,
  b: S,
  rows: number,
  ranks: readonly number[],
  scales: readonly (S | null)[],
  alpha: number,
  grads: readonly S[],
];

/** ncclAllReduce: in place on a CUDA tensor; a failure or the timeout aborts the communicator and throws. */
export type NcclAllReduceArgs = [data: S, op: 'sum' | 'max' | 'min', timeoutSeconds: number];

/** ncclBroadcast: in place on a CUDA tensor, from rank `root`. */
export type NcclBroadcastArgs = [data: S, root: number, timeoutSeconds: number];

export interface NativeBinding {
  /** The storage class every tensor lives in. */
  Storage: NativeStorageConstructor;

  /** C = alpha op(A) op(B) + beta C (see GemmArgs). */
  gemm(...args: GemmArgs): void;
  /** gemm on a worker thread. */
  gemmAsync(...args: GemmArgs): Promise<void>;
  /** y = x x_mode (matrix diag(scale)) (see ModeProductArgs). */
  modeProduct(...args: ModeProductArgs): void;
  /** modeProduct on a worker thread. */
  modeProductAsync(...args: ModeProductArgs): Promise<void>;
  /** The scaled Tucker reconstruction (see TuckerReconstructArgs). */
  tuckerReconstruct(...args: TuckerReconstructArgs): void;
  /** tuckerReconstruct on a worker thread. */
  tuckerReconstructAsync(...args: TuckerReconstructArgs): Promise<void>;
  /** The scaling vectors' gradients (see TuckerScaleGradArgs). */
  tuckerScaleGrad(...args: TuckerScaleGradArgs): void;
  /** tuckerScaleGrad on a worker thread. */
  tuckerScaleGradAsync(...args: TuckerScaleGradArgs): Promise<void>;
  /** The scaling vectors' gradients from a core-space gradient (see TuckerCoreGradArgs). */
  tuckerCoreGrad(...args: TuckerCoreGradArgs): void;
  /** tuckerCoreGrad on a worker thread. */
  tuckerCoreGradAsync(...args: TuckerCoreGradArgs): Promise<void>;
  /** Rows times a Kronecker product of scaled factors (see KroneckerRowsArgs). */
  kroneckerRows(...args: KroneckerRowsArgs): void;
  /** kroneckerRows on a worker thread. */
  kroneckerRowsAsync(...args: KroneckerRowsArgs): Promise<void>;
  /** Columns scaled by a Kronecker product of vectors (see KroneckerScaleArgs). */
  kroneckerScale(...args: KroneckerScaleArgs): void;
  /** kroneckerScale on a worker thread. */
  kroneckerScaleAsync(...args: KroneckerScaleArgs): Promise<void>;
  /** kroneckerScale's scale gradients (see KroneckerScaleGradArgs). */
  kroneckerScaleGrad(...args: KroneckerScaleGradArgs): void;
  /** kroneckerScaleGrad on a worker thread. */
  kroneckerScaleGradAsync(...args: KroneckerScaleGradArgs): Promise<void>;

  /**
   * Philox4x32-10 fill: element k uses counter (k, stream) and key seed. normal: mean a, std b >= 0;
   * uniform: [a, b) with a <= b. Parameters must be finite in float32.
   */
  randomFill(out: S, distribution: DistributionName, seed: bigint, stream: bigint, a: number, b: number): void;
  /** One raw Philox4x32-10 block (four uint32 counter words, two key words), for known-answer tests. */
  philox4x32(counter: readonly number[], key: readonly number[]): number[];

  /** out[i] = value */
  fill(out: S, value: number): void;
  /** y = a x + b y (b = 0 ignores y's previous contents, NaN included) */
  axpby(y: S, x: S, a: number, b: number): void;
  /** out = x * y elementwise; out may be x or y. */
  multiply(out: S, x: S, y: S): void;
  /** out[i,j] = x[i,j] v[j] (perColumn) or x[i,j] v[i]; out may be x, not v. */
  scaleMatrix(out: S, x: S, v: S, rows: number, cols: number, perColumn: boolean): void;
  /** x[i,j] += v[j] */
  addRowVector(x: S, v: S, rows: number, cols: number): void;
  /** overColumns: out[i] = beta out[i] + sum_j x[i,j]; else out[j] = beta out[j] + sum_i x[i,j]. */
  sumAxis(out: S, x: S, rows: number, cols: number, overColumns: boolean, beta: number): void;
  /** y = f(x) elementwise; ReLU and the others propagate NaN, as PyTorch. */
  activationForward(kind: ActivationName, y: S, x: S): void;
  /** dx = beta dx + dy f'(x); dx may be dy. */
  activationBackward(kind: ActivationName, dx: S, x: S, dy: S, beta: number): void;
  /** The sum of all elements, accumulated in double (NaN if any element is NaN). */
  sum(x: S): number;
  /** The dot product of two storages of one length, accumulated in double. */
  dot(x: S, y: S): number;
  /**
   * The mean cross-entropy of row-wise softmax(logits) [rows, classes] against class indices `labels` [rows]
   * (integers stored as floats) over the rows whose label is not ignoreIndex (NaN when all are ignored, as
   * torch); grad (optional) = scale (softmax - onehot) / counted rows, zero in ignored rows.
   */
  softmaxCrossEntropy(
    logits: S,
    labels: S,
    rows: number,
    classes: number,
    grad: S | null,
    scale: number,
    ignoreIndex?: number | null,
  ): number;
  /** out[i] = the first index of row i's maximum (NaN counts as largest), as a float; cols <= 2^24. */
  argmaxRows(out: S, x: S, rows: number, cols: number): void;
  /** One AdamW step (PyTorch's: decoupled weight decay, bias correction for the 1-based step). */
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
  /** One SGD step (PyTorch's: momentum buffer, optional Nesterov); momentum may be null without momentum. */
  sgdStep(
    param: S,
    grad: S,
    momentumBuffer: S | null,
    lr: number,
    momentum: number,
    weightDecay: number,
    nesterov: boolean,
  ): void;

  // Transformer kernels (lib/autograd/transformer.ts, lib/kernels/slices.ts).
  /** out[i, :] = weight[ids[i], :], weight [vocab, dim]; ids are integers as floats in [0, vocab) (checked). */
  embeddingForward(out: S, weight: S, ids: S, count: number, vocab: number, dim: number): void;
  /** dweight[ids[i], :] += dy[i, :], summed in token order (deterministic on both devices). */
  embeddingBackward(dweight: S, dy: S, ids: S, count: number, vocab: number, dim: number): void;
  /**
   * Normalises each row of x [rows, cols]: y = xhat weight + bias (weight, bias null for ones, zeros; rms takes
   * no bias); stats (null, or [2, rows]) receives the rows' means (0 for rms) then 1 / sqrt(var + eps). y may be x.
   */
  normForward(
    kind: NormName,
    y: S,
    stats: S | null,
    x: S,
    weight: S | null,
    bias: S | null,
    rows: number,
    cols: number,
    eps: number,
  ): void;
  /** normForward's gradients from its stats, each null to skip, else overwritten; dx may be dy. */
  normBackward(
    kind: NormName,
    dx: S | null,
    dweight: S | null,
    dbias: S | null,
    dy: S,
    x: S,
    weight: S | null,
    stats: S,
    rows: number,
    cols: number,
  ): void;
  /** y = softmax of each row of x [rows, cols] in float32; y may be x. */
  softmaxRows(y: S, x: S, rows: number, cols: number): void;
  /** dx = y (dy - rowsum(dy y)), the softmax's backward pass; dx may be dy. */
  softmaxBackward(dx: S, y: S, dy: S, rows: number, cols: number): void;
  /** Masked scaled-dot-product attention with grouped-query heads (see AttentionForwardArgs). */
  attentionForward(...args: AttentionForwardArgs): void;
  /** The gradients of attentionForward (see AttentionBackwardArgs). */
  attentionBackward(...args: AttentionBackwardArgs): void;
  /** Rotary position embedding or its inverse (see RopeArgs). */
  rope(...args: RopeArgs): void;
  /** y = x [shape] with its axes permuted: axis a of y is axis dims[a] of x (rank <= 8); y shares no memory with x. */
  permute(y: S, x: S, shape: readonly number[], dims: readonly number[]): void;
  /**
   * dst[dstOffset + r dstStride + c] = src[srcOffset + r srcStride + c] for r < rows, c < cols (strides >= cols,
   * both blocks inside their storages, dst not src): split, concat, narrow and KV-cache writes.
   */
  copyBlocks(
    dst: S,
    dstOffset: number,
    dstStride: number,
    src: S,
    srcOffset: number,
    srcStride: number,
    rows: number,
    cols: number,
  ): void;

  // Distributed training (lib/distributed): gradient buckets and the NCCL collectives.
  /**
   * bucket[offsets[i] ...] = scale * sources[i]. The bucket is a storage on the tensors'
   * device or, for CPU tensors, a Float32Array (the host buffer MPI reduces in place).
   */
  packInto(bucket: S | Float32Array, sources: readonly S[], offsets: readonly number[], scale: number): void;
  /** targets[i] = scale * bucket[offsets[i] ...]. */
  unpackFrom(bucket: S | Float32Array, targets: readonly S[], offsets: readonly number[], scale: number): void;
  /** Whether NCCL can be used here, and why not. */
  ncclStatus(): NativeNcclStatus;
  /** 128 bytes; rank 0 makes it and MPI broadcasts it. */
  ncclUniqueId(): Uint8Array;
  /** The PCI bus id of the GPU this process computes on. */
  ncclDeviceBusId(): string;
  /** Joins the communicator; blocks until every rank has called it. */
  ncclInit(uniqueId: Uint8Array, rank: number, size: number): void;
  /** Leaves the communicator. */
  ncclDestroy(): void;
  /** In place on a CUDA tensor; a failure or the timeout aborts the communicator and throws. */
  ncclAllReduce(...args: NcclAllReduceArgs): void;
  /** ncclAllReduce on a worker thread. */
  ncclAllReduceAsync(...args: NcclAllReduceArgs): Promise<void>;
  /** In place on a CUDA tensor, from rank `root`; a failure or the timeout aborts the communicator and throws. */
  ncclBroadcast(...args: NcclBroadcastArgs): void;
  /** ncclBroadcast on a worker thread. */
  ncclBroadcastAsync(...args: NcclBroadcastArgs): Promise<void>;

  /** Threads for the CPU kernels and OpenBLAS, an integer in [1, 1024]; 0 restores the default. Throws, keeping the previous count, if a thread cannot be started. */
  setNumThreads(n: number): void;
  /** The CPU thread count in use. */
  getNumThreads(): number;
  /** What this binary is built with and which backends it can use. */
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
