import * as tera from '../lib';

describe('native addon', () => {
  it('loads and reports its backends', () => {
    const info = tera.backendInfo();
    expect(info.cpu.threads).toBeGreaterThanOrEqual(1);
    expect(info.cpu.blas).toMatch(/OpenBLAS/);
    expect(typeof info.cuda.available).toBe('boolean');
    if (!info.cuda.available) expect(info.cuda.reason).toBeTruthy();
    expect(info.addon).toMatch(/\.node$/);
  });
});
