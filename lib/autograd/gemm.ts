/**
 * The GEMM that ops and adapter layers run, on matrix views of tensors: m, n
 * and k come from the operands' shapes (and are checked), never passed by
 * position. A tensor of any rank is viewed as [size / cols, cols], with cols
 * its last dimension unless given (the TeRA workspace is a flat buffer).
 */
import type { NativeStorage } from '../../binding';
import { native } from '../native/loader';
import { formatShape, gemmDims, sameShape } from '../shape';
import type { Tensor } from '../tensor/tensor';

/** A row-major [rows, cols] view of a tensor's storage. */
export interface Matrix {
  readonly storage: NativeStorage;
  readonly shape: readonly [rows: number, cols: number];
}

/** `t` viewed as a matrix with `cols` columns (default: its last dimension). */
export function asMatrix(t: Tensor, cols: number = t.shape[t.shape.length - 1]): Matrix {
  if (!(cols >= 1) || t.size % cols !== 0) {
    throw new Error(`internal: a tensor ${formatShape(t.shape)} cannot be viewed as a matrix of ${cols} columns`);
  }
  return { storage: t.storage, shape: [t.size / cols, cols] };
}

export interface GemmOptions {
  transA?: boolean;
  transB?: boolean;
  /** Multiplies op(A) op(B) (default 1). */
  alpha?: number;
  /** Multiplies what C held (default 0: C is overwritten). */
  beta?: number;
}

/** C = alpha op(A) op(B) + beta C, with m, n, k derived from the shapes. */
export function gemmInto(c: Matrix, a: Matrix, b: Matrix, options: GemmOptions = {}): void {
  const { transA = false, transB = false, alpha = 1, beta = 0 } = options;
  const { m, n, k } = gemmDims('internal gemm', a.shape, b.shape, transA, transB);
  if (!sameShape(c.shape, [m, n])) {
    throw new Error(`internal gemm: C is ${formatShape(c.shape)} but op(A) op(B) is [${m}, ${n}]`);
  }
  native().gemm(transA, transB, m, n, k, alpha, a.storage, b.storage, beta, c.storage);
}
