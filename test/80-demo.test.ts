/**
 * The MNIST demo: its data pipeline, its flags, and a smoke run with small
 * settings that must train every method, lower each loss and write a
 * well-formed table, chart and adapter files.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { factorizeDimension } from '../lib/adapters';
import { readSafetensors } from '../lib/io';
import { parseDemoArgs } from '../scripts/demo/cli';
import {
  IMAGE_SIDE,
  IMAGE_SIZE,
  SPLIT,
  VALIDATION_COUNT,
  holdOutValidation,
  loadMnist,
  permutation,
  rotate,
  splitDigits,
} from '../scripts/demo/data';
import { type DemoResults, mnistSweepPoints, runDemo, runMnistSweep } from '../scripts/demo/mnist-demo';
import { LR_LADDER, type SweepPoint, type SweepRow, type SweepTask, runSweep } from '../scripts/demo/sweep';
import { isClose } from './helpers/tolerance';

describe('demo data', () => {
  const digits = loadMnist();

  test('loads the 10,000 digits of the mnist package with labels 0-9', () => {
    expect(digits.count).toBe(10000);
    expect(digits.images.length).toBe(10000 * IMAGE_SIZE);
    expect(new Set(digits.labels)).toEqual(new Set([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
    expect(Math.min(...digits.images.subarray(0, 5 * IMAGE_SIZE))).toBe(0);
    expect(Math.max(...digits.images.subarray(0, 5 * IMAGE_SIZE))).toBeLessThanOrEqual(1);
  });

  test('the split is a fixed permutation: train and test are disjoint and cover every digit', () => {
    const order = permutation(digits.count, SPLIT.seed);
    expect(Array.from(order).sort((a, b) => a - b)).toEqual(Array.from({ length: digits.count }, (_, i) => i));
    expect(Array.from(permutation(digits.count, SPLIT.seed))).toEqual(Array.from(order));
    const { train, test } = splitDigits(digits);
    expect([train.count, test.count]).toEqual([digits.count - SPLIT.testCount, SPLIT.testCount]);
    const trainFirst = order[0];
    const testFirst = order[digits.count - SPLIT.testCount];
    expect(train.images.subarray(0, IMAGE_SIZE)).toEqual(
      digits.images.subarray(trainFirst * IMAGE_SIZE, (trainFirst + 1) * IMAGE_SIZE),
    );
    expect(test.labels[0]).toBe(digits.labels[testFirst]);
  });

  test('the validation digits are the last of the training digits, disjoint from the rest', () => {
    const { train } = splitDigits(digits);
    const held = holdOutValidation(train);
    expect([held.train.count, held.validation.count]).toEqual([train.count - VALIDATION_COUNT, VALIDATION_COUNT]);
    // Byte comparisons: jest's toEqual walks millions of elements slowly.
    const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    expect(bytes(held.train.images).equals(bytes(train.images.subarray(0, held.train.count * IMAGE_SIZE)))).toBe(true);
    expect(bytes(held.validation.images).equals(bytes(train.images.subarray(held.train.count * IMAGE_SIZE)))).toBe(
      true,
    );
    expect(Array.from(held.validation.labels)).toEqual(Array.from(train.labels.subarray(held.train.count)));
  });

  test('rotation by 90 degrees turns the image a quarter counter-clockwise', () => {
    const image = new Float32Array(IMAGE_SIZE);
    image[0 * IMAGE_SIDE + 5] = 1; // top row, column 5
    const turned = rotate({ images: image, labels: Uint8Array.of(3), count: 1 }, 90);
    // Counter-clockwise, the top edge becomes the left edge: (row 0, col c) -> (row 27 - c, col 0).
    const hot = Array.from(turned.images.entries()).filter(([, v]) => v > 1e-6);
    expect(hot.length).toBe(1);
    expect(hot[0][0]).toBe((IMAGE_SIDE - 1 - 5) * IMAGE_SIDE + 0);
    expect(hot[0][1]).toBeCloseTo(1, 5);
    expect(turned.labels[0]).toBe(3);
  });
});

describe('demo flags', () => {
  test('defaults', () => {
    expect(parseDemoArgs([])).toEqual(
      expect.objectContaining({ methods: ['tera', 'vera', 'lora', 'full'], epochs: 10, device: 'auto', rotate: 90 }),
    );
  });

  test('choices are parsed and checked', () => {
    const options = parseDemoArgs([
      '--methods',
      'lora,TeRA',
      '--epochs',
      '2',
      '--device',
      'cpu',
      '--train-limit',
      '50',
    ]);
    expect(options).toEqual(expect.objectContaining({ methods: ['lora', 'tera'], epochs: 2, trainLimit: 50 }));
    expect(() => parseDemoArgs(['--methods', 'tera,dora'])).toThrow("unknown method 'dora'");
    expect(() => parseDemoArgs(['--epochs', '0'])).toThrow('--epochs must be a positive integer');
    expect(() => parseDemoArgs(['--device', 'tpu'])).toThrow('--device must be cpu, cuda or auto');
    expect(() => parseDemoArgs(['--epcohs', '3'])).toThrow(/Unknown option '--epcohs'/);
    expect(parseDemoArgs(['--sweep']).sweep).toBe(true);
    expect(() => parseDemoArgs(['--sweep', '--distributed', '--device', 'cpu'])).toThrow('--sweep runs in one process');
  });
});

describe('demo smoke run', () => {
  let outDir: string;
  let results: DemoResults;
  const lines: string[] = [];

  beforeAll(() => {
    outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-demo-'));
    const options = parseDemoArgs(['--epochs', '3', '--train-limit', '1500', '--device', 'cpu', '--out', outDir]);
    results = runDemo(options, (line) => lines.push(line));
  });

  afterAll(() => fs.rmSync(outDir, { recursive: true, force: true }));

  test('runs every method on the held-out digits and each one learns', () => {
    expect(results.methods.map((r) => r.method)).toEqual(['tera', 'vera', 'lora', 'full']);
    expect(results.testDigits).toBe(SPLIT.testCount);
    expect(results.trainDigits).toBe(1500);
    for (const r of results.methods) {
      expect(r.lossEnd).toBeLessThan(0.8 * r.lossStart);
      expect(r.accuracyAfter).toBeGreaterThan(r.accuracyBefore + 0.15);
      expect(r.secondsPerEpoch).toBeGreaterThan(0);
    }
    // The frozen base does poorly on rotated digits but well on upright ones.
    expect(results.uprightBaseAccuracy).toBeGreaterThan(0.9);
    expect(results.methods[0].accuracyBefore).toBeLessThan(0.3);
  });

  test('counts the trainable parameters each method really has', () => {
    const count = Object.fromEntries(results.methods.map((r) => [r.method, r.trainableParameters]));
    expect(count.full).toBe(784 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10);
    expect(count.lora).toBe(8 * (784 + 128) + 8 * (128 + 64) + 8 * (64 + 10));
    expect(count.vera).toBe(128 + 256 + 64 + 256 + 10 + 256);
    expect(count.tera).toBeLessThan(count.vera);
  });

  test('writes the table, and prints it', () => {
    const table = fs.readFileSync(path.join(outDir, 'results.md'), 'utf8');
    const rows = table.split('\n').filter((line) => line.startsWith('|'));
    expect(rows).toHaveLength(2 + 4);
    expect(rows[0]).toMatch(/method.*trainable params.*frozen base acc.*acc\. after.*s \/ epoch.*adapter file/);
    for (const [i, label] of ['TeRA', 'VeRA', 'LoRA', 'full fine-tuning'].entries()) {
      expect(rows[2 + i]).toMatch(new RegExp(`^\\| ${label} +\\|.*\\d+\\.\\d% \\|.*\\d+\\.\\d% \\|.*(B|KiB) \\|$`));
    }
    expect(lines.join('\n')).toContain(rows[0]);
    const json = JSON.parse(fs.readFileSync(path.join(outDir, 'results.json'), 'utf8'));
    expect(json.methods).toHaveLength(4);
  });

  test('writes loss curves as a well-formed SVG with one line per method', () => {
    const svg = fs.readFileSync(path.join(outDir, 'loss-curves.svg'), 'utf8');
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    const lines = [...svg.matchAll(/<polyline [^>]*points="([^"]+)"\/>/g)].map((m) => m[1]);
    expect(lines).toHaveLength(4);
    for (const points of lines) {
      const coords = points.split(' ').map((pair) => pair.split(',').map(Number));
      expect(coords.length).toBeGreaterThan(5);
      expect(coords.every(([x, y]) => Number.isFinite(x) && Number.isFinite(y))).toBe(true);
    }
    for (const label of ['TeRA', 'VeRA', 'LoRA', 'full fine-tuning']) expect(svg).toContain(`>${label}</text>`);
  });

  test('saves adapter files that read back with the trained tensors', () => {
    for (const r of results.methods) {
      expect(fs.statSync(r.weightsFile).size).toBe(r.weightsBytes);
      const { tensors } = readSafetensors(r.weightsFile);
      const stored = Object.values(tensors).reduce((n, t) => n + t.data.length, 0);
      expect(stored).toBe(r.trainableParameters);
      if (r.method !== 'full') {
        const config = JSON.parse(
          fs.readFileSync(path.join(path.dirname(r.weightsFile), 'adapter_config.json'), 'utf8'),
        );
        expect(config.peft_type).toBe(r.method.toUpperCase());
      }
    }
  });
});

describe('demo sweep: learning-rate search and cache', () => {
  const score = { name: 'score', higherIsBetter: true, format: (v: number) => v.toFixed(3) };
  const point = (lr: number): SweepPoint => ({
    family: 'LoRA (r)',
    spec: { method: 'lora', r: 1, alpha: 2 },
    tag: 'r 1',
    lr,
  });
  let dir: string;
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-sweep-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  /**
   * A task whose validation score is best at `peak`, falling off with the distance in decades (a loss that
   * grows with it when `lowerIsBetter`), and whose test score is 10x that; it records its calls.
   */
  function fakeTask(
    peak: number,
    settings: Record<string, number> = {},
    diverges: number[] = [],
    lowerIsBetter = false,
  ) {
    const calls = { train: [] as number[], test: [] as string[] };
    const dirs = new Map<number, string>();
    const value = (lr: number) => (lowerIsBetter ? distance(lr) : 1 - distance(lr));
    const distance = (lr: number) => Math.abs(Math.log10(lr) - Math.log10(peak));
    const task: SweepTask = {
      settings,
      metric: { ...score, higherIsBetter: !lowerIsBetter },
      train: (_p, lr, runDir) => {
        calls.train.push(lr);
        dirs.set(lr, runDir);
        fs.mkdirSync(runDir, { recursive: true });
        const validation = diverges.includes(lr) ? NaN : value(lr);
        return { validation, trainableParameters: 7, frozenSharedValues: 0, secondsPerStep: 0.5 };
      },
      test: (_p, runDir) => {
        calls.test.push(runDir);
        return 10 * value([...dirs].find(([, d]) => d === runDir)![0]);
      },
    };
    return { task, calls, dirs };
  }

  test('tries the start and its neighbours, follows the best past an edge, scores test once on the pick', () => {
    const { task, calls, dirs } = fakeTask(0.01);
    const [row] = runSweep(task, [point(0.1)], dir, () => {});
    expect(calls.train).toEqual([0.03, 0.1, 0.3, 0.01, 0.003]);
    expect(row.lr).toBe(0.01);
    expect(row.tried.map(([lr]) => lr)).toEqual([0.003, 0.01, 0.03, 0.1, 0.3]);
    expect(calls.test).toEqual([dirs.get(0.01)]);
    expect(row.test).toBe(10);
  });

  test('stops after three extra rungs, and at the end of the ladder', () => {
    const below = fakeTask(1e-9);
    expect(runSweep(below.task, [point(0.1)], dir, () => {})[0].lr).toBe(0.001);
    expect(below.calls.train).toEqual([0.03, 0.1, 0.3, 0.01, 0.003, 0.001]);
    const above = fakeTask(100, { other: 1 });
    const top = LR_LADDER[LR_LADDER.length - 1];
    expect(runSweep(above.task, [point(top)], dir, () => {})[0].lr).toBe(top);
    expect(above.calls.train).toEqual([LR_LADDER[LR_LADDER.length - 2], top]);
  });

  test('a diverged run is never chosen; lower-is-better metrics pick the lowest', () => {
    const { task } = fakeTask(0.3, {}, [0.3]);
    const [row] = runSweep(task, [point(0.1)], dir, () => {});
    expect(row.lr).toBe(0.1);
    expect(row.tried.find(([lr]) => lr === 0.3)![1]).toBeNaN();
    const loss = fakeTask(0.003, { lower: 1 }, [], true);
    expect(runSweep(loss.task, [point(0.1)], dir, () => {})[0].lr).toBe(0.003);
  });

  test('a second run reuses the cache: nothing trains, the rows are the same; new settings train anew', () => {
    const first = fakeTask(0.01);
    const rows = runSweep(first.task, [point(0.1)], dir, () => {});
    const again = fakeTask(0.01);
    expect(runSweep(again.task, [point(0.1)], dir, () => {})).toEqual(rows);
    expect(again.calls).toEqual({ train: [], test: [] });
    const changed = fakeTask(0.01, { epochs: 2 });
    runSweep(changed.task, [point(0.1)], dir, () => {});
    expect(changed.calls.train.length).toBe(5);
  });
});

describe('demo sweep smoke run', () => {
  let outDir: string;
  let rows: SweepRow[];
  let svg: string;

  beforeAll(() => {
    outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-demo-sweep-'));
    const options = parseDemoArgs(['--epochs', '1', '--train-limit', '256', '--device', 'cpu', '--out', outDir]);
    const points = mnistSweepPoints(['tera', 'lora']).filter((p) => ['m 16', 'r 1'].includes(p.tag));
    rows = runMnistSweep(options, () => {}, points);
    svg = fs.readFileSync(path.join(outDir, 'sweep', 'sweep.svg'), 'utf8');
  });

  afterAll(() => fs.rmSync(outDir, { recursive: true, force: true }));

  test('the points cover every method, TeRA from the default modes down to order 2', () => {
    const all = mnistSweepPoints(['tera', 'vera', 'lora', 'full']);
    expect(new Set(all.map((p) => p.spec.method))).toEqual(new Set(['tera', 'vera', 'lora', 'full']));
    const tera = all.filter((p) => p.spec.method === 'tera').map((p) => p.spec);
    expect(tera[0]).toEqual({ method: 'tera', maxModeSize: 16, maxRank: 16 });
    expect(tera.some((s) => s.method === 'tera' && (s.maxModeSize ?? 0) >= 784)).toBe(true);
  });

  test('picks each learning rate by validation accuracy and reports its counts and costs', () => {
    expect(rows.map((r) => [r.method, r.tag])).toEqual([
      ['tera', 'm 16'],
      ['lora', 'r 1'],
    ]);
    for (const row of rows) {
      const best = Math.max(...row.tried.map(([, v]) => v));
      expect(row.validation).toBe(best);
      expect(row.tried.find(([lr]) => lr === row.lr)![1]).toBe(best);
      expect(row.tried.length).toBeGreaterThanOrEqual(3);
      expect(row.test).toBeGreaterThan(0);
      expect(row.test).toBeLessThanOrEqual(1);
      expect(row.secondsPerStep).toBeGreaterThan(0);
    }
    // TeRA 'm 16' at full Tucker rank: each layer's sum of ranks trains; each signature's core and factors are frozen.
    const layers = [
      [128, 784],
      [64, 128],
      [10, 64],
    ].map(([o, i]) => [...factorizeDimension(o, 16), ...factorizeDimension(i, 16)]);
    const core = (modes: number[]) => modes.reduce((a, b) => a * b, 1);
    expect(rows[0].trainableParameters).toBe(layers.flat().reduce((a, b) => a + b, 0));
    expect(rows[0].frozenSharedValues).toBe(layers.reduce((n, m) => n + core(m) + m.reduce((a, b) => a + b * b, 0), 0));
    expect(rows[1].trainableParameters).toBe(784 + 128 + 128 + 64 + 64 + 10);
    expect(rows[1].frozenSharedValues).toBe(0);
  });

  test('writes the table, the JSON and a chart with a log-scale x axis and a marker per point', () => {
    const table = fs.readFileSync(path.join(outDir, 'sweep', 'sweep.md'), 'utf8');
    expect(table).toMatch(/\| method +\| setting +\| trainable params .*\| test accuracy \| s \/ step \|/);
    expect(table).toMatch(/\| TeRA +\| modes <= 16, rank <= 16 +\| +119 \|/);
    const json = JSON.parse(fs.readFileSync(path.join(outDir, 'sweep', 'sweep.json'), 'utf8'));
    expect(json.rows).toHaveLength(2);
    expect(json.settings).toEqual(expect.objectContaining({ task: 'mnist', trainDigits: 256, validationDigits: 1500 }));
    expect([...svg.matchAll(/<polyline /g)]).toHaveLength(2);
    expect([...svg.matchAll(/<circle /g)]).toHaveLength(2);
    expect(svg).toContain('trainable parameters (log scale)');
    // Log scale: ticks at 200, 500 and 1,000 sit at distances in the ratio log(2) : log(2.5).
    const tickX = (label: string) =>
      Number(new RegExp(`<text x="([\\d.]+)" y="[\\d.]+" text-anchor="middle">${label}</text>`).exec(svg)![1]);
    const ratio = (tickX('1000') - tickX('500')) / (tickX('500') - tickX('200'));
    expect(isClose(ratio, Math.log(2) / Math.log(2.5), 0, 0.01)).toBe(true);
  });
});
