/**
 * Slices along one axis, all one native block copy (copyBlocks): narrow()
 * reads a slice out (the last position's logits), writeSlice() writes one in
 * place (a key/value block into a preallocated KV cache at a time offset), and
 * copyAlongAxis() is the copy that autograd's split and concat run.
 *
 * Ownership: narrow() returns a fresh tensor (or the caller's `out`);
 * writeSlice() writes into the caller's tensor and returns it.
 */
import { native } from '../native/loader';
import { describeValue, formatShape, sameShape } from '../shape';
import { Tensor, uninitialized } from '../tensor/tensor';

/** `axis` as a non-negative index into a shape of rank `rank` (negative counts from the end). */
export function normalizeAxis(op: string, axis: number, rank: number): number {
  if (!Number.isInteger(axis) || axis < -rank || axis >= rank) {
    throw new Error(`${op}: axis ${describeValue(axis)} is out of range for rank ${rank} (use -${rank}..${rank - 1})`);
  }
  return axis < 0 ? axis + rank : axis;
}

/**
 * Copies `length` entries along `axis`, from source[start = sourceStart] to target[start = targetStart]; the
 * two tensors have one rank and the same dimensions except along `axis`. Checked by the callers.
 */
export function copyAlongAxis(
  target: Tensor,
  targetStart: number,
  source: Tensor,
  sourceStart: number,
  axis: number,
  length: number,
): void {
  const outer = source.shape.slice(0, axis).reduce((a, b) => a * b, 1);
  const inner = source.shape.slice(axis + 1).reduce((a, b) => a * b, 1);
  native().copyBlocks(
    target.storage,
    targetStart * inner,
    target.shape[axis] * inner,
    source.storage,
    sourceStart * inner,
    source.shape[axis] * inner,
    outer,
    length * inner,
  );
}

function live(t: unknown, what: string): Tensor {
  if (!(t instanceof Tensor)) throw new Error(`${what} must be a Tensor, got ${describeValue(t)}`);
  if (t.disposed) throw new Error(`${what} ${formatShape(t.shape)} has been disposed`);
  return t;
}

function checkRange(op: string, start: number, length: number, size: number, axis: number): void {
  if (!Number.isInteger(start) || !Number.isInteger(length) || start < 0 || length < 1 || start + length > size) {
    throw new Error(
      `${op}: entries ${describeValue(start)}..${describeValue(start)}+${describeValue(length)} do not fit in axis ${axis} of size ${size}`,
    );
  }
}

/** x's entries start..start+length-1 along `axis` (torch.narrow), as a new tensor or into options.out. */
export function narrow(x: Tensor, axis: number, start: number, length: number, options: { out?: Tensor } = {}): Tensor {
  live(x, 'narrow: x');
  const a = normalizeAxis('narrow', axis, x.rank);
  checkRange('narrow', start, length, x.shape[a], a);
  const shape = [...x.shape];
  shape[a] = length;
  let out = options.out;
  if (out !== undefined) {
    live(out, 'narrow: out');
    if (!sameShape(out.shape, shape))
      throw new Error(`narrow: out has shape ${formatShape(out.shape)} but the slice is ${formatShape(shape)}`);
    if (out.device !== x.device) throw new Error(`narrow: out is on ${out.device} but x is on ${x.device}`);
    if (out.storage === x.storage) throw new Error('narrow: out must not share memory with x');
  } else {
    out = uninitialized(shape, { device: x.device });
  }
  copyAlongAxis(out, 0, x, start, a, length);
  return out;
}

/**
 * Writes `source` into `target` at entries start..start+source.shape[axis]-1 along `axis`, in place (a
 * [batch, kvHeads, t, headDim] block into a KV cache [batch, kvHeads, capacity, headDim] at a time offset:
 * axis 2). Every other dimension must match. Returns target.
 */
export function writeSlice(target: Tensor, source: Tensor, axis: number, start: number): Tensor {
  live(target, 'writeSlice: target');
  live(source, 'writeSlice: source');
  const a = normalizeAxis('writeSlice', axis, target.rank);
  const expected = [...target.shape];
  expected[a] = source.shape[a];
  if (source.rank !== target.rank || !sameShape(source.shape, expected)) {
    throw new Error(
      `writeSlice: source ${formatShape(source.shape)} must match target ${formatShape(target.shape)} except along axis ${a}`,
    );
  }
  checkRange('writeSlice', start, source.shape[a], target.shape[a], a);
  if (source.device !== target.device) {
    throw new Error(`writeSlice: source is on ${source.device} but target is on ${target.device}`);
  }
  if (source.storage === target.storage) throw new Error('writeSlice: source must not share memory with target');
  copyAlongAxis(target, start, source, 0, a, source.shape[a]);
  return target;
}
