/**
 * A small line chart as standalone SVG: no dependencies, opens in any browser
 * and renders on GitHub.
 */

export interface Series {
  label: string;
  /** [x, y] pairs in increasing x. */
  points: [number, number][];
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
}

const WIDTH = 720;
const HEIGHT = 420;
const MARGIN = { top: 40, right: 150, bottom: 50, left: 60 };
const COLOURS = ['#d62728', '#1f77b4', '#2ca02c', '#7f7f7f', '#9467bd', '#ff7f0e'];

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Tick values covering [0, max] at a 1, 2 or 5 times power-of-ten step. */
function linearTicks(max: number, target = 5): number[] {
  const rough = max / target;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough) ?? 10 * power;
  return Array.from({ length: Math.floor(max / step + 1e-9) + 1 }, (_, i) => Number((i * step).toPrecision(12)));
}

/** 1, 2 and 5 times the powers of ten within [min, max]. */
function logTicks(min: number, max: number): number[] {
  const ticks: number[] = [];
  for (let power = Math.floor(Math.log10(min)); 10 ** power <= max; power++) {
    for (const m of [1, 2, 5]) {
      const tick = Number((m * 10 ** power).toPrecision(12));
      if (tick >= min && tick <= max) ticks.push(tick);
    }
  }
  return ticks;
}

/** Averages consecutive groups of `window` values; x is the group's end, in units of `perUnit` values. */
export function smooth(values: readonly number[], window: number, perUnit: number): [number, number][] {
  const points: [number, number][] = [];
  for (let start = 0; start < values.length; start += window) {
    const group = values.slice(start, start + window);
    points.push([(start + group.length) / perUnit, group.reduce((a, b) => a + b, 0) / group.length]);
  }
  return points;
}

/** Draws the series with a linear x axis from 0 and a logarithmic y axis (losses span decades). */
export function lineChartSvg(series: readonly Series[], options: ChartOptions): string {
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) throw new Error('lineChartSvg: no points to draw');
  if (all.some(([, y]) => !(y > 0) || !Number.isFinite(y))) {
    throw new Error('lineChartSvg: values must be positive and finite for a logarithmic axis');
  }
  const xMax = Math.max(...all.map(([x]) => x));
  const yMin = Math.min(...all.map(([, y]) => y)) / 1.1;
  const yMax = Math.max(...all.map(([, y]) => y)) * 1.1;
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const px = (x: number) => MARGIN.left + (x / xMax) * plotWidth;
  const py = (y: number) => MARGIN.top + plotHeight - (Math.log(y / yMin) / Math.log(yMax / yMin)) * plotHeight;
  const f = (v: number) => v.toFixed(1);

  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${WIDTH / 2}" y="24" text-anchor="middle" font-size="15">${escapeXml(options.title)}</text>`,
  ];
  for (const y of logTicks(yMin, yMax)) {
    parts.push(
      `<line x1="${MARGIN.left}" x2="${MARGIN.left + plotWidth}" y1="${f(py(y))}" y2="${f(py(y))}" stroke="#e5e5e5"/>`,
      `<text x="${MARGIN.left - 6}" y="${f(py(y) + 4)}" text-anchor="end">${y}</text>`,
    );
  }
  for (const x of linearTicks(xMax)) {
    parts.push(`<text x="${f(px(x))}" y="${MARGIN.top + plotHeight + 18}" text-anchor="middle">${x}</text>`);
  }
  parts.push(
    `<rect x="${MARGIN.left}" y="${MARGIN.top}" width="${plotWidth}" height="${plotHeight}" fill="none" stroke="#333"/>`,
    `<text x="${MARGIN.left + plotWidth / 2}" y="${HEIGHT - 12}" text-anchor="middle">${escapeXml(options.xLabel)}</text>`,
    `<text transform="translate(16 ${MARGIN.top + plotHeight / 2}) rotate(-90)" text-anchor="middle">${escapeXml(options.yLabel)}</text>`,
  );
  series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const path = s.points.map(([x, y]) => `${f(px(x))},${f(py(y))}`).join(' ');
    const legendY = MARGIN.top + 10 + i * 20;
    const legendX = MARGIN.left + plotWidth + 14;
    parts.push(
      `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${path}"/>`,
      `<line x1="${legendX}" x2="${legendX + 20}" y1="${legendY}" y2="${legendY}" stroke="${colour}" stroke-width="2"/>`,
      `<text x="${legendX + 26}" y="${legendY + 4}">${escapeXml(s.label)}</text>`,
    );
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
