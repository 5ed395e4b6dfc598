/**
 * The CUDA kernels without a GPU. The backend's .cu sources, built by the C++
 * compiler against the host emulation (native/tests/emulation: one fiber per
 * CUDA thread, barriers, NaN-poisoned shared memory, cp.async groups), run the
 * same checks against the CPU backend as the GPU test, under AddressSanitizer
 * and under ThreadSanitizer, over a walk of Tucker shapes that reaches every
 * fused plan. Negative controls prove that the harness can fail: each
 * __syncthreads of each kernel, removed in turn, must be caught. The fused
 * planner's invariants are checked on their own.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { buildDir, NativeRun, runNative, summary, unavailableTargets } from './helpers/native';

const asan = 'tera_emulation_asan';
const tsan = 'tera_emulation_tsan';
const planTests = 'tera_plan_tests';
const executable = (name: string): string => path.join(buildDir, name);

// A target CMake could not build (a sanitizer the compiler lacks) is skipped with
// its reason; one missing for any other reason fails.
const unavailable = unavailableTargets();
for (const [name, reason] of Object.entries(unavailable)) {
  console.warn(`skipped: ${name} was not built: ${reason}`);
}
const emulationBuilt = !unavailable[asan] && !unavailable[tsan];
const emulationIt = emulationBuilt ? it : it.skip;

// One thread for the CPU reference: the cores go to the emulated blocks.
const env = { TERA_NUM_THREADS: '1' };
const minutes = 60_000;

/** Everything a failed run said that explains it: status, FAIL lines, sanitizer reports. */
function explain(name: string, run: NativeRun): string {
  const result = summary(run.stdout);
  const status = run.signal ? `killed by ${run.signal}` : `exit status ${run.status}`;
  const failures = result ? result.failures.slice(0, 20).join('\n') : 'no summary line';
  return `${name}: ${status}\n${failures}\n${run.stderr.slice(-6000)}`;
}

function expectClean(name: string, run: NativeRun): void {
  const result = summary(run.stdout);
  const clean =
    run.status === 0 &&
    result !== null &&
    result.failed === 0 &&
    !/ThreadSanitizer|AddressSanitizer|LeakSanitizer|emulation fault/.test(run.stderr);
  expect(clean ? 'clean' : explain(name, run)).toBe('clean');
}

function tuckerShapes(stdout: string): number {
  const shapes = new Set<string>();
  for (const match of stdout.matchAll(/^PASS tucker(?:Reconstruct|ScaleGrad) (modes .*?\])(?: ranks (.*?\]))?/gm)) {
    shapes.add(`${match[1]} ${match[2] ?? ''}`);
  }
  return shapes.size;
}

/** Barrier sites (file:line) from a run with --barriers. */
function barrierSites(stdout: string): string[] {
  return [...stdout.matchAll(/^BARRIER (\S+) \d+$/gm)].map((match) => match[1]);
}

let sites: string[] = [];

describe('CUDA kernels on the host emulation', () => {
  it('the native test targets are built alongside the addon', () => {
    for (const name of [planTests, asan, tsan]) {
      if (unavailable[name]) continue;
      expect(fs.existsSync(executable(name)) ? name : `${name} missing: run \`npm run build:native\``).toBe(name);
    }
  });

  it('the fused planner keeps its invariants', async () => {
    const run = await runNative(executable(planTests), [], {}, 5 * minutes);
    expectClean(planTests, run);
    expect(summary(run.stdout)?.passed ?? 0).toBeGreaterThan(10_000);
  });

  emulationIt(
    'every kernel matches the CPU backend under AddressSanitizer and ThreadSanitizer',
    async () => {
      const [asanRun, tsanRun] = await Promise.all([
        runNative(executable(asan), ['--barriers'], env, 10 * minutes),
        runNative(executable(tsan), [], env, 10 * minutes),
      ]);
      expectClean(asan, asanRun);
      expectClean(tsan, tsanRun);
      for (const run of [asanRun, tsanRun]) {
        expect(run.stdout).toMatch(/^PASS plan walk reaches every fused plan feature: /m);
      }
      sites = barrierSites(asanRun.stdout);
      const walk = (run: NativeRun): string => /^PASS plan walk [^:]*: (.*)$/m.exec(run.stdout)?.[1] ?? '';
      console.log(
        `emulation: AddressSanitizer ${summary(asanRun.stdout)?.passed} checks, ${tuckerShapes(asanRun.stdout)} ` +
          `Tucker shapes, plan walk ${walk(asanRun)}, ${asanRun.seconds.toFixed(0)} s; ThreadSanitizer ` +
          `${summary(tsanRun.stdout)?.passed} checks, ${tuckerShapes(tsanRun.stdout)} Tucker shapes, plan walk ` +
          `${walk(tsanRun)}, ${tsanRun.seconds.toFixed(0)} s; ${sites.length} barrier sites`,
      );
      expect(tuckerShapes(asanRun.stdout)).toBeGreaterThanOrEqual(200);
    },
    20 * minutes,
  );

  emulationIt(
    'removing any one __syncthreads makes it fail (negative controls)',
    async () => {
      expect(sites.length).toBeGreaterThanOrEqual(15);
      // The small grid-stride group reaches every barrier the full run reached.
      const reach = await runNative(executable(asan), ['--only', 'grid', '--barriers'], env, 5 * minutes);
      expectClean(`${asan} --only grid`, reach);
      expect(barrierSites(reach.stdout).sort()).toEqual([...sites].sort());
      // AddressSanitizer's run sees wrong values; when they happen to come out
      // right, ThreadSanitizer must report the race.
      const caught = async (site: string): Promise<string> => {
        const drop = { ...env, TERA_EMULATION_DROP_BARRIER: site };
        for (const name of [asan, tsan]) {
          const run = await runNative(executable(name), ['--only', 'grid'], drop, 5 * minutes);
          if (run.status !== 0) return `${site}: caught by ${name} (${explain(name, run).split('\n')[0]})`;
        }
        return `${site}: NOT CAUGHT`;
      };
      const results: string[] = [];
      const queue = [...sites];
      const worker = async (): Promise<void> => {
        for (let site = queue.shift(); site !== undefined; site = queue.shift()) results.push(await caught(site));
      };
      await Promise.all([worker(), worker()]);
      console.log(`negative controls:\n${results.sort().join('\n')}`);
      expect(results.filter((line) => line.endsWith('NOT CAUGHT'))).toEqual([]);
    },
    20 * minutes,
  );
});
