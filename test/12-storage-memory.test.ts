/**
 * Native memory under the garbage collector. CPU storages live in V8
 * ArrayBuffers, so V8 counts them, collects dropped ones under pressure and
 * frees them during garbage collection, without waiting for the event loop.
 * The loops run in child processes so their peak memory is their own.
 */
import { spawnSync } from 'node:child_process';

import { zeros } from '../lib';
import { addon, native } from '../lib/native/loader';

const MiB = 2 ** 20;

/** Runs `script` with the raw addon as `b` and `rss()` in MiB; returns its last line parsed as JSON. */
function runChild(script: string, nodeFlags: string[] = []) {
  const source = `const b = require(process.env.ADDON);
    const rss = () => process.memoryUsage.rss() / ${MiB};
    ${script}`;
  const run = spawnSync(process.execPath, [...nodeFlags, '-e', source], {
    encoding: 'utf8',
    timeout: 120000,
    env: { ...process.env, ADDON: addon().path },
  });
  expect({ signal: run.signal, status: run.status, stderr: run.stderr }).toEqual({
    signal: null,
    status: 0,
    stderr: '',
  });
  return JSON.parse(run.stdout.trim().split('\n').pop() ?? '') as Record<string, number>;
}

describe('CPU storages and V8', () => {
  it('a live 16 MiB tensor is counted as external memory, and dispose() returns it at once', () => {
    // In a child with a collection first: in this process, garbage left by other tests may be
    // collected while the tensor is allocated and lower 'external' by as much as it adds.
    const result = runChild(
      `const external = () => process.memoryUsage().external;
       global.gc();
       const before = external();
       const s = new b.Storage(4 * ${MiB}, 'cpu');
       const live = external() - before;
       s.release();
       console.log(JSON.stringify({ live, afterRelease: external() - before }));`,
      ['--expose-gc'],
    );
    expect(result.live).toBeGreaterThanOrEqual(16 * MiB);
    expect(result.afterRelease).toBeLessThan(MiB);
  });

  it('16 MiB tensors dropped without dispose() in a synchronous loop are collected: RSS stays bounded', () => {
    // 150 tensors of 16 MiB, each written so its pages are resident: 2.4 GiB if none were freed.
    const result = runChild(
      `let peak = 0;
       for (let i = 0; i < 150; i++) {
         const s = new b.Storage(4 * ${MiB}, 'cpu');
         b.fill(s, 1);
         peak = Math.max(peak, rss());
       }
       console.log(JSON.stringify({ peak }));`,
      ['--max-old-space-size=64'],
    );
    expect(result.peak).toBeLessThan(512);
  });

  it.each([1024, 16384])(
    '10,000 storages of %i floats allocated, written and released in a synchronous loop keep RSS flat',
    (length) => {
      const result = runChild(
        `const start = rss();
         for (let i = 0; i < 10000; i++) {
           const s = new b.Storage(${length}, 'cpu');
           b.fill(s, 1);
           s.release();
         }
         console.log(JSON.stringify({ growth: rss() - start }));`,
      );
      expect(result.growth).toBeLessThan(24);
    },
  );

  it('an allocation beyond the machine is refused with an error, and the process goes on', () => {
    const b = native();
    expect(() => new b.Storage(2 ** 48, 'cpu')).toThrow(
      /^out of host memory allocating a tensor of 281474976710656 floats \(\d+ bytes\): /,
    );
    expect(() => zeros([2 ** 24, 2 ** 24])).toThrow(/out of host memory/);
    expect(zeros([3]).toFloat32Array()).toEqual(new Float32Array(3));
  });

  it('an uninitialized storage has its length and takes writes like any other', () => {
    const b = native();
    const s = new b.Storage(5, 'cpu', true);
    expect([s.length, s.device, s.disposed, s.refCount]).toEqual([5, 'cpu', false, 1]);
    s.write(Float32Array.of(1, 2, 3, 4, 5));
    expect(Array.from(s.read())).toEqual([1, 2, 3, 4, 5]);
    s.release();
    expect(s.disposed).toBe(true);
    expect(() => new b.Storage(5, 'cpu', 'yes' as unknown as boolean)).toThrow(
      /Storage\(length, device, uninitialized\?\) takes a number, 'cpu' or 'cuda', and a boolean/,
    );
  });
});
