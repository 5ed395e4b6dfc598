/**
 * A small line chart as standalone SVG: no dependencies, opens in any browser
 * and renders on GitHub. Both demos draw their loss curves and their sweep
 * charts (quality against trainable parameters) with it.
 */

export interface Series {
  label: string;
  /** [x, y] pairs in increasing x. */
  points: [number, number][];
  /** A short note drawn next to each point's marker (with `markers`), e.g. its setting. */
  pointLabels?: string[];
}

export type AxisScale = 'linear' | 'log';

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  /** Default 'linear', starting at 0. */
  xScale?: AxisScale;
  /** Default 'log' (losses span decades); 'linear' spans the values' range. */
  yScale?: AxisScale;
  /** Draw a dot at every point (for series with few points). */
  markers?: boolean;
}

const WIDTH = 760;
const HEIGHT = 440;
const MARGIN = { top: 40, right: 210, bottom: 50, left: 60 };
const COLOURS = ['#d62728', '#ff7f0e', '#1f77b4', '#2ca02c', '#7f7f7f', '#9467bd', '#8c564b'];

function escapeXml(text: string): string {
  return text.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Tick values within [min, max] at a 1, 2 or 5 times power-of-ten step. */
function linearTicks(min: number, max: number, target = 5): number[] {
  const rough = (max - min) / target;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough) ?? 10 * power;
  const ticks: number[] = [];
  for (let i = Math.ceil(min / step - 1e-9); i * step <= max + 1e-9 * step; i++) {
    ticks.push(Number((i * step).toPrecision(12)));
  }
  return ticks;
}

/** 1, 2 and 5 times the powers of ten within [min, max]; the powers alone over more than 3 decades (labels would collide). */
function logTicks(min: number, max: number): number[] {
  const ticks: number[] = [];
  const multiples = Math.log10(max / min) > 3 ? [1] : [1, 2, 5];
  for (let power = Math.floor(Math.log10(min)); 10 ** power <= max; power++) {
    for (const m of multiples) {
      const tick = Number((m * 10 ** power).toPrecision(12));
      if (tick >= min && tick <= max) ticks.push(tick);
    }
  }
  return ticks;
}

/** The series' point labels, those of points at the same place joined on the first ("m 32, m 64"), the rest emptied. */
function mergedPointLabels(s: Series): string[] {
  const notes = s.points.map((_, p) => s.pointLabels?.[p] ?? '');
  s.points.forEach(([x, y], p) => {
    const first = s.points.findIndex(([fx, fy]) => fx === x && fy === y);
    if (first < p && notes[p]) {
      notes[first] = notes[first] ? `${notes[first]}, ${notes[p]}` : notes[p];
      notes[p] = '';
    }
  });
  return notes;
}

interface Axis {
  /** The value's place along the axis, 0 at its start and 1 at its end. */
  fraction(value: number): number;
  ticks: number[];
}

/** The axis over `values`: log spans them with a margin; linear starts at 0 (`fromZero`) or spans them. */
function makeAxis(values: readonly number[], scale: AxisScale, fromZero: boolean, what: string): Axis {
  if (values.some((v) => !Number.isFinite(v) || (scale === 'log' && !(v > 0)))) {
    throw new Error(`lineChartSvg: ${what} values must be finite${scale === 'log' ? ' and positive (log axis)' : ''}`);
  }
  const low = Math.min(...values);
  const high = Math.max(...values);
  if (scale === 'log') {
    const min = low / 1.15;
    const max = high * 1.15;
    return { fraction: (v) => Math.log(v / min) / Math.log(max / min), ticks: logTicks(min, max) };
  }
  const pad = (high - low) * 0.05 || Math.abs(high) * 0.05 || 1;
  const min = fromZero ? Math.min(0, low) : low - pad;
  const max = high + (fromZero ? 0 : pad) || 1;
  return { fraction: (v) => (v - min) / (max - min), ticks: linearTicks(min, max) };
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

/** Draws the series, with a legend on the right. */
export function lineChartSvg(series: readonly Series[], options: ChartOptions): string {
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) throw new Error('lineChartSvg: no points to draw');
  const xScale = options.xScale ?? 'linear';
  const xAxis = makeAxis(
    all.map(([x]) => x),
    xScale,
    true,
    'x',
  );
  const yAxis = makeAxis(
    all.map(([, y]) => y),
    options.yScale ?? 'log',
    false,
    'y',
  );
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const px = (x: number) => MARGIN.left + xAxis.fraction(x) * plotWidth;
  const py = (y: number) => MARGIN.top + plotHeight - yAxis.fraction(y) * plotHeight;
  const f = (v: number) => v.toFixed(1);
  const tickText = (v: number) => (Math.abs(v) >= 10000 ? v.toLocaleString('en-US') : String(v));

  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${(MARGIN.left + WIDTH - MARGIN.right) / 2}" y="24" text-anchor="middle" font-size="15">${escapeXml(options.title)}</text>`,
  ];
  for (const y of yAxis.ticks) {
    parts.push(
      `<line x1="${MARGIN.left}" x2="${MARGIN.left + plotWidth}" y1="${f(py(y))}" y2="${f(py(y))}" stroke="#e5e5e5"/>`,
      `<text x="${MARGIN.left - 6}" y="${f(py(y) + 4)}" text-anchor="end">${tickText(y)}</text>`,
    );
  }
  for (const x of xAxis.ticks) {
    if (xScale === 'log') {
      parts.push(
        `<line x1="${f(px(x))}" x2="${f(px(x))}" y1="${MARGIN.top}" y2="${MARGIN.top + plotHeight}" stroke="#e5e5e5"/>`,
      );
    }
    parts.push(`<text x="${f(px(x))}" y="${MARGIN.top + plotHeight + 18}" text-anchor="middle">${tickText(x)}</text>`);
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
    parts.push(`<polyline fill="none" stroke="${colour}" stroke-width="2" points="${path}"/>`);
    if (options.markers) {
      const notes = mergedPointLabels(s);
      s.points.forEach(([x, y], p) => {
        parts.push(`<circle cx="${f(px(x))}" cy="${f(py(y))}" r="3.5" fill="${colour}"/>`);
        const note = notes[p];
        if (note) {
          parts.push(
            `<text x="${f(px(x) + 5)}" y="${f(py(y) - 6)}" font-size="10" fill="${colour}">${escapeXml(note)}</text>`,
          );
        }
      });
    }
    parts.push(
      `<line x1="${legendX}" x2="${legendX + 20}" y1="${legendY}" y2="${legendY}" stroke="${colour}" stroke-width="2"/>`,
      `<text x="${legendX + 26}" y="${legendY + 4}">${escapeXml(s.label)}</text>`,
    );
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}
