/**
 * The quick benchmark as a smoke test: it must complete and write well-formed
 * results, and its check suite must compare every method with PyTorch (run now
 * when Python has torch, else the golden files) and pass. It asserts nothing about
 * speed (that is the benchmarks' job, not a test's).
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';

const root = path.resolve(__dirname, '..');

interface Summary {
  median: number;
  min: number;
  max: number;
  reps: number;
}

function expectSummary(s: Summary): void {
  expect(s.reps).toBeGreaterThanOrEqual(1);
  expect(s.min).toBeGreaterThan(0);
  expect(s.min).toBeLessThanOrEqual(s.median);
  expect(s.median).toBeLessThanOrEqual(s.max);
}

describe('npm run bench -- --quick', () => {
  let out: string;

  beforeAll(() => {
    out = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-bench-smoke-'));
  });

  afterAll(() => fs.rmSync(out, { recursive: true, force: true }));

  it('completes and writes JSON, markdown and charts', async () => {
    const tsx = path.join(root, 'node_modules', '.bin', 'tsx');
    await promisify(execFile)(tsx, ['scripts/bench/run.ts', '--quick', '--out', out], {
      cwd: root,
      maxBuffer: 16 * 2 ** 20,
    });

    const results = JSON.parse(fs.readFileSync(path.join(out, 'bench.json'), 'utf8'));
    expect(results.schema).toBe('tera-peft-bench/1');
    expect(results.environment.cpuModel).toBeTruthy();
    expect(results.environment.blas).toMatch(/OpenBLAS/);
    expect(typeof results.environment.torch.available).toBe('boolean');
    if (!results.environment.torch.available) expect(results.environment.torch.reason).toBeTruthy();

    expect(results.kernels.length).toBeGreaterThan(0);
    for (const k of results.kernels) expectSummary(k.ms);
    expect(results.kernels.map((k: { kernel: string }) => k.kernel)).toContain('reconstruct');

    const methods = results.layers.map((l: { method: string }) => l.method);
    expect(methods).toEqual(expect.arrayContaining(['frozen', 'tera', 'vera', 'lora']));
    for (const l of results.layers) expectSummary(l.ours);

    expect(results.memory.map((m: { method: string }) => m.method)).toContain('tera');
    for (const m of results.memory) expect(m.peakTensorBytes).toBeGreaterThan(0);
    // Against PyTorch run now when it is there, else against the golden files: never nothing.
    expect(results.checks.length).toBeGreaterThan(0);
    expect(new Set(results.checks.map((c: { method: string }) => c.method))).toEqual(
      new Set(['frozen', 'tera', 'vera', 'lora']),
    );
    for (const c of results.checks) expect(c).toMatchObject({ pass: true });
    // The language-model step: every method on both families, with tokens/s and peak memory.
    const steps = results.transformer.steps as { method: string; tokensPerSecond: number; peakTensorBytes: number }[];
    expect(new Set(steps.map((s) => s.method))).toEqual(new Set(['frozen', 'tera', 'vera', 'lora']));
    for (const s of steps) {
      expect(s.tokensPerSecond).toBeGreaterThan(0);
      expect(s.peakTensorBytes).toBeGreaterThan(0);
    }
    expect(results.transformer.depth.length).toBeGreaterThan(0);
    expect(results.targets.length).toBeGreaterThan(0);

    const markdown = fs.readFileSync(path.join(out, 'bench.md'), 'utf8');
    expect(markdown).toMatch(/^# tera-peft benchmark results/);
    expect(markdown).toContain('| device | threads | shape | kernel |');
    expect(markdown).toContain('## Language-model training step');
    const charts = fs.readdirSync(out).filter((f) => f.endsWith('.svg'));
    expect(charts.length).toBeGreaterThanOrEqual(2);
    for (const chart of charts) {
      expect(fs.readFileSync(path.join(out, chart), 'utf8')).toMatch(/^<svg [^>]*>[\s\S]*<\/svg>\s*$/);
    }
  }, 120_000);
});
