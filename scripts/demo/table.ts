/**
 * The results table, as Markdown with padded columns: readable in a terminal
 * and pasteable into docs as is.
 */

/** `align` has one 'left' | 'right' per column (default left). */
export function markdownTable(
  header: readonly string[],
  rows: readonly string[][],
  align: readonly string[] = [],
): string {
  const widths = header.map((title, c) => Math.max(3, title.length, ...rows.map((row) => row[c].length)));
  const right = (c: number) => align[c] === 'right';
  const line = (cells: readonly string[]) =>
    `| ${cells.map((cell, c) => (right(c) ? cell.padStart(widths[c]) : cell.padEnd(widths[c]))).join(' | ')} |`;
  const rule = `| ${widths.map((w, c) => (right(c) ? `${'-'.repeat(w - 1)}:` : '-'.repeat(w))).join(' | ')} |`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(2)} MiB`;
}

export function formatPercent(fraction: number): string {
  return `${(fraction * 100).toFixed(1)}%`;
}
