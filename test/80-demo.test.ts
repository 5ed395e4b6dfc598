/**
 * The MNIST demo: its data pipeline, its flags, and a smoke run with small
 * settings that must train every method, lower each loss and write a
 * well-formed table, chart and adapter files.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { readSafetensors } from '../lib/io';
import { parseDemoArgs } from '../scripts/demo/cli';
import { IMAGE_SIDE, IMAGE_SIZE, SPLIT, loadMnist, permutation, rotate, splitDigits } from '../scripts/demo/data';
import { type DemoResults, runDemo } from '../scripts/demo/mnist-demo';

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
