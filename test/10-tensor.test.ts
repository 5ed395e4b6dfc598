import { types } from 'node:util';

import * as tera from '../lib';

describe('Tensor', () => {
  it('round-trips a Float32Array with its shape on the CPU', () => {
    const data = Float32Array.from([1, 2, 3, 4, 5, 6]);
    const t = tera.tensor(data, [2, 3], { device: 'cpu' });
    expect(t.shape).toEqual([2, 3]);
    expect(t.device).toBe('cpu');
    expect(t.size).toBe(6);
    const back = t.toFloat32Array();
    expect(types.isFloat32Array(back)).toBe(true);
    expect(Array.from(back)).toEqual([1, 2, 3, 4, 5, 6]);
    data[0] = 99;
    expect(t.toFloat32Array()[0]).toBe(1); // tensor() copies
    t.dispose();
  });

  it('makes zeros, ones and filled tensors', () => {
    expect(Array.from(tera.zeros([2, 2]).toFloat32Array())).toEqual([0, 0, 0, 0]);
    expect(Array.from(tera.ones([3]).toFloat32Array())).toEqual([1, 1, 1]);
    expect(Array.from(tera.full([2], -2.5).toFloat32Array())).toEqual([-2.5, -2.5]);
  });

  it('shares memory between reshape views until the last one is disposed', () => {
    const t = tera.tensor(Float32Array.from([1, 2, 3, 4]), [4]);
    const view = t.reshape([2, 2]);
    expect(view.shape).toEqual([2, 2]);
    view.set(Float32Array.from([5, 6, 7, 8]));
    expect(Array.from(t.toFloat32Array())).toEqual([5, 6, 7, 8]);
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(Array.from(view.toFloat32Array())).toEqual([5, 6, 7, 8]);
    view.dispose();
    expect(view.disposed).toBe(true);
    view.dispose(); // idempotent
  });

  it('clones into independent memory', () => {
    const t = tera.tensor(Float32Array.from([1, 2]), [2]);
    const c = t.clone();
    c.set(Float32Array.from([3, 4]));
    expect(Array.from(t.toFloat32Array())).toEqual([1, 2]);
    expect(t.to('cpu')).toBe(t);
  });

  it('refuses data that is not a Float32Array', () => {
    expect(() => tera.tensor([1, 2, 3] as unknown as Float32Array, [3])).toThrow(/needs a Float32Array, got Array/);
    expect(() => tera.tensor(new Float64Array(3) as unknown as Float32Array, [3])).toThrow(/got Float64Array/);
  });

  it('refuses a length that does not match the shape', () => {
    expect(() => tera.tensor(new Float32Array(5), [2, 3])).toThrow(
      /shape \[2, 3\] needs 6 values but the Float32Array has 5/,
    );
    expect(() => tera.tensor(new Float32Array(6), [2, -3])).toThrow(/shape\[1\] is -3/);
    expect(() => tera.tensor(new Float32Array(2), [2.5])).toThrow(/positive integers/);
  });

  it('refuses shapes that overflow', () => {
    expect(() => tera.zeros([2 ** 25, 2 ** 25])).toThrow(/more than 2\^48 elements/);
  });

  it('refuses every use of a disposed tensor with a clear message', () => {
    const t = tera.tensor(new Float32Array(4), [2, 2]);
    t.dispose();
    expect(() => t.toFloat32Array()).toThrow(/has been disposed/);
    expect(() => t.reshape([4])).toThrow(/has been disposed/);
    expect(() => tera.kernels.gemm(t, t)).toThrow(/gemm: a \[2, 2\] has been disposed/);
  });

  it("refuses 'cuda' without a usable GPU and names the reason", () => {
    if (tera.cudaAvailable()) return expect(tera.zeros([1], { device: 'cuda' }).device).toBe('cuda');
    expect(() => tera.zeros([1], { device: 'cuda' })).toThrow(/device 'cuda' was requested but CUDA is unavailable: ./);
    expect(tera.zeros([1], { device: 'auto' }).device).toBe('cpu');
  });

  it('takes its default device from TERA_DEVICE, and rejects unknown names', () => {
    const saved = process.env.TERA_DEVICE;
    try {
      process.env.TERA_DEVICE = 'cpu';
      expect(tera.zeros([1]).device).toBe('cpu');
      process.env.TERA_DEVICE = 'tpu';
      expect(() => tera.zeros([1])).toThrow(/TERA_DEVICE: unknown device "tpu"/);
      expect(() => tera.zeros([1], { device: 'gpu' as 'cuda' })).toThrow(/unknown device "gpu"/);
    } finally {
      if (saved === undefined) delete process.env.TERA_DEVICE;
      else process.env.TERA_DEVICE = saved;
    }
  });

  it('reports its memory to V8 so that undisposed tensors are collected', async () => {
    // 48 x 16 MiB never disposed: without external-memory accounting and finalisers
    // RSS would grow by 768 MiB. N-API runs finalisers between turns of the event
    // loop, so the loop yields as any asynchronous training loop does.
    const before = process.memoryUsage().rss;
    for (let i = 0; i < 48; i++) {
      tera.zeros([4 * 1024 * 1024]);
      await new Promise((resolve) => setImmediate(resolve));
    }
    const grown = process.memoryUsage().rss - before;
    expect(grown).toBeLessThan(400 * 1024 ** 2);
  });
});
