/**
 * Horizontal bar charts as plain SVG: labelled rows, a linear or log axis, an optional
 * reference line. Written here (about a hundred lines) rather than pulling in a
 * plotting package for two kinds of chart.
 */

export interface BarRow {
  label: string;
  value: number;
  color: string;
  /** Extra space above this row: separates groups. */
  groupStart?: boolean;
}

export interface BarChart {
  title: string;
  axisLabel: string;
  rows: BarRow[];
  scale: 'linear' | 'log';
  reference?: { value: number; label: string };
  /** Legend entries: label and color. */
  legend?: [string, string][];
}

const ROW = 18;
const GROUP_GAP = 10;
const LABEL_WIDTH = 380;
const PLOT_WIDTH = 520;
const VALUE_WIDTH = 80;

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function formatValue(value: number): string {
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toPrecision(2);
}

/** Axis ticks: powers of ten for log, about five round steps for linear. */
function ticks(scale: 'linear' | 'log', low: number, high: number): number[] {
  if (scale === 'log') {
    const out: number[] = [];
    for (let p = Math.floor(Math.log10(low)); p <= Math.ceil(Math.log10(high)); p++) out.push(10 ** p);
    return out;
  }
  const step = 10 ** Math.floor(Math.log10(high / 5));
  const nice = [1, 2, 5, 10].map((m) => m * step).find((s) => high / s <= 6) ?? step * 10;
  const out: number[] = [];
  for (let i = 0; i <= Math.ceil(high / nice); i++) out.push(i * nice);
  return out;
}

export function renderBarChart(chart: BarChart): string {
  const values = chart.rows.map((r) => r.value).filter((v) => v > 0);
  if (chart.reference) values.push(chart.reference.value);
  const tickList = ticks(chart.scale, Math.min(...values), Math.max(...values));
  const low = chart.scale === 'log' ? tickList[0] : 0;
  const high = tickList[tickList.length - 1];
  const x = (v: number) =>
    chart.scale === 'log'
      ? (PLOT_WIDTH * Math.log10(Math.max(v, low) / low)) / Math.log10(high / low)
      : (PLOT_WIDTH * v) / high;

  const top = 40 + (chart.legend ? 20 : 0);
  const parts: string[] = [];
  let y = top;
  for (const row of chart.rows) {
    if (row.groupStart && y > top) y += GROUP_GAP;
    parts.push(
      `<text x="${LABEL_WIDTH - 6}" y="${y + 13}" text-anchor="end">${escape(row.label)}</text>`,
      `<rect x="${LABEL_WIDTH}" y="${y + 3}" width="${Math.max(x(row.value), 1).toFixed(1)}" height="${ROW - 6}" fill="${row.color}"/>`,
      `<text x="${LABEL_WIDTH + x(row.value) + 4}" y="${y + 13}">${formatValue(row.value)}</text>`,
    );
    y += ROW;
  }
  const bottom = y + 4;
  for (const t of tickList) {
    const tx = LABEL_WIDTH + x(t);
    parts.push(
      `<line x1="${tx}" y1="${top}" x2="${tx}" y2="${bottom}" stroke="#ddd"/>`,
      `<text x="${tx}" y="${bottom + 14}" text-anchor="middle" fill="#555">${formatValue(t)}</text>`,
    );
  }
  if (chart.reference) {
    const rx = LABEL_WIDTH + x(chart.reference.value);
    parts.push(
      `<line x1="${rx}" y1="${top - 4}" x2="${rx}" y2="${bottom}" stroke="#c00" stroke-dasharray="4 3"/>`,
      `<text x="${rx}" y="${top - 8}" text-anchor="end" fill="#c00">${escape(chart.reference.label)}</text>`,
    );
  }
  (chart.legend ?? []).forEach(([label, color], i) => {
    const lx = LABEL_WIDTH + i * 130;
    parts.push(
      `<rect x="${lx}" y="26" width="10" height="10" fill="${color}"/>`,
      `<text x="${lx + 14}" y="35">${escape(label)}</text>`,
    );
  });
  const width = LABEL_WIDTH + PLOT_WIDTH + VALUE_WIDTH;
  const height = bottom + 36;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="10" y="18" font-size="14" font-weight="bold">${escape(chart.title)}</text>`,
    ...parts,
    `<text x="${LABEL_WIDTH + PLOT_WIDTH / 2}" y="${height - 6}" text-anchor="middle">${escape(chart.axisLabel)}</text>`,
    '</svg>',
    '',
  ].join('\n');
}
