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
