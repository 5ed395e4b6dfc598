/**
 * The communication a distributed operation asks for. Every operation is written
 * once, as a generator that yields Requests and resumes when each is done;
 * group.ts performs them either blocking the calling thread (the synchronous
 * API) or on a worker thread (the *Async API). Also the small helpers built on
 * them: fixed-size records for allgather, variable-length broadcasts, digests.
 */
import { createHash } from 'node:crypto';

import type { Tensor } from '../tensor/tensor';

/**
 * One call's flat buffer: for CPU tensors a Float32Array, which MPI reduces in
 * place; for CUDA tensors a device tensor, which NCCL reduces on the GPU.
 */
export type Bucket = Float32Array | Tensor;

export type Request =
  | { kind: 'allreduce'; data: Float32Array | Float64Array; op: 'sum' | 'max' | 'min' }
  | { kind: 'broadcast'; data: Uint8Array; root: number }
  | { kind: 'allgather'; send: Uint8Array; recv: Uint8Array }
  | { kind: 'barrier' }
  | { kind: 'ncclAllReduce'; data: Tensor }
  | { kind: 'ncclBroadcast'; data: Tensor; root: number }
  | { kind: 'ncclInit'; id: Uint8Array; rank: number; size: number };

/** An operation's body: yields what it needs communicated, returns its result. */
export type Steps<T> = Generator<Request, T, void>;

/** Bytes this rank hands to the collective (what the statistics count). */
export function payloadBytes(request: Request): number {
  switch (request.kind) {
    case 'allreduce':
    case 'broadcast':
      return request.data.byteLength;
    case 'allgather':
      return request.send.byteLength;
    case 'ncclAllReduce':
    case 'ncclBroadcast':
      return request.data.size * 4;
    default:
      return 0;
  }
}

/** SHA-256 of bytes (or of a string's UTF-8), 32 bytes. */
export function digest(data: Uint8Array | string): Uint8Array {
  return new Uint8Array(createHash('sha256').update(data).digest());
}

export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}

/** `text` in UTF-8 in a zero-padded record of `size` bytes, cut at a character boundary if longer. */
export function textRecord(text: string, size: number): Uint8Array {
  const record = new Uint8Array(size);
  new TextEncoder().encodeInto(text, record); // writes whole characters only
  return record;
}

export function recordText(record: Uint8Array): string {
  const end = record.indexOf(0);
  return Buffer.from(record.subarray(0, end < 0 ? record.length : end)).toString('utf8');
}

/** Every rank's `record` (all of one size), in rank order. */
export function* allgatherRecords(worldSize: number, record: Uint8Array): Steps<Uint8Array[]> {
  const recv = new Uint8Array(record.length * worldSize);
  yield { kind: 'allgather', send: record, recv };
  return Array.from({ length: worldSize }, (_, r) => recv.subarray(r * record.length, (r + 1) * record.length));
}

/** Root's bytes on every rank (others pass null): the length goes first, then the bytes. */
export function* broadcastBytes(data: Uint8Array | null, root: number, isRoot: boolean): Steps<Uint8Array> {
  const length = new Float64Array([isRoot ? (data?.length ?? 0) : 0]);
  yield { kind: 'broadcast', data: new Uint8Array(length.buffer), root };
  const bytes = isRoot && data !== null ? data : new Uint8Array(length[0]);
  if (bytes.length > 0) yield { kind: 'broadcast', data: bytes, root };
  return bytes;
}
