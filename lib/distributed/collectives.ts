/**
 * Collectives on tensors: allReduce and broadcast (in place) and barrier, each
 * with an *Async twin from the same body. Several tensors travel as one flat
 * bucket per call, one collective instead of one per tensor: packed by the
 * native packInto, reduced in place (CPU tensors: a Float32Array, by MPI; CUDA
 * tensors: a device tensor, by NCCL on the GPU), and unpacked by unpackFrom.
 * The bucket of each device is kept while its size stays, so a training loop
 * allocates it once.
 *
 * Before each reduction the ranks check that they all passed the same layout
 * (device and tensor sizes) with one 16-byte allreduce: mismatched sizes would
 * corrupt the reduction or hang, and a wrong tensor list is a common bug. Its
 * latency is small next to any training step's.
 */
import { native } from '../native/loader';
import type { Device } from '../tensor/device';
import { Tensor, tensor, zeros } from '../tensor/tensor';
import { type Group, runAsync, runSync } from './group';
import { type Bucket, type Steps, allgatherRecords, digest } from './requests';

export type AllReduceOp = 'sum' | 'mean';

export interface AllReduceOptions {
  /** 'sum' (default) or 'mean' over the ranks. */
  op?: AllReduceOp;
}

/** One tensor or a non-empty list of live tensors on one device. */
export function checkTensors(value: Tensor | readonly Tensor[], what: string): Tensor[] {
  const list = value instanceof Tensor ? [value] : Array.isArray(value) ? [...value] : null;
  if (list === null || list.length === 0) throw new Error(`${what}: pass a tensor or a non-empty array of tensors`);
  list.forEach((t, i) => {
    if (!(t instanceof Tensor)) throw new Error(`${what}: item ${i} is not a Tensor`);
    if (t.disposed) throw new Error(`${what}: tensor ${i} has been disposed`);
    if (t.device !== list[0].device) {
      throw new Error(`${what}: tensor ${i} is on ${t.device} but tensor 0 on ${list[0].device}; use one device`);
    }
  });
  return list;
}

/** CUDA tensors of a multi-rank job need the NCCL engine: they are never copied through the host. */
export function checkEngine(g: Group, what: string, device: Device): void {
  if (device === 'cuda' && g.info.worldSize > 1 && g.info.engine !== 'nccl') {
    throw new Error(
      `${what}: the tensors are on cuda but init() chose engine 'mpi', which moves CPU tensors; ` +
        `init({ engine: 'nccl' }) reduces GPU tensors on the device`,
    );
  }
}

/** Consecutive offsets of segments of these sizes, and their total. */
export function layoutOf(sizes: readonly number[]): { offsets: number[]; total: number } {
  const offsets: number[] = [];
  let total = 0;
  for (const size of sizes) {
    offsets.push(total);
    total += size;
  }
  return { offsets, total };
}

/** The device's bucket of exactly `length` floats (reused while the length stays). */
export function bucketFor(g: Group, device: Device, length: number): Bucket {
  const cached = g.buckets.get(device);
  const cachedLength = cached instanceof Tensor ? cached.size : cached?.length;
  if (cached !== undefined && cachedLength === length) return cached;
  if (cached instanceof Tensor) cached.dispose();
  const bucket = device === 'cpu' ? new Float32Array(length) : zeros([length], { device });
  g.buckets.set(device, bucket);
  return bucket;
}

const nativeBucket = (bucket: Bucket) => (bucket instanceof Tensor ? bucket.storage : bucket);

/** bucket[offsets[i] ...] = scale * tensors[i]. */
export function pack(bucket: Bucket, tensors: readonly Tensor[], offsets: readonly number[], scale: number): void {
  if (tensors.length === 0) return;
  native().packInto(
    nativeBucket(bucket),
    tensors.map((t) => t.storage),
    offsets,
    scale,
  );
}

/** tensors[i] = scale * bucket[offsets[i] ...]. */
export function unpack(bucket: Bucket, tensors: readonly Tensor[], offsets: readonly number[], scale: number): void {
  if (tensors.length === 0) return;
  native().unpackFrom(
    nativeBucket(bucket),
    tensors.map((t) => t.storage),
    offsets,
    scale,
  );
}

export function fillBucket(bucket: Bucket, value: number): void {
  if (bucket instanceof Tensor) native().fill(bucket.storage, value);
  else bucket.fill(value);
}

/** Host values into the bucket at `offset` (one small upload for a device bucket). */
export function writeBucket(bucket: Bucket, offset: number, values: Float32Array): void {
  if (!(bucket instanceof Tensor)) {
    bucket.set(values, offset);
    return;
  }
  const staged = tensor(values, [values.length], { device: bucket.device });
  try {
    pack(bucket, [staged], [offset], 1);
  } finally {
    staged.dispose();
  }
}

/** `length` values of the bucket from `offset`, on the host. */
export function readBucket(bucket: Bucket, offset: number, length: number): Float32Array {
  if (!(bucket instanceof Tensor)) return bucket.slice(offset, offset + length);
  const staged = zeros([length], { device: bucket.device });
  try {
    unpack(bucket, [staged], [offset], 1);
    return staged.toFloat32Array();
  } finally {
    staged.dispose();
  }
}

/**
 * Checks that every rank passed tensors of the same sizes on the same device:
 * one 16-byte allreduce (the max of a 48-bit layout hash and of its negation
 * agree only when every rank's hash is the same), then, only on a mismatch, an
 * allgather of what each rank passed so every rank throws the same message.
 */
export function* checkLayout(g: Group, what: string, device: Device, sizes: readonly number[]): Steps<void> {
  const hash = digest(`${what} ${device} ${sizes.join(',')}`);
  const h = hash.subarray(0, 6).reduce((value, byte) => value * 256 + byte, 0);
  const probe = new Float64Array([h, -h]);
  yield { kind: 'allreduce', data: probe, op: 'max' };
  if (probe[0] === -probe[1]) return;
  const record = new Float64Array([sizes.length, sizes.reduce((a, b) => a + b, 0)]);
  const records = yield* allgatherRecords(g.info.worldSize, new Uint8Array(record.buffer));
  const described = records.map((r, rank) => {
    const [count, values] = new Float64Array(r.slice().buffer);
    return `rank ${rank}: ${count} tensor${count === 1 ? '' : 's'}, ${values} values`;
  });
  throw new Error(
    `${what}: the ranks passed different tensors (${described.join('; ')}; or the same counts with other ` +
      `sizes or devices); every rank must pass the same list, in the same order`,
  );
}

/** Sums the bucket over the ranks, in place. */
export function* reduceBucket(bucket: Bucket): Steps<void> {
  yield bucket instanceof Tensor
    ? { kind: 'ncclAllReduce', data: bucket }
    : { kind: 'allreduce', data: bucket, op: 'sum' };
}

function* allReduceSteps(g: Group, tensors: Tensor | readonly Tensor[], options: AllReduceOptions): Steps<void> {
  const list = checkTensors(tensors, 'allReduce');
  if (options === null || typeof options !== 'object') throw new Error('allReduce: options must be an object');
  const op = options.op ?? 'sum';
  if (op !== 'sum' && op !== 'mean') throw new Error(`allReduce: op must be 'sum' or 'mean', got '${String(op)}'`);
  const device = list[0].device;
  checkEngine(g, 'allReduce', device);
  if (g.info.worldSize === 1) return; // the sum and the mean over one rank
  const sizes = list.map((t) => t.size);
  yield* checkLayout(g, 'allReduce', device, sizes);
  const { offsets, total } = layoutOf(sizes);
  const bucket = bucketFor(g, device, total);
  pack(bucket, list, offsets, 1);
  yield* reduceBucket(bucket);
  unpack(bucket, list, offsets, op === 'mean' ? 1 / g.info.worldSize : 1);
}

/** Replaces each tensor by its sum (or mean) over the ranks; every rank passes the same list. */
export function allReduce(tensors: Tensor | readonly Tensor[], options: AllReduceOptions = {}): void {
  runSync('allReduce', (g) => allReduceSteps(g, tensors, options));
}

/** allReduce on a worker thread; the tensors hold the result when the promise resolves (do not use them before). */
export function allReduceAsync(tensors: Tensor | readonly Tensor[], options: AllReduceOptions = {}): Promise<void> {
  return runAsync('allReduce', (g) => allReduceSteps(g, tensors, options));
}

function* broadcastSteps(g: Group, tensors: Tensor | readonly Tensor[], root: number): Steps<void> {
  const list = checkTensors(tensors, 'broadcast');
  const { rank, worldSize } = g.info;
  if (!Number.isInteger(root) || root < 0 || root >= worldSize) {
    throw new Error(`broadcast: root must be a rank in [0, ${worldSize}), got ${String(root)}`);
  }
  const device = list[0].device;
  checkEngine(g, 'broadcast', device);
  if (worldSize === 1) return;
  const sizes = list.map((t) => t.size);
  yield* checkLayout(g, 'broadcast', device, sizes);
  const { offsets, total } = layoutOf(sizes);
  const bucket = bucketFor(g, device, total);
  if (rank === root) pack(bucket, list, offsets, 1);
  yield bucket instanceof Tensor
    ? { kind: 'ncclBroadcast', data: bucket, root }
    : { kind: 'broadcast', data: new Uint8Array(bucket.buffer, bucket.byteOffset, bucket.byteLength), root };
  if (rank !== root) unpack(bucket, list, offsets, 1);
}

/** Copies root's tensors into every rank's (same shapes on every rank). */
export function broadcast(tensors: Tensor | readonly Tensor[], root = 0): void {
  runSync('broadcast', (g) => broadcastSteps(g, tensors, root));
}

export function broadcastAsync(tensors: Tensor | readonly Tensor[], root = 0): Promise<void> {
  return runAsync('broadcast', (g) => broadcastSteps(g, tensors, root));
}

function* barrierSteps(): Steps<void> {
  yield { kind: 'barrier' };
}

/** Returns when every rank has reached it. */
export function barrier(): void {
  runSync('barrier', barrierSteps);
}

export function barrierAsync(): Promise<void> {
  return runAsync('barrier', barrierSteps);
}
