import * as tera from '../lib';

describe('Philox4x32-10', () => {
  // Random123's tests/kat_vectors, the three philox4x32 10-round lines.
  it.each([
    [
      [0, 0, 0, 0],
      [0, 0],
      [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
    ],
    [
      [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
      [0xffffffff, 0xffffffff],
      [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
    ],
    [
      [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
      [0xa4093822, 0x299f31d0],
      [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
    ],
  ])('matches the Random123 known answer for counter %j, key %j', (counter, key, expected) => {
    expect(tera.random.philox4x32(counter, key)).toEqual(expected);
  });
});

describe('random fills', () => {
  afterAll(() => tera.setNumThreads(0));

  it('derive element k from Philox(counter = (k, key), key = seed)', () => {
    // Uniform element k = top 24 bits of word 0 of the block for counter (k_lo, k_hi, key_lo, key_hi).
    const seed = 0x0123456789abcdefn;
    const key = 5n;
    const values = tera.random.uniform([4], { seed, key }).toFloat32Array();
    for (let k = 0; k < 4; k++) {
      const block = tera.random.philox4x32([k, 0, 5, 0], [0x89abcdef, 0x01234567]);
      expect(values[k]).toBe((block[0] >>> 8) / 2 ** 24);
    }
  });

  it('are identical whatever the thread count', () => {
    const shape = [300, 301]; // large enough to be split across threads
    tera.setNumThreads(1);
    const one = tera.random.normal(shape, { seed: 42, key: 3 }).toFloat32Array();
    tera.setNumThreads(2);
    const two = tera.random.normal(shape, { seed: 42, key: 3 }).toFloat32Array();
    expect(Buffer.from(two.buffer).equals(Buffer.from(one.buffer))).toBe(true);
  });

  it('differ between keys and seeds', () => {
    const a = tera.random.normal([8], { seed: 1, key: 0 }).toFloat32Array();
    const b = tera.random.normal([8], { seed: 1, key: 1 }).toFloat32Array();
    const c = tera.random.normal([8], { seed: 2, key: 0 }).toFloat32Array();
    expect(a).not.toEqual(b);
    expect(a).not.toEqual(c);
  });

  it('have the requested moments and range', () => {
    const n = 200000;
    const normal = tera.random.normal([n], { seed: 7, mean: 2, std: 3 }).toFloat32Array();
    const mean = normal.reduce((s, v) => s + v, 0) / n;
    const variance = normal.reduce((s, v) => s + (v - mean) ** 2, 0) / n;
    // Standard errors: 3 / sqrt(n) = 0.0067 for the mean, ~0.028 for the variance of 9.
    expect(Math.abs(mean - 2)).toBeLessThan(0.03);
    expect(Math.abs(variance - 9)).toBeLessThan(0.15);
    const within = normal.filter((v) => Math.abs(v - 2) < 3).length / n;
    expect(Math.abs(within - 0.6827)).toBeLessThan(0.005);

    const uniform = tera.random.uniform([n], { seed: 7, low: -1, high: 3 }).toFloat32Array();
    expect(Math.min(...uniform.subarray(0, 50000))).toBeGreaterThanOrEqual(-1);
    expect(Math.max(...uniform.subarray(0, 50000))).toBeLessThan(3);
    expect(Math.abs(uniform.reduce((s, v) => s + v, 0) / n - 1)).toBeLessThan(0.01);
  });

  it('refuses bad seeds and keys', () => {
    expect(() => tera.random.normal([2], { seed: -1 })).toThrow(/seed must be a non-negative safe integer/);
    expect(() => tera.random.normal([2], { seed: 1n << 64n })).toThrow(/seed must be an unsigned 64-bit integer/);
    expect(() => tera.random.uniform([2], { seed: 1, key: 0.5 })).toThrow(/key must be a non-negative safe integer/);
  });
});
