/**
 * The parameter-budget study both demos run with --sweep: every method at
 * several sizes, each at the learning rate that scores best on the validation
 * split, then scored once on the test split; the quality reached against the
 * trainable parameters as a table and a chart (log-scale x, a line per family).
 *
 * Learning rates come from a ladder (1, 3, 10, 30 ... times 1e-4). A point's
 * search tries the rung it names and its two neighbours, and steps further
 * while the best rung sits at an edge of what was tried (at most MAX_EXTRA_RUNGS
 * more). The test split plays no part in the choice: it is scored only for the
 * chosen rate, from the files that run saved.
 *
 * Every run's outcome goes into a JSON cache (written after each run, keyed by
 * the demo's settings, the point and the rate), so an interrupted sweep resumes
 * where it stopped and a finished one redraws its table and chart in seconds.
 * The cache knows nothing of code changes: delete it after changing the
 * training code.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';

import type { Json } from '../../lib/adapters';
import type { Parameter } from '../../lib/autograd';
import { writeFileAtomic } from '../../lib/io';
import type { Module } from '../../lib/nn';
import { lineChartSvg } from './chart';
import { median } from './loop';
import {
  type AdapterSpec,
  METHOD_LABELS,
  type MethodHandlers,
  type MethodName,
  describeSpec,
  frozenSharedValues,
} from './methods';
import { markdownTable } from './table';

export const LR_LADDER = Object.freeze([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1, 3]);
const MAX_EXTRA_RUNGS = 3;

export interface SweepPoint {
  /** Its line in the chart, e.g. 'TeRA (modes <= m)'. */
  family: string;
  spec: AdapterSpec;
  /** Its place on that line, drawn next to its marker, e.g. 'm 32'. */
  tag: string;
  /** The rung of LR_LADDER its search starts at. */
  lr: number;
}

/** The sizes a demo's study sweeps: TeRA by maxModeSize at full rank and at order 2 by rank, VeRA and LoRA by r. */
export interface SweepGrid {
  /** maxModeSize values, each at full Tucker rank (maxRank alike). */
  teraModeSizes: number[];
  /** A maxModeSize at least every adapted dimension: order 2, one mode per side. */
  order2ModeSize: number;
  /** maxRank values at order 2. */
  order2Ranks: number[];
  veraRanks: number[];
  /** LoRA with alpha = 2r, the default's scale. */
  loraRanks: number[];
}

/**
 * The study's points for `grid`, with full fine-tuning for reference, of the chosen methods;
 * each search starts at the demo's own learning rate for its method (`startLr`).
 */
export function sweepPoints(
  grid: SweepGrid,
  methods: readonly MethodName[],
  startLr: (method: MethodName) => number,
): SweepPoint[] {
  const points: SweepPoint[] = [
    ...grid.teraModeSizes.map((m) => ({
      family: 'TeRA (modes <= m)',
      spec: { method: 'tera', maxModeSize: m, maxRank: m } as const,
      tag: `m ${m}`,
      lr: startLr('tera'),
    })),
    ...grid.order2Ranks.map((r) => ({
      family: 'TeRA order 2 (rank <= r)',
      spec: { method: 'tera', maxModeSize: grid.order2ModeSize, maxRank: r } as const,
      tag: `r ${r}`,
      lr: startLr('tera'),
    })),
    ...grid.veraRanks.map((r) => ({
      family: 'VeRA (r)',
      spec: { method: 'vera', r } as const,
      tag: `r ${r}`,
      lr: startLr('vera'),
    })),
    ...grid.loraRanks.map((r) => ({
      family: 'LoRA (r)',
      spec: { method: 'lora', r, alpha: 2 * r } as const,
      tag: `r ${r}`,
      lr: startLr('lora'),
    })),
    { family: 'full fine-tuning', spec: { method: 'full' }, tag: '', lr: startLr('full') },
  ];
  return points.filter((p) => methods.includes(p.spec.method));
}

export interface Metric {
  /** As the table's column headers say it, e.g. 'accuracy'. */
  name: string;
  higherIsBetter: boolean;
  format(value: number): string;
}

/** What training one point at one rate gives. */
export interface TrainedRun {
  /** The metric on the validation split (NaN when training diverged). */
  validation: number;
  trainableParameters: number;
  frozenSharedValues: number;
  /** Median wall-clock seconds of an optimiser step. */
  secondsPerStep: number;
}

export interface SweepTask {
  /** Everything besides the point and rate that changes a result: part of every cache key. */
  settings: Record<string, Json>;
  metric: Metric;
  /** Trains `point` at `lr`, saves what it trained into `dir`, scores the validation split. */
  train(point: SweepPoint, lr: number, dir: string): TrainedRun;
  /** Applies the files a run saved in `dir` to a fresh base and scores the test split. */
  test(point: SweepPoint, dir: string): number;
}

export interface SweepRow extends TrainedRun {
  family: string;
  method: MethodName;
  setting: string;
  tag: string;
  /** The rate chosen on the validation split. */
  lr: number;
  /** Every rate tried, with its validation score. */
  tried: [lr: number, validation: number][];
  test: number;
}

interface CacheFile {
  runs: Record<string, TrainedRun>;
  tests: Record<string, number>;
}

/** The JSON cache of runs; written whole after every new entry, atomically. */
class SweepCache {
  readonly #file: string;
  readonly #data: CacheFile;

  constructor(file: string) {
    this.#file = file;
    this.#data = { runs: {}, tests: {} };
    if (fs.existsSync(file)) {
      let parsed: Partial<CacheFile>;
      try {
        parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<CacheFile>;
      } catch (err) {
        throw new Error(`sweep cache ${file} is not valid JSON (${(err as Error).message}); delete it to start over`);
      }
      Object.assign(this.#data.runs, parsed.runs ?? {});
      Object.assign(this.#data.tests, parsed.tests ?? {});
    }
  }

  run(key: string): TrainedRun | undefined {
    return this.#data.runs[key];
  }

  test(key: string): number | undefined {
    return this.#data.tests[key];
  }

  setRun(key: string, run: TrainedRun): void {
    this.#data.runs[key] = run;
    this.#save();
  }

  setTest(key: string, value: number): void {
    this.#data.tests[key] = value;
    this.#save();
  }

  #save(): void {
    // JSON has no NaN: a diverged run's score is stored as null and read back as such.
    writeFileAtomic(this.#file, `${JSON.stringify(this.#data, null, 1)}\n`);
  }
}

/** Whether score `a` beats `b` (a diverged run, NaN or null, never does). */
function better(metric: Metric, a: number | null, b: number | null): boolean {
  if (a === null || Number.isNaN(a)) return false;
  if (b === null || Number.isNaN(b)) return true;
  return metric.higherIsBetter ? a > b : a < b;
}

function rungOf(lr: number): number {
  const rung = LR_LADDER.indexOf(lr);
  if (rung < 0) throw new Error(`sweep: learning rate ${lr} is not on the ladder ${LR_LADDER.join(', ')}`);
  return rung;
}

/** How a demo trains and scores one point of its study, on its model type M. */
export interface SweepModel<M extends Module> {
  /** A fresh frozen copy of the pretrained base. */
  loadBase(): M;
  handlers(spec: AdapterSpec): MethodHandlers<M>;
  /** Trains `params` of `model` at `lr`, with a progress bar titled `title`. */
  train(title: string, model: M, params: Parameter[], lr: number): { stepSeconds: number[] };
  /** The task's metric on its validation split. */
  validation(model: M): number;
  /** The task's metric on its test split. */
  test(model: M): number;
}

/**
 * A SweepTask's train and test from a demo's model operations: each run trains a fresh base,
 * saves what it trained into its folder and scores the validation split; the test scores the
 * saved files applied to another fresh base.
 */
export function sweepRuns<M extends Module>(ops: SweepModel<M>): Pick<SweepTask, 'train' | 'test'> {
  return {
    train: (point, lr, dir) => {
      const method = ops.handlers(point.spec);
      const model = ops.loadBase();
      const params = method.prepare(model);
      const tag = point.tag === '' ? method.label : `${method.label} ${point.tag}`;
      const result = ops.train(`${tag}, lr ${lr}`, model, params, lr);
      method.save(model, dir);
      const validation = ops.validation(model);
      const run = {
        validation: Number.isFinite(validation) ? validation : Number.NaN,
        trainableParameters: params.reduce((n, p) => n + p.size, 0),
        frozenSharedValues: frozenSharedValues(model),
        secondsPerStep: median(result.stepSeconds),
      };
      model.dispose();
      return run;
    },
    test: (point, dir) => {
      const model = ops.loadBase();
      ops.handlers(point.spec).load(model, dir);
      const score = ops.test(model);
      model.dispose();
      return score;
    },
  };
}

/**
 * Runs every point (training only what the cache lacks) and returns one row
 * per point. `dir` holds the cache and each run's saved files.
 */
export function runSweep(
  task: SweepTask,
  points: readonly SweepPoint[],
  dir: string,
  log: (line: string) => void,
): SweepRow[] {
  fs.mkdirSync(dir, { recursive: true });
  const cache = new SweepCache(path.join(dir, 'cache.json'));
  const rows: SweepRow[] = [];
  for (const [index, point] of points.entries()) {
    const setting = describeSpec(point.spec);
    const label = `${METHOD_LABELS[point.spec.method]} ${setting}`;
    const keyOf = (lr: number) => JSON.stringify({ settings: task.settings, spec: point.spec, lr });
    const runDir = (lr: number) =>
      path.join(dir, 'runs', createHash('sha256').update(keyOf(lr)).digest('hex').slice(0, 16));
    const trained = new Map<number, TrainedRun>();
    const tryRung = (rung: number): void => {
      const lr = LR_LADDER[rung];
      if (trained.has(rung)) return;
      let run = cache.run(keyOf(lr));
      if (run === undefined) {
        log(`[${index + 1}/${points.length}] ${label}, lr ${lr}`);
        run = task.train(point, lr, runDir(lr));
        cache.setRun(keyOf(lr), run);
      }
      trained.set(rung, run);
    };
    const start = rungOf(point.lr);
    for (const rung of [start - 1, start, start + 1]) if (rung >= 0 && rung < LR_LADDER.length) tryRung(rung);
    let best = start;
    for (let extra = 0; ; extra++) {
      best = [...trained.keys()].reduce((a, b) =>
        better(task.metric, trained.get(b)!.validation, trained.get(a)!.validation) ? b : a,
      );
      const tried = [...trained.keys()];
      const next = best === Math.min(...tried) ? best - 1 : best === Math.max(...tried) ? best + 1 : -1;
      if (extra === MAX_EXTRA_RUNGS || next < 0 || next >= LR_LADDER.length) break;
      tryRung(next);
    }
    const lr = LR_LADDER[best];
    const chosen = trained.get(best)!;
    let test = cache.test(keyOf(lr));
    if (test === undefined) {
      // The chosen run's files are gone (a cleaned folder): train it again to score it.
      if (!fs.existsSync(runDir(lr))) task.train(point, lr, runDir(lr));
      test = task.test(point, runDir(lr));
      cache.setTest(keyOf(lr), test);
    }
    const row: SweepRow = {
      ...chosen,
      family: point.family,
      method: point.spec.method,
      setting,
      tag: point.tag,
      lr,
      tried: [...trained.entries()].sort(([a], [b]) => a - b).map(([rung, run]) => [LR_LADDER[rung], run.validation]),
      test,
    };
    log(
      `${label}: lr ${lr} chosen on validation (${task.metric.format(chosen.validation)}); ` +
        `test ${task.metric.format(test)}, ${chosen.trainableParameters.toLocaleString('en-US')} trainable`,
    );
    rows.push(row);
  }
  return rows;
}

function sweepTable(rows: readonly SweepRow[], metric: Metric): string {
  return markdownTable(
    [
      'method',
      'setting',
      'trainable params',
      'frozen shared values',
      'lr (on validation)',
      `validation ${metric.name}`,
      `test ${metric.name}`,
      's / step',
    ],
    rows.map((r) => [
      METHOD_LABELS[r.method],
      r.setting,
      r.trainableParameters.toLocaleString('en-US'),
      r.frozenSharedValues.toLocaleString('en-US'),
      String(r.lr),
      metric.format(r.validation),
      metric.format(r.test),
      r.secondsPerStep < 0.01 ? r.secondsPerStep.toFixed(4) : r.secondsPerStep.toFixed(3),
    ]),
    ['left', 'left', 'right', 'right', 'right', 'right', 'right', 'right'],
  );
}

/** Test score against trainable parameters, one line per family in the order families first appear. */
function sweepChartSvg(rows: readonly SweepRow[], metric: Metric, title: string): string {
  const families = [...new Set(rows.map((r) => r.family))];
  const series = families.map((family) => {
    const members = rows
      .filter((r) => r.family === family)
      .sort((a, b) => a.trainableParameters - b.trainableParameters);
    return {
      label: family,
      points: members.map((r): [number, number] => [r.trainableParameters, r.test]),
      pointLabels: members.map((r) => r.tag),
    };
  });
  return lineChartSvg(series, {
    title,
    xLabel: 'trainable parameters (log scale)',
    yLabel: `test ${metric.name}`,
    xScale: 'log',
    yScale: 'linear',
    markers: true,
  });
}

/** Writes sweep.md, sweep.json and sweep.svg into `dir`, then logs the table and where the files are. */
export function reportSweep(
  rows: readonly SweepRow[],
  task: SweepTask,
  dir: string,
  title: string,
  header: string,
  log: (line: string) => void,
): void {
  const table = sweepTable(rows, task.metric);
  writeFileAtomic(path.join(dir, 'sweep.md'), `${header}\n\n${table}\n`);
  writeFileAtomic(path.join(dir, 'sweep.json'), `${JSON.stringify({ settings: task.settings, rows }, null, 2)}\n`);
  writeFileAtomic(path.join(dir, 'sweep.svg'), sweepChartSvg(rows, task.metric, title));
  log(`\n${table}\n`);
  log(`table, chart and every run in ${dir}/`);
}
