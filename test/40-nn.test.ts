/**
 * nn: module trees and names, PyTorch-style initialisation, forward against a
 * float64 reference, state dicts and safetensors loading that refuse
 * mismatches without touching the model.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import * as tera from '../lib';
import { autograd as ag, io, nn } from '../lib';
import { gemm as gemm64, randomArray, rng } from './helpers/reference';

const next = rng(40);

function snapshot(model: tera.nn.Module): Record<string, number[]> {
  return Object.fromEntries(model.namedParameters().map(([n, p]) => [n, Array.from(p.toFloat32Array())]));
}

describe('Module trees', () => {
  it('names children and parameters as PyTorch does', () => {
    const mlp = new nn.MLP([4, 6, 3], { seed: 1 });
    expect(mlp.namedModules().map(([n, m]) => [n, m.constructor.name])).toEqual([
      ['', 'MLP'],
      ['0', 'Linear'],
      ['1', 'ReLU'],
      ['2', 'Linear'],
    ]);
    expect(mlp.namedParameters().map(([n, p]) => [n, p.shape])).toEqual([
      ['0.weight', [6, 4]],
      ['0.bias', [6]],
      ['2.weight', [3, 6]],
      ['2.bias', [3]],
    ]);
    expect(mlp.numParameters()).toBe(6 * 4 + 6 + 3 * 6 + 3);
    expect(mlp.toString()).toContain('(2): Linear(inFeatures=6, outFeatures=3, bias=true)');
  });

  it('finds, replaces and reports submodules by dotted path', () => {
    const outer = new nn.Sequential(new nn.MLP([2, 3, 2], { seed: 2 }), new nn.Tanh());
    expect(outer.getSubmodule('0.2')).toBeInstanceOf(nn.Linear);
    expect(() => outer.getSubmodule('0.7')).toThrow(/no submodule '0.7'; modules: 0, 0.0, 0.1, 0.2, 1/);
    const replacement = new nn.Linear(3, 2, { seed: 3 });
    outer.setSubmodule('0.2', replacement);
    expect(outer.getSubmodule('0.2')).toBe(replacement);
    expect(() => outer.setSubmodule('0.9', replacement)).toThrow(/no submodule '0.9'/);
  });

  it('freezes and unfreezes', () => {
    const mlp = new nn.MLP([2, 2, 2], { seed: 4 });
    expect(mlp.trainableParameters()).toHaveLength(4);
    mlp.requiresGrad(false);
    expect(mlp.numParameters({ trainableOnly: true })).toBe(0);
    mlp.requiresGrad(true);
    expect(mlp.trainableParameters()).toHaveLength(4);
  });
});

describe('Linear initialisation', () => {
  it('draws weights and biases from Uniform(-1/sqrt(in), 1/sqrt(in)), reproducibly', () => {
    const a = new nn.Linear(64, 32, { seed: 7 });
    const b = new nn.Linear(64, 32, { seed: 7 });
    const c = new nn.Linear(64, 32, { seed: 8 });
    const w = a.weight.toFloat32Array();
    const bound = 1 / 8;
    expect(w.every((v) => v >= -bound && v < bound)).toBe(true);
    // A uniform on [-1/8, 1/8) has standard deviation 1/(8 sqrt 3) ~ 0.0722.
    const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
    expect(std).toBeGreaterThan(0.066);
    expect(std).toBeLessThan(0.078);
    expect(Array.from(b.weight.toFloat32Array())).toEqual(Array.from(w));
    expect(Array.from(c.weight.toFloat32Array())).not.toEqual(Array.from(w));
    expect(Array.from(a.bias!.toFloat32Array())).not.toEqual(Array.from(w.subarray(0, 32)));
  });

  it('uses successive streams of the global seed when none is given', () => {
    nn.manualSeed(123);
    const first = [new nn.Linear(3, 3), new nn.Linear(3, 3)].map((l) => Array.from(l.weight.toFloat32Array()));
    nn.manualSeed(123);
    const again = [new nn.Linear(3, 3), new nn.Linear(3, 3)].map((l) => Array.from(l.weight.toFloat32Array()));
    expect(again).toEqual(first);
    expect(first[0]).not.toEqual(first[1]);
  });
});

describe('forward', () => {
  it('matches a float64 reference MLP and back-propagates into every parameter', () => {
    const mlp = new nn.MLP([5, 7, 3], { seed: 9, activation: 'tanh' });
    const x = randomArray(4 * 5, next);
    const y = mlp.forward(tera.tensor(x, [4, 5]));
    const [w1, b1, w2, b2] = mlp.parameters().map((p) => Float64Array.from(p.toFloat32Array()));
    const h = gemm64(x, w1, 4, 7, 5, false, true, 1, 0, null).value.map((v, i) => Math.tanh(v + b1[i % 7]));
    const ref = gemm64(h, w2, 4, 3, 7, false, true, 1, 0, null).value.map((v, i) => v + b2[i % 3]);
    const got = y.toFloat32Array();
    ref.forEach((v, i) => expect(Math.abs(got[i] - v)).toBeLessThan(1e-5));
    ag.sum(y).backward();
    for (const p of mlp.parameters()) expect(p.grad).not.toBeNull();
  });
});

describe('state dicts and safetensors', () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-nn-'));
  });
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('round-trips through stateDict / loadStateDict in all three value forms', () => {
    const a = new nn.MLP([3, 4, 2], { seed: 10 });
    const b = new nn.MLP([3, 4, 2], { seed: 11 });
    b.loadStateDict(a.stateDict());
    expect(snapshot(b)).toEqual(snapshot(a));
    const c = new nn.MLP([3, 4, 2], { seed: 12 });
    const arrays = Object.fromEntries(a.namedParameters().map(([n, p]) => [n, p.toFloat32Array()]));
    c.loadStateDict(arrays);
    expect(snapshot(c)).toEqual(snapshot(a));
  });

  it('refuses a wrong shape, a missing or an unexpected key, changing nothing', () => {
    const model = new nn.MLP([3, 4, 2], { seed: 13 });
    const before = snapshot(model);
    const good = Object.fromEntries(model.namedParameters().map(([n, p]) => [n, p.toFloat32Array()]));
    const wrongShape = { ...good, '0.weight': new Float32Array(11).fill(1), '2.bias': new Float32Array(2).fill(5) };
    expect(() => model.loadStateDict(wrongShape)).toThrow(/'0.weight' has 11 values, the model expects \[4, 3\]/);
    const withShape = { ...good, '2.bias': { data: new Float32Array(2).fill(5), shape: [1, 2] } };
    expect(() => model.loadStateDict(withShape)).toThrow(/'2.bias' has shape \[1, 2\], the model expects \[2\]/);
    const missing: Record<string, Float32Array> = { ...good, '0.bias': good['0.bias'] };
    delete missing['2.weight'];
    expect(() => model.loadStateDict(missing)).toThrow(/missing keys: 2.weight/);
    expect(() => model.loadStateDict({ ...good, extra: new Float32Array(1) })).toThrow(/unexpected keys: extra/);
    expect(snapshot(model)).toEqual(before);
    const result = model.loadStateDict({ '0.bias': new Float32Array(4).fill(2) }, { strict: false });
    expect(result.missingKeys).toEqual(['0.weight', '2.weight', '2.bias']);
    expect(Array.from(model.getSubmodule('0').namedParameters()[1][1].toFloat32Array())).toEqual([2, 2, 2, 2]);
  });

  it('loads base weights from a safetensors file and saves them back', () => {
    const source = new nn.MLP([3, 5, 2], { seed: 14 });
    const file = path.join(dir, 'base.safetensors');
    source.saveSafetensors(file, { note: 'base' });
    const parsed = io.readSafetensors(file);
    expect(parsed.metadata).toEqual({ note: 'base' });
    expect(parsed.tensors['0.weight'].shape).toEqual([5, 3]);
    const target = new nn.MLP([3, 5, 2], { seed: 15 });
    target.loadSafetensors(file);
    expect(snapshot(target)).toEqual(snapshot(source));

    const narrow = new nn.MLP([3, 4, 2], { seed: 16 });
    const before = snapshot(narrow);
    expect(() => narrow.loadSafetensors(file)).toThrow(/'0.weight' has shape \[5, 3\], the model expects \[4, 3\]/);
    expect(snapshot(narrow)).toEqual(before);
  });
});
