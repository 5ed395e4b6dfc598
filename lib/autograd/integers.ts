/**
 * Integer inputs of ops (token ids, labels, positions, 0/1 masks): checked on
 * the host before any kernel runs, then handed to the kernels as float32
 * storage (exact for integers below 2^24, the way labels have always been
 * stored). A Tensor is read back for the check; an array is checked and then
 * uploaded to the op's device.
 *
 * Ownership: integerTensor() returns the caller's Tensor as given (owned:
 * false) or a fresh one made from an array (owned: true), which the op must
 * dispose.
 */
import { describeValue, formatShape } from '../shape';
import type { Device } from '../tensor/device';
import { Tensor, tensor } from '../tensor/tensor';

/** Token ids, labels, positions or a mask: an Int32Array, an array of numbers, or a Tensor of integers. */
export type IntegerInput = Tensor | Int32Array | readonly number[];

/** Integers above this lose exactness in float32 storage. */
export const MAX_EXACT_INTEGER = 2 ** 24;

export interface IntegerRule {
  /** Accepted values are integers in [0, limit)... */
  limit: number;
  /** ...and this value too (an ignore index), when given. */
  also?: number;
  /** Names an entry in messages: "<what> <value> at <unit> <i> is not <kind> in [0, <limit>)". */
  what: string;
  unit: string;
  kind: string;
  /** What the entries count, for "<n> <name> for <count> <countOf>" (e.g. 'rows'). */
  countOf: string;
}

export interface CheckedIntegers {
  tensor: Tensor;
  /** True when the tensor was made here and the caller must dispose it. */
  owned: boolean;
}

function checkValues(op: string, values: ArrayLike<number>, rule: IntegerRule): void {
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    if (value === rule.also) continue;
    if (!(typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < rule.limit)) {
      throw new Error(
        `${op}: ${rule.what} ${describeValue(value)} at ${rule.unit} ${i} is not ${rule.kind} in [0, ${rule.limit})`,
      );
    }
  }
}

/**
 * `input` checked (count entries, each an integer in [0, rule.limit) or rule.also) and as a float32
 * tensor on `device`. Throws, naming `op` and `name`, before anything is allocated on failure.
 */
export function integerTensor(
  op: string,
  name: string,
  input: Tensor | ArrayLike<number>,
  count: number,
  device: Device,
  rule: IntegerRule,
): CheckedIntegers {
  if (rule.limit > MAX_EXACT_INTEGER || (rule.also !== undefined && Math.abs(rule.also) > MAX_EXACT_INTEGER)) {
    throw new Error(`${op}: ${rule.what}s up to ${rule.limit} cannot be stored exactly in float32 (limit 2^24)`);
  }
  if (input instanceof Tensor) {
    if (input.disposed) throw new Error(`${op}: ${name} ${formatShape(input.shape)} has been disposed`);
    if (input.size !== count) {
      throw new Error(`${op}: ${input.size} ${name} ${formatShape(input.shape)} for ${count} ${rule.countOf}`);
    }
    if (input.device !== device)
      throw new Error(`${op}: ${name} is on ${input.device} but the inputs are on ${device}`);
    checkValues(op, input.toFloat32Array(), rule);
    return { tensor: input, owned: false };
  }
  const isArrayLike =
    Array.isArray(input) ||
    (ArrayBuffer.isView(input) &&
      !(input instanceof DataView) &&
      typeof (input as ArrayLike<number>).length === 'number');
  if (!isArrayLike) {
    throw new Error(
      `${op}: ${name} must be a Tensor, an Int32Array or an array of integers, got ${describeValue(input)}`,
    );
  }
  if (input.length !== count) throw new Error(`${op}: ${input.length} ${name} for ${count} ${rule.countOf}`);
  checkValues(op, input, rule);
  return { tensor: tensor(Float32Array.from(input), [count], { device }), owned: true };
}
