/**
 * The language-model demo end to end on a tiny budget (seconds), so that it
 * cannot rot: its shared data helpers against independent computations, the
 * shipped pretrained base loaded as a downloaded model, pretraining's
 * determinism, the demo's flags, a run of every method and a two-point sweep.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { TeraConfig, backendInfo, models } from '../lib';
import { readSafetensors } from '../lib/io';
import { Tokenizer, byteLevelTokenizer } from '../lib/tokenizers';
import { BROWN_SPLIT, type BrownText, loadBrown, splitBrown } from '../scripts/demo/brown';
import {
  LM_BASE_DIR,
  PRETRAINING_FILE,
  WindowBatches,
  bitsPerByte,
  encodeTexts,
  evaluationWindows,
  joinFiles,
} from '../scripts/demo/lm-data';
import {
  type LmDemoResults,
  PROMPT,
  lmSweepPoints,
  parseLmDemoArgs,
  runLmDemo,
  runLmSweep,
} from '../scripts/demo/lm-demo';
import type { SweepRow } from '../scripts/demo/sweep';
import { BASE_CONFIG, PRETRAIN, pretrainBase } from '../scripts/pretrain-lm';
import { isClose } from './helpers/tolerance';

const range = (start: number, end: number) => Array.from({ length: end - start }, (_, i) => start + i);

describe('LM data helpers', () => {
  test('joinFiles puts the separator after every file', () => {
    const stream = joinFiles([Int32Array.of(1, 2), Int32Array.of(), Int32Array.of(3)], 9);
    expect(Array.from(stream)).toEqual([1, 2, 9, 9, 3, 9]);
  });

  test('WindowBatches: each epoch visits every window once, in a seeded order that changes by epoch', () => {
    const stream = Int32Array.from(range(0, 4 * 10 + 3)); // 10 windows of 4, a tail of 3 left out
    const batches = new WindowBatches(stream, { context: 4, batchSize: 3, seed: 5 });
    expect([batches.windows, batches.batchesPerEpoch]).toEqual([10, 3]);
    const epoch = (e: number) => range(0, 3).flatMap((b) => batches.batch(e * 3 + b));
    const first = epoch(0);
    // Rows are consecutive tokens starting at a window boundary; no window twice; the short last batch dropped.
    for (const row of first) expect(row).toEqual(range(row[0], row[0] + 4));
    const starts = first.map((row) => row[0] / 4);
    expect(new Set(starts).size).toBe(9);
    expect(starts.every((w) => Number.isInteger(w) && w >= 0 && w < 10)).toBe(true);
    const second = epoch(1).map((row) => row[0] / 4);
    expect(second).not.toEqual(starts);
    const again = new WindowBatches(stream, { context: 4, batchSize: 3, seed: 5 });
    expect(range(0, 3).flatMap((b) => again.batch(b))).toEqual(first);
    expect(() => new WindowBatches(Int32Array.from(range(0, 7)), { context: 4, batchSize: 2, seed: 0 })).toThrow(
      '7 tokens make 1 windows of 4: too few for a batch of 2',
    );
  });

  test('evaluation windows stay inside one file and spread evenly past the cap', () => {
    const files = [Int32Array.from(range(0, 10)), Int32Array.from(range(100, 103)), Int32Array.from(range(200, 209))];
    const all = evaluationWindows(files, 4, 100);
    expect(all).toEqual([range(0, 4), range(4, 8), range(200, 204), range(204, 208)]);
    expect(evaluationWindows(files, 4, 2)).toEqual([range(0, 4), range(200, 204)]);
  });

  test('encodeTexts gives the byte-level tokenizer ids and refuses another tokenizer', () => {
    const texts: BrownText[] = [{ id: 'ck01', genre: 'k', text: 'He said "caf\u00e9" -- twice.\n' }];
    const tokenizer = byteLevelTokenizer({ eosToken: '<|endoftext|>' });
    const [ids] = encodeTexts(tokenizer, texts);
    expect(Array.from(ids)).toEqual(tokenizer.encode(texts[0].text, { addSpecialTokens: false }).ids);
    const words = new Tokenizer({
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [],
      normalizer: null,
      post_processor: null,
      model: { type: 'WordLevel', vocab: { '[UNK]': 0, a: 1 }, unk_token: '[UNK]' },
      pre_tokenizer: { type: 'Whitespace' },
      decoder: { type: 'Fuse' },
    });
    expect(() => encodeTexts(words, texts)).toThrow('the tokenizer is not byte-level');
  });
});

describe('the shipped pretrained base', () => {
  test('loads with fromPretrained and Tokenizer.fromFolder as a downloaded model', () => {
    for (const file of ['config.json', 'model.safetensors', 'tokenizer.json', PRETRAINING_FILE]) {
      expect(fs.existsSync(path.join(LM_BASE_DIR, file))).toBe(true);
    }
    const model = models.fromPretrained(LM_BASE_DIR, { device: 'cpu' });
    expect(model.config).toEqual(
      expect.objectContaining({
        modelType: 'gpt2',
        vocabSize: BASE_CONFIG.vocab_size,
        hiddenSize: BASE_CONFIG.n_embd,
        numLayers: BASE_CONFIG.n_layer,
        maxPositions: BASE_CONFIG.n_positions,
      }),
    );
    const record = JSON.parse(fs.readFileSync(path.join(LM_BASE_DIR, PRETRAINING_FILE), 'utf8'));
    expect(record.splitSeed).toBe(BROWN_SPLIT.seed);
    expect(record.parameters).toBe(model.numParameters());
    // A few MB in the repository: float32 weights of a model under a million parameters.
    expect(fs.statSync(path.join(LM_BASE_DIR, 'model.safetensors')).size).toBeLessThan(4 * 2 ** 20);
    const tokenizer = Tokenizer.fromFolder(LM_BASE_DIR);
    expect(tokenizer.encode('Hi\n', { addSpecialTokens: false }).ids).toEqual([72, 105, 10]);
    // It has learned English: far below the 8 bits of a uniform byte on held-out non-fiction it never saw.
    const heldOut = splitBrown(loadBrown()).pretrainValidation;
    const windows = evaluationWindows(encodeTexts(tokenizer, heldOut), BASE_CONFIG.n_positions, 16);
    expect(bitsPerByte(model, windows, 8)).toBeLessThan(3);
    model.dispose();
  });

  test('bitsPerByte is the mean next-byte cross-entropy in bits, against float64 log-softmax of the logits', () => {
    const model = models.fromPretrained(LM_BASE_DIR, { device: 'cpu' });
    const rows = [range(65, 65 + 20), range(97, 97 + 20).reverse(), range(40, 60)];
    const vocab = model.config.vocabSize;
    const logits = model.forward(rows).data.toFloat32Array();
    let bits = 0;
    let count = 0;
    rows.forEach((row, b) => {
      for (let t = 0; t + 1 < row.length; t++) {
        const at = (b * row.length + t) * vocab;
        let max = -Infinity;
        for (let v = 0; v < vocab; v++) max = Math.max(max, logits[at + v]);
        let sum = 0;
        for (let v = 0; v < vocab; v++) sum += Math.exp(logits[at + v] - max);
        bits += (max + Math.log(sum) - logits[at + row[t + 1]]) / Math.LN2;
        count++;
      }
    });
    // Batches of 2 windows then 1: the mean is over every predicted byte, not over batches.
    expect(isClose(bitsPerByte(model, rows, 2), bits / count, 1e-5, 0)).toBe(true);
    model.dispose();
  });
});

describe('LM pretraining', () => {
  test('is deterministic: two short runs write the same weights, loadable by fromPretrained', () => {
    const dirs = [0, 1].map(() => fs.mkdtempSync(path.join(os.tmpdir(), 'tera-pretrain-')));
    try {
      const settings = { ...PRETRAIN, steps: 3, warmupSteps: 1, batchSize: 2, validationWindows: 4, evaluateEvery: 2 };
      const records = dirs.map((dir) => pretrainBase(dir, { device: 'cpu', settings, log: () => {} }));
      const weights = dirs.map((dir) => fs.readFileSync(path.join(dir, 'model.safetensors')));
      expect(weights[0].equals(weights[1])).toBe(true);
      expect(records[0].losses).toEqual(records[1].losses);
      expect(records[0].losses).toHaveLength(3);
      // From the untrained model's log(257) nats per byte.
      expect(isClose(records[0].losses[0], Math.log(257), 0.05, 0)).toBe(true);
      expect(records[0].checkpoints.map((c) => c.step)).toEqual([2, 3]);
      const model = models.fromPretrained(dirs[0], { device: 'cpu' });
      expect(model.numParameters()).toBe(records[0].parameters);
      model.dispose();
      expect(Tokenizer.fromFolder(dirs[0]).tokenToId('<|endoftext|>')).toBe(256);
    } finally {
      for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('LM demo flags', () => {
  test('defaults and checks', () => {
    expect(parseLmDemoArgs([])).toEqual(
      expect.objectContaining({ methods: ['tera', 'vera', 'lora', 'full'], device: 'auto', sweep: false }),
    );
    expect(parseLmDemoArgs(['--methods', 'vera,lora', '--steps', '5']).methods).toEqual(['vera', 'lora']);
    expect(() => parseLmDemoArgs(['--methods', 'dora'])).toThrow("unknown method 'dora'");
    expect(() => parseLmDemoArgs(['--steps', '0'])).toThrow('--steps must be a positive integer');
    expect(() => parseLmDemoArgs(['--device', 'gpu'])).toThrow('--device must be cpu, cuda or auto');
    expect(() => parseLmDemoArgs(['--stpes', '3'])).toThrow(/Unknown option '--stpes'/);
  });

  test('--device cuda without a usable GPU is refused before anything runs, saying why', () => {
    if (backendInfo().cuda.available) {
      console.warn('skipped: a GPU is usable here, so --device cuda is accepted (not counted as passed)');
      return;
    }
    const out = path.join(os.tmpdir(), `tera-lm-cuda-${process.pid}`);
    const options = parseLmDemoArgs(['--device', 'cuda', '--out', out]);
    expect(() => runLmDemo(options, () => {})).toThrow("device 'cuda' was requested but CUDA is unavailable");
    expect(fs.existsSync(out)).toBe(false);
  });
});

describe('LM demo smoke run (tiny budget)', () => {
  let outDir: string;
  let results: LmDemoResults;
  const lines: string[] = [];

  beforeAll(() => {
    outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-lm-demo-'));
    const options = parseLmDemoArgs(
      ['--steps', '4', '--batch-size', '2', '--eval-windows', '6', '--device', 'cpu', '--out', outDir].flat(),
    );
    results = runLmDemo(options, (line) => lines.push(line));
  });

  afterAll(() => fs.rmSync(outDir, { recursive: true, force: true }));

  test('trains every method and scores held-out test windows before and after', () => {
    expect(results.methods.map((r) => r.method)).toEqual(['tera', 'vera', 'lora', 'full']);
    expect(results.files).toEqual({ train: 90, validation: 18, test: 18 });
    expect(results.testWindows).toBe(6);
    for (const r of results.methods) {
      expect(r.losses).toHaveLength(4);
      expect(r.bitsPerByteBefore).toBeLessThan(4);
      expect(Number.isFinite(r.bitsPerByteAfter)).toBe(true);
      expect(r.secondsPerStep).toBeGreaterThan(0);
      expect(fs.statSync(r.weightsFile).size).toBe(r.weightsBytes);
    }
    // Every method starts at the base: adapters add zero, full fine-tuning starts from its weights.
    for (const r of results.methods) expect(isClose(r.losses[0], results.methods[0].losses[0], 1e-4, 0)).toBe(true);
    // Full fine-tuning moved the model even in 4 steps: its saved weights, reloaded, score differently.
    const full = results.methods.find((r) => r.method === 'full')!;
    expect(full.bitsPerByteAfter).not.toBe(full.bitsPerByteBefore);
  });

  test('counts the trainable parameters each method has on the GPT-2 projections', () => {
    const { n_embd: d, n_layer: layers } = BASE_CONFIG;
    // c_attn [3d, d], attn c_proj [d, d], c_fc [4d, d], mlp c_proj [d, 4d] per block.
    const shapes = [
      [3 * d, d],
      [d, d],
      [4 * d, d],
      [d, 4 * d],
    ];
    const count = Object.fromEntries(results.methods.map((r) => [r.method, r.trainableParameters]));
    expect(count.lora).toBe(layers * shapes.reduce((n, [o, i]) => n + 8 * (o + i), 0));
    expect(count.vera).toBe(layers * shapes.reduce((n, [o]) => n + o + 256, 0));
    expect(count.full).toBe(results.base.parameters);
    expect(count.tera).toBeLessThan(count.vera);
    const saved = readSafetensors(results.methods[0].weightsFile).tensors;
    expect(Object.keys(saved).some((k) => k.startsWith('base_model.model.transformer.h.0.attn.c_attn.tera_'))).toBe(
      true,
    );
  });

  test('writes the table, the continuations side by side and the loss curves', () => {
    const table = fs.readFileSync(path.join(outDir, 'results.md'), 'utf8');
    expect(table).toMatch(/\| method +\| trainable params \| bits\/byte before \| bits\/byte after \| s \/ step \|/);
    for (const label of ['TeRA', 'VeRA', 'LoRA', 'full fine-tuning', 'base (non-fiction)']) {
      expect(table).toMatch(new RegExp(`^\\| ${label.replace(/[()]/g, '\\$&')} +\\|`, 'm'));
    }
    const printed = lines.join('\n');
    expect(printed).toContain(`"${PROMPT}" continued by each model`);
    // The columns' titles share one line.
    expect(printed).toMatch(/base \(non-fiction\) +TeRA +VeRA +LoRA +full fine-tuning/);
    for (const r of [results.base, ...results.methods]) {
      expect(r.continuation.length).toBeGreaterThan(0);
    }
    const svg = fs.readFileSync(path.join(outDir, 'loss-curves.svg'), 'utf8');
    expect([...svg.matchAll(/<polyline /g)]).toHaveLength(4);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
  });
});

describe('LM sweep smoke run', () => {
  let outDir: string;
  let rows: SweepRow[];

  beforeAll(() => {
    outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-lm-sweep-'));
    const options = parseLmDemoArgs(['--steps', '2', '--batch-size', '2', '--eval-windows', '4', '--out', outDir]);
    const points = lmSweepPoints(['tera', 'lora']).filter((p) => ['m 16', 'r 1'].includes(p.tag));
    rows = runLmSweep({ ...options, device: 'cpu' }, () => {}, points);
  });

  afterAll(() => fs.rmSync(outDir, { recursive: true, force: true }));

  test('the points run TeRA from modes <= 16 through the default to order 2, and VeRA, LoRA by r', () => {
    const all = lmSweepPoints(['tera', 'vera', 'lora', 'full']);
    const tera = all.filter((p) => p.spec.method === 'tera').map((p) => p.spec);
    expect(tera[0]).toEqual({ method: 'tera', maxModeSize: 16, maxRank: 16 });
    const { maxModeSize, maxRank } = TeraConfig.fields;
    expect(tera).toContainEqual({ method: 'tera', maxModeSize: maxModeSize.default, maxRank: maxRank.default });
    // Order 2 on every layer: no GPT-2 projection of the base is wider than 4 * n_embd.
    expect(tera.some((s) => s.method === 'tera' && (s.maxModeSize ?? 0) >= 4 * BASE_CONFIG.n_embd)).toBe(true);
    expect(new Set(all.map((p) => p.spec.method))).toEqual(new Set(['tera', 'vera', 'lora', 'full']));
  });

  test('chooses each learning rate by the lowest validation bits per byte and scores test once', () => {
    expect(rows.map((r) => [r.method, r.tag])).toEqual([
      ['tera', 'm 16'],
      ['lora', 'r 1'],
    ]);
    for (const row of rows) {
      const best = Math.min(...row.tried.map(([, v]) => v));
      expect(row.validation).toBe(best);
      expect(row.tried.length).toBeGreaterThanOrEqual(3);
      expect(row.test).toBeGreaterThan(0);
      expect(row.test).toBeLessThan(8);
    }
    const table = fs.readFileSync(path.join(outDir, 'sweep', 'sweep.md'), 'utf8');
    expect(table).toMatch(/\| test bits per byte \| s \/ step \|/);
    const svg = fs.readFileSync(path.join(outDir, 'sweep', 'sweep.svg'), 'utf8');
    expect([...svg.matchAll(/<polyline /g)]).toHaveLength(2);
  });
});
