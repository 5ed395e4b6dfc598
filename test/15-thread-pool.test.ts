/**
 * The CPU thread pool: TERA_NUM_THREADS is parsed strictly and bounded, and a
 * failure to start threads leaves the pool as it was and usable. Each case runs
 * the addon in a child process, so the environment variable is read afresh and
 * a hang or an abort shows as a timeout or a signal instead of stalling jest.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { getNumThreads, setNumThreads } from '../lib';
import { addon } from '../lib/native/loader';

interface ChildOptions {
  env?: Record<string, string>;
  preload?: string;
}

/** Runs `script` with the addon as `b`; the script prints one JSON line. */
function runChild(script: string, options: ChildOptions = {}) {
  const env: Record<string, string | undefined> = { ...process.env, ADDON: addon().path, ...options.env };
  if (options.preload) env.LD_PRELOAD = options.preload;
  const run = spawnSync(process.execPath, ['-e', `const b = require(process.env.ADDON);\n${script}`], {
    encoding: 'utf8',
    timeout: 60000,
    env,
  });
  expect(run.error).toBeUndefined();
  expect({ signal: run.signal, status: run.status, stderr: run.stderr }).toEqual({
    signal: null,
    status: 0,
    stderr: '',
  });
  return JSON.parse(run.stdout.trim().split('\n').pop() ?? '') as Record<string, unknown>;
}

const probe = `
  const attempt = (f) => { try { return { value: f() }; } catch (e) { return { error: e.message }; } };
  const big = new b.Storage(1 << 20, 'cpu');
  console.log(JSON.stringify({
    threads: attempt(() => b.getNumThreads()),
    info: attempt(() => b.backendInfo().cpu.defaultThreads),
    kernel: attempt(() => { b.fill(big, 2); return b.sum(big); }),
  }));
`;

describe('TERA_NUM_THREADS', () => {
  it.each(['99999999999', '1e9', 'abc', '0', '-1', '2.5', ' 3', '3 ', '1025'])(
    'refuses %j with a message naming it, at every use, without aborting',
    (value) => {
      const result = runChild(probe, { env: { TERA_NUM_THREADS: value } });
      const message = `TERA_NUM_THREADS='${value}' is not an integer in [1, 1024]; set it to a thread count or unset it`;
      expect(result).toEqual({ threads: { error: message }, info: { error: message }, kernel: { error: message } });
    },
  );

  it('accepts an integer in range, and the default when unset or empty', () => {
    expect(runChild(probe, { env: { TERA_NUM_THREADS: '3' } })).toEqual({
      threads: { value: 3 },
      info: { value: 3 },
      kernel: { value: 2 * (1 << 20) },
    });
    const cores = os.availableParallelism();
    expect(runChild(probe, { env: { TERA_NUM_THREADS: '' } })).toEqual({
      threads: { value: cores },
      info: { value: cores },
      kernel: { value: 2 * (1 << 20) },
    });
  });
});

describe('setNumThreads when threads cannot be started', () => {
  let shim: string;

  beforeAll(() => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-threads-'));
    shim = path.join(dir, 'fail-pthread-create.so');
    const source = path.join(__dirname, 'helpers', 'fail-pthread-create.c');
    const build = spawnSync('cc', ['-shared', '-fPIC', '-O2', '-o', shim, source, '-ldl'], { encoding: 'utf8' });
    expect({ status: build.status, stderr: build.stderr }).toEqual({ status: 0, stderr: '' });
  });

  it('throws, keeps the previous threads, and the next parallel kernels still run', () => {
    const result = runChild(
      `
      const big = new b.Storage(1 << 22, 'cpu');
      b.setNumThreads(2);
      process.env.FAIL_PTHREAD_CREATE_AFTER = '2';
      let message = '';
      try { b.setNumThreads(8); } catch (e) { message = e.message; }
      delete process.env.FAIL_PTHREAD_CREATE_AFTER;
      const after = b.getNumThreads();
      b.fill(big, 3);
      const sum = b.sum(big);
      b.setNumThreads(5);
      const later = b.getNumThreads();
      b.fill(big, 2);
      console.log(JSON.stringify({ message, after, sum, later, sum2: b.sum(big) }));
      `,
      { preload: shim },
    );
    expect(result.message).toMatch(/^could not start CPU thread 5 of 8 \(.+\); still using 2 threads$/);
    expect(result).toMatchObject({ after: 2, sum: 3 * (1 << 22), later: 5, sum2: 2 * (1 << 22) });
  });

  it('refuses counts outside [0, 1024] before touching the pool', () => {
    const result = runChild(`
      const attempt = (n) => { try { b.setNumThreads(n); return 'accepted'; } catch (e) { return e.message; } };
      console.log(JSON.stringify({ results: [1e10, -1, 2.5, NaN, 1025].map(attempt), threads: b.getNumThreads() }));
    `);
    const cores = os.availableParallelism();
    expect(result.threads).toBe(cores);
    for (const message of result.results as string[]) {
      expect(message).toMatch(/^setNumThreads: .+ is not an integer in \[0, 1024\] \(0 restores the default\)$/);
    }
  });
});

describe('setNumThreads in TypeScript', () => {
  it('refuses what the native pool would, before crossing into C++', () => {
    const before = getNumThreads();
    for (const n of [1e10, -1, 2.5, NaN, 1025, '2' as unknown as number]) {
      expect(() => setNumThreads(n)).toThrow(
        /^setNumThreads: .+ is not an integer in \[0, 1024\] \(0 restores the default\)$/,
      );
    }
    expect(getNumThreads()).toBe(before);
  });
});
