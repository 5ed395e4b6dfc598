/**
 * Ending a worker thread that uses the addon must never take the process down.
 * Each scenario runs in a child process (so an abort is seen as a signal rather
 * than killing jest) and repeats the race enough times that the intermittent
 * cases show: before the fix, node-addon-api re-threw an Error it could not
 * raise in a terminating environment and std::terminate aborted the process.
 */
import { spawnSync } from 'node:child_process';

import { addon } from '../lib/native/loader';

const addonPath = addon().path;

/** Runs `script` in a fresh node; it finds the addon at process.env.ADDON. */
function runChild(script: string, timeout = 60000) {
  const run = spawnSync(process.execPath, ['-e', script], {
    encoding: 'utf8',
    timeout,
    env: { ...process.env, ADDON: addonPath },
  });
  return { status: run.status, signal: run.signal, stdout: run.stdout, stderr: run.stderr, error: run.error };
}

/** Worker body: sets up storages, then does `work` (a statement list) after posting 'ready'. */
function workerSource(work: string): string {
  return `
    const { parentPort } = require('node:worker_threads');
    const b = require(process.env.ADDON);
    const n = 256;
    const a = new b.Storage(n * n, 'cpu'), c = new b.Storage(n * n, 'cpu');
    parentPort.postMessage('ready');
    ${work}
  `;
}

/** A main script that starts `workers` workers one after the other and applies `end` to each. */
function mainSource(worker: string, workers: number, end: string): string {
  return `
    const { Worker } = require('node:worker_threads');
    const source = ${JSON.stringify(worker)};
    (async () => {
      for (let i = 0; i < ${workers}; i++) {
        const w = new Worker(source, { eval: true });
        const exited = new Promise((resolve) => w.once('exit', resolve));
        w.on('error', () => {});
        await new Promise((resolve) => w.once('message', resolve));
        ${end}
        await exited;
      }
      console.log('survived');
    })();
  `;
}

const asyncKernels = `
  for (let i = 0; i < 8; i++) {
    const out = new b.Storage(n * n, 'cpu');
    b.gemmAsync(false, false, n, n, n, 1, a, c, 0, out).then(() => out.release(), () => {});
  }
`;

function expectSurvived(run: ReturnType<typeof runChild>): void {
  expect(run.error).toBeUndefined();
  expect(run.stderr).not.toMatch(/terminate called|FATAL ERROR|Aborted/);
  expect({ signal: run.signal, status: run.status }).toEqual({ signal: null, status: 0 });
}

describe('worker threads using the addon can end at any time', () => {
  it('worker.terminate() with asynchronous kernels pending', () => {
    const run = runChild(mainSource(workerSource(asyncKernels), 25, 'await w.terminate();'));
    expectSurvived(run);
    expect(run.stdout).toContain('survived');
  });

  it('process.exit() inside a worker with asynchronous kernels pending', () => {
    const run = runChild(mainSource(workerSource(`${asyncKernels} setImmediate(() => process.exit(0));`), 25, ''));
    expectSurvived(run);
    expect(run.stdout).toContain('survived');
  });

  it('termination in the middle of synchronous kernels, reads and allocations', () => {
    const busy = `
      for (let i = 0; ; i++) {
        const out = new b.Storage(n * n, 'cpu');
        b.gemm(false, false, n, n, n, 1, a, c, 0, out);
        out.read();
        out.release();
        b.randomFill(a, 'normal', BigInt(i), 0n, 0, 1);
        try { b.fill(null, 0); } catch {}
      }
    `;
    const end = 'await new Promise((r) => setTimeout(r, Math.random() * 15)); await w.terminate();';
    const run = runChild(mainSource(workerSource(busy), 60, end));
    expectSurvived(run);
    expect(run.stdout).toContain('survived');
  });

  it('the main thread exits while a worker awaits kernels', () => {
    const worker = workerSource(`
      const big = 1024, x = new b.Storage(big * big, 'cpu');
      for (let i = 0; i < 4; i++) {
        const out = new b.Storage(big * big, 'cpu');
        b.gemmAsync(false, false, big, big, big, 1, x, x, 0, out).then(() => out.release());
      }
    `);
    const main = `
      const { Worker } = require('node:worker_threads');
      const w = new Worker(${JSON.stringify(worker)}, { eval: true });
      w.once('message', () => setTimeout(() => process.exit(0), Math.random() * 20));
    `;
    for (let attempt = 0; attempt < 5; attempt++) expectSurvived(runChild(main));
  });
});
