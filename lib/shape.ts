/**
 * Shapes and values in checks and error messages, written once: shape
 * equality, the "[2, 3]" form of a shape, and a short description of any
 * value a caller passed ("Float64Array", "Array(3)", "null", "\"four\"").
 */

/** "[2, 3]". */
export function formatShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/** Same rank and same dimensions. */
export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/** What a wrong argument was, for "must be ..., got <this>". */
export function describeValue(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'bigint') return `${value}n`;
  if (typeof value !== 'object' && typeof value !== 'function') return String(value);
  if (Array.isArray(value)) return `Array(${value.length})`;
  if (typeof value === 'function') return 'a function';
  return (value as object).constructor?.name ?? 'Object';
}

/**
 * m, n, k of C [m, n] = op(A) op(B) for matrices A and B (op transposes when
 * asked); throws, naming `op`, when the inner dimensions differ.
 */
export function gemmDims(
  op: string,
  a: readonly number[],
  b: readonly number[],
  transA: boolean,
  transB: boolean,
): { m: number; n: number; k: number } {
  const [m, k] = transA ? [a[1], a[0]] : [a[0], a[1]];
  const [kb, n] = transB ? [b[1], b[0]] : [b[0], b[1]];
  if (k !== kb) throw new Error(`${op}: inner dimensions differ: op(a) is [${m}, ${k}] and op(b) is [${kb}, ${n}]`);
  return { m, n, k };
}
