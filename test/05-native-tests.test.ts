/**
 * The native test that needs a GPU: tera_native_tests (native/tests/cuda_vs_cpu.cc)
 * checks every CUDA kernel against its CPU twin. Whether this machine has a
 * usable CUDA device is asked when the file is collected (`--probe`); without
 * one the check is reported as skipped, with the reason, never as passed.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

import { buildDir, runNative, summary } from './helpers/native';

const executable = path.join(buildDir, 'tera_native_tests');
const minutes = 60_000;

const probe = fs.existsSync(executable)
  ? spawnSync(executable, ['--probe'], { encoding: 'utf8', timeout: minutes })
  : null;
const noDevice = probe?.status === 77 ? (/^SKIPPED: (.*)$/m.exec(probe.stdout)?.[1] ?? 'no reason given') : null;
if (noDevice !== null) console.warn(`skipped: the CUDA-vs-CPU test needs a usable CUDA device: ${noDevice}`);
const gpuIt = noDevice === null ? it : it.skip;

describe('native CUDA-vs-CPU test executable', () => {
  it('is built alongside the addon', () => {
    expect(fs.existsSync(executable) ? executable : 'missing: run `npm run build:native`').toBe(executable);
  });

  it('answers the probe: a device (exit 0), or SKIPPED with the reason (exit 77)', () => {
    expect(probe?.error).toBeUndefined();
    expect([0, 77]).toContain(probe?.status);
    if (probe?.status === 77) expect((noDevice ?? '').length).toBeGreaterThan(0);
    else expect(probe?.stdout).toMatch(/^CUDA device: /m);
  });

  gpuIt(
    'every CUDA kernel matches its CPU twin',
    async () => {
      const run = await runNative(executable, [], {}, 20 * minutes);
      const result = summary(run.stdout);
      expect(result?.failures ?? ['no summary line']).toEqual([]);
      expect(run.status).toBe(0);
      expect(result?.passed ?? 0).toBeGreaterThan(100);
    },
    25 * minutes,
  );
});
