/**
 * Runs the C++ test executable (native/tests/cuda_vs_cpu.cc), which checks every
 * CUDA kernel against its CPU twin. Without a usable GPU it reports that it
 * skipped and why; with one, every check must pass.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const executable = path.join(__dirname, '..', 'build', 'tera_native_tests');

describe('native CUDA-vs-CPU test executable', () => {
  it('is built alongside the addon', () => {
    expect(fs.existsSync(executable) ? executable : 'missing: run `npm run build:native`').toBe(executable);
  });

  it('passes, or reports why it skipped', () => {
    const run = spawnSync(executable, { encoding: 'utf8', timeout: 600000 });
    expect(run.error).toBeUndefined();
    const lines = run.stdout.trim().split('\n');
    const summary = lines[lines.length - 1];
    expect(summary).toMatch(/^\d+ passed, 0 failed$/);
    expect(run.status).toBe(0);
    const skipped = lines.find((line) => line.startsWith('SKIPPED: '));
    if (skipped) {
      expect(skipped.length).toBeGreaterThan('SKIPPED: '.length);
      expect(summary).toBe('0 passed, 0 failed');
    } else {
      expect(Number(summary.split(' ')[0])).toBeGreaterThan(0);
    }
  });
});
