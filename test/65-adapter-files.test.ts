/**
 * Adapter files: the saved safetensors file parsed here byte by byte (not with
 * the library's reader), PEFT's key names and config fields, save -> load into
 * a fresh model reproducing the outputs, and every kind of bad file refused
 * with the model left exactly as it was.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import * as tera from '../lib';
import { adapters, io, nn } from '../lib';
import { INPUT_FEATURES, adapterVersion, baseModel as baseWriterModel } from './helpers/adapter-writer';
import { METHOD_CASES } from './helpers/methods';
import { randomArray, rng } from './helpers/reference';
import { expectAllClose } from './helpers/tolerance';

const next = rng(65);
let root: string;
let counter = 0;
beforeAll(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-adapter-files-'));
});
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
const freshDir = () => path.join(root, `adapter-${counter++}`);

interface ParsedTensor {
  dtype: string;
  shape: number[];
  values: number[];
}

/** An independent safetensors parser: u64 LE header size, JSON header, raw little-endian data. */
function parseFile(file: string): { tensors: Record<string, ParsedTensor>; metadata: unknown } {
  const bytes = fs.readFileSync(file);
  const headerSize = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerSize).toString('utf8'));
  const data = bytes.subarray(8 + headerSize);
  const tensors: Record<string, ParsedTensor> = {};
  let covered = 0;
  const entries = Object.entries(header).filter(([k]) => k !== '__metadata__') as [string, any][]; // eslint-disable-line @typescript-eslint/no-explicit-any
  entries.sort((a, b) => a[1].data_offsets[0] - b[1].data_offsets[0]);
  for (const [name, info] of entries) {
    const [begin, end] = info.data_offsets;
    expect(begin).toBe(covered); // contiguous, no gaps
    covered = end;
    const values: number[] = [];
    for (let o = begin; o < end; o += 4) values.push(data.readFloatLE(o));
    expect(values.length).toBe(info.shape.reduce((a: number, b: number) => a * b, 1));
    tensors[name] = { dtype: info.dtype, shape: info.shape, values };
  }
  expect(covered).toBe(data.length);
  return { tensors, metadata: header.__metadata__ };
}

function baseModel(): tera.nn.MLP {
  return new nn.MLP([12, 16, 6], { seed: 65, activation: 'gelu' });
}

/** Everything a failed load must not change: module types, parameter names and values, shared buffers. */
function fingerprint(model: tera.nn.Module): string {
  return JSON.stringify({
    modules: model.namedModules().map(([n, m]) => [n, m.toString()]),
    params: model.namedParameters().map(([n, p]) => [n, p.requiresGrad, Array.from(p.toFloat32Array())]),
    factors: adapters.sharedFactorCount(),
    workspaces: adapters.workspaceCount(),
  });
}

const x = tera.tensor(randomArray(4 * 12, next), [4, 12]);

/** A model with a trained-looking adapter (random values) saved to a fresh directory. */
function savedAdapter(config: tera.adapters.AdapterConfig): {
  dir: string;
  peft: tera.PeftModel;
  output: Float32Array;
} {
  const peft = tera.injectAdapter(baseModel(), config);
  for (const p of peft.trainableParameters()) p.data.set(randomArray(p.size, next));
  const dir = freshDir();
  tera.saveAdapter(peft, dir);
  return { dir, peft, output: peft.forward(x).toFloat32Array() };
}

describe('saving', () => {
  it('writes a valid safetensors file with PEFT key names, holding only the vectors for TeRA', () => {
    const { dir, peft } = savedAdapter(new tera.TeraConfig({ targetModules: ['0', '2'], alpha: 2, seed: 7 }));
    expect(fs.readdirSync(dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    const { tensors, metadata } = parseFile(path.join(dir, 'adapter_model.safetensors'));
    // The config file's digest (first 128 bits of its SHA-256), so a mixed pair of files is detected.
    const configBytes = fs.readFileSync(path.join(dir, 'adapter_config.json'));
    const digest = createHash('sha256').update(configBytes).digest().subarray(0, 16).toString('base64url');
    expect(metadata).toEqual({ format: 'pt', 'tera_peft.config_digest': digest });
    // 16 = 16 and 12 = 12 (one mode each); 6 = [6]: ranks are the modes.
    expect(Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, [t.dtype, t.shape]]))).toEqual({
      'base_model.model.0.tera_lambda_1': ['F32', [16]],
      'base_model.model.0.tera_lambda_2': ['F32', [12]],
      'base_model.model.2.tera_lambda_1': ['F32', [6]],
      'base_model.model.2.tera_lambda_2': ['F32', [16]],
    });
    const lambda = peft.namedParameters().find(([n]) => n === '2.tera_lambda_2.default')![1];
    expect(tensors['base_model.model.2.tera_lambda_2'].values).toEqual(Array.from(lambda.toFloat32Array()));
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'))).toEqual({
      peft_type: 'TERA',
      target_modules: ['0', '2'],
      exclude_modules: null,
      base_model_name_or_path: null,
      task_type: null,
      inference_mode: true,
      max_mode_size: 128,
      max_rank: 128,
      out_modes: null,
      in_modes: null,
      ranks: null,
      alpha: 2,
      seed: 7,
      evaluation: 'auto',
      save_factors: false,
    });
    peft.unload();
  });

  it('stores a TeRA adapter of a 4096 x 4096 layer in 1 KiB of tensor data', () => {
    const peft = tera.injectAdapter(
      new nn.Sequential(new nn.Linear(4096, 4096, { seed: 1 })),
      new tera.TeraConfig({ targetModules: ['0'] }),
    );
    const dir = freshDir();
    const { weightsPath } = tera.saveAdapter(peft, dir);
    const { tensors } = parseFile(weightsPath);
    expect(Object.values(tensors).map((t) => t.shape)).toEqual([[64], [64], [64], [64]]);
    const headerSize = Number(fs.readFileSync(weightsPath).readBigUInt64LE(0));
    expect(fs.statSync(weightsPath).size - 8 - headerSize).toBe(4 * 64 * 4);
    expect(fs.statSync(weightsPath).size).toBeLessThan(2048);
    peft.unload();
  });

  it('writes LoRA and VeRA keys as PEFT does, and the frozen tensors only when asked', () => {
    const lora = savedAdapter(new tera.LoraConfig({ targetModules: ['2'], r: 3, alpha: 6 }));
    const loraFile = parseFile(path.join(lora.dir, 'adapter_model.safetensors'));
    expect(Object.entries(loraFile.tensors).map(([k, t]) => [k, t.shape])).toEqual([
      ['base_model.model.2.lora_A.weight', [3, 16]],
      ['base_model.model.2.lora_B.weight', [6, 3]],
    ]);
    const loraConfig = JSON.parse(fs.readFileSync(path.join(lora.dir, 'adapter_config.json'), 'utf8'));
    expect([loraConfig.peft_type, loraConfig.r, loraConfig.lora_alpha]).toEqual(['LORA', 3, 6]);

    const vera = savedAdapter(new tera.VeraConfig({ targetModules: ['0', '2'], r: 5, saveProjection: true }));
    const veraFile = parseFile(path.join(vera.dir, 'adapter_model.safetensors'));
    expect(Object.entries(veraFile.tensors).map(([k, t]) => [k, t.shape])).toEqual([
      ['base_model.model.0.vera_lambda_b', [16]],
      ['base_model.model.0.vera_lambda_d', [5]],
      ['base_model.model.2.vera_lambda_b', [6]],
      ['base_model.model.2.vera_lambda_d', [5]],
      ['base_model.vera_A', [5, 16]],
      ['base_model.vera_B', [16, 5]],
    ]);
    const veraConfig = JSON.parse(fs.readFileSync(path.join(vera.dir, 'adapter_config.json'), 'utf8'));
    expect([veraConfig.peft_type, veraConfig.save_projection, veraConfig.d_initial]).toEqual(['VERA', true, 0.1]);

    const teraFactors = savedAdapter(new tera.TeraConfig({ targetModules: ['2'], saveFactors: true }));
    const teraFile = parseFile(path.join(teraFactors.dir, 'adapter_model.safetensors'));
    expect(Object.entries(teraFile.tensors).map(([k, t]) => [k, t.shape])).toEqual([
      ['base_model.model.2.tera_lambda_1', [6]],
      ['base_model.model.2.tera_lambda_2', [16]],
      ['base_model.tera_core.6_16_r6x16', [6, 16]],
      ['base_model.tera_factor_1.6_16_r6x16', [6, 6]],
      ['base_model.tera_factor_2.6_16_r6x16', [16, 16]],
    ]);
    [lora, vera, teraFactors].forEach(({ peft }) => peft.unload());
  });

  it('replaces an earlier save atomically and leaves no temporary files', () => {
    const first = savedAdapter(new tera.LoraConfig({ targetModules: ['0'] }));
    for (const p of first.peft.trainableParameters()) p.data.set(randomArray(p.size, next));
    tera.saveAdapter(first.peft, first.dir);
    expect(fs.readdirSync(first.dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    const loaded = tera.loadAdapter(baseModel(), first.dir);
    expect(loaded.forward(x).toFloat32Array()).toEqual(first.peft.forward(x).toFloat32Array());
    expect(() => tera.saveAdapter(first.peft, first.dir, { adapterName: 'other' })).toThrow(
      /no adapter named 'other'; adapters: default/,
    );
    [first.peft, loaded].forEach((p) => p.unload());
  });
});

describe('loading', () => {
  for (const method of METHOD_CASES) {
    it(`${method.name}: save -> load into a fresh model reproduces the outputs (list and regex targets)`, () => {
      for (const targets of [['0', '2'], '[02]']) {
        const saved = savedAdapter(method.config(targets));
        const fresh = baseModel();
        expect(fresh.forward(x).toFloat32Array()).not.toEqual(saved.output);
        const loaded = tera.loadAdapter(fresh, saved.dir);
        expect(loaded.forward(x).toFloat32Array()).toEqual(saved.output);
        expect(loaded.trainableParameters()).toHaveLength(0); // loaded for inference, as PEFT's default
        const trainable = tera.loadAdapter(baseModel(), saved.dir, { adapterName: 'tuned', isTrainable: true });
        expect(trainable.activeAdapter).toBe('tuned');
        expect(trainable.trainableParameters().length).toBe(saved.peft.trainableParameters().length);
        [saved.peft, loaded, trainable].forEach((p) => p.unload());
      }
    });
  }

  it('adds a loaded adapter next to an existing one without switching to it', () => {
    const saved = savedAdapter(new tera.LoraConfig({ targetModules: ['0'] }));
    const peft = tera.injectAdapter(baseModel(), new tera.TeraConfig({ targetModules: ['0'] }));
    tera.loadAdapter(peft, saved.dir, { adapterName: 'lora' });
    expect(peft.adapterNames).toEqual(['default', 'lora']);
    expect(peft.activeAdapter).toBe('default');
    peft.setAdapter('lora');
    expect(peft.forward(x).toFloat32Array()).toEqual(saved.output);
    [saved.peft, peft].forEach((p) => p.unload());
  });
});

describe('refusing bad files, model unchanged', () => {
  /** Copies a saved adapter directory so each case can damage its own copy. */
  function copyOf(dir: string): string {
    const copy = freshDir();
    fs.cpSync(dir, copy, { recursive: true });
    return copy;
  }

  function rewriteTensors(
    dir: string,
    edit: (tensors: Record<string, { data: Float32Array; shape: number[] }>, metadata: Record<string, string>) => void,
  ) {
    const file = path.join(dir, 'adapter_model.safetensors');
    const { tensors, metadata } = io.readSafetensors(file);
    const plain = Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, { data: t.data, shape: t.shape }]));
    edit(plain, metadata);
    io.writeSafetensors(file, plain, metadata);
  }

  /** Digest of a config file as saveAdapter stamps it into the weights' metadata. */
  function digestOf(file: string): string {
    return createHash('sha256').update(fs.readFileSync(file)).digest().subarray(0, 16).toString('base64url');
  }

  /**
   * Edits the config. By default the weights are re-stamped with the edited
   * config's digest, as if both had been saved together, so that the check under
   * test is the one that fires; `restamp: false` leaves a hand-edited config.
   */
  function editConfig(dir: string, edit: (json: Record<string, unknown>) => void, restamp = true): void {
    const file = path.join(dir, 'adapter_config.json');
    const json = JSON.parse(fs.readFileSync(file, 'utf8'));
    edit(json);
    fs.writeFileSync(file, JSON.stringify(json));
    if (restamp) rewriteTensors(dir, (_, metadata) => (metadata['tera_peft.config_digest'] = digestOf(file)));
  }

  /** Replaces a tensor's header entry, keeping the byte layout, so only our checks can catch it. */
  function editHeader(dir: string, key: string, change: (info: { dtype: string; shape: number[] }) => void): void {
    const file = path.join(dir, 'adapter_model.safetensors');
    const bytes = fs.readFileSync(file);
    const size = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + size).toString('utf8'));
    change(header[key]);
    let text = JSON.stringify(header);
    text += ' '.repeat((8 - (text.length % 8)) % 8);
    const length = Buffer.alloc(8);
    length.writeBigUInt64LE(BigInt(text.length));
    fs.writeFileSync(file, Buffer.concat([length, Buffer.from(text), bytes.subarray(8 + size)]));
  }

  let lora: { dir: string; peft: tera.PeftModel };
  let teraSaved: { dir: string; peft: tera.PeftModel };
  beforeAll(() => {
    lora = savedAdapter(new tera.LoraConfig({ targetModules: ['0', '2'], r: 4 }));
    teraSaved = savedAdapter(new tera.TeraConfig({ targetModules: ['0', '2'], saveFactors: true }));
  });
  afterAll(() => [lora.peft, teraSaved.peft].forEach((p) => p.unload()));

  const cases: [string, () => string, RegExp, (() => tera.nn.Module)?][] = [
    [
      'a truncated weights file',
      () => {
        const dir = copyOf(lora.dir);
        const file = path.join(dir, 'adapter_model.safetensors');
        fs.truncateSync(file, fs.statSync(file).size - 10);
        return dir;
      },
      /readSafetensors\(.*\): .* beyond the 790-byte data section/,
    ],
    [
      'a missing weights file',
      () => {
        const dir = copyOf(lora.dir);
        fs.rmSync(path.join(dir, 'adapter_model.safetensors'));
        return dir;
      },
      /cannot read the file/,
    ],
    [
      'a tampered shape in the header',
      () => {
        const dir = copyOf(lora.dir);
        editHeader(dir, 'base_model.model.0.lora_B.weight', (info) => (info.shape = [4, 16]));
        return dir;
      },
      /'base_model.model.0.lora_B.weight' has shape \[4, 16\], this model needs \[16, 4\]/,
    ],
    [
      'a missing and an unexpected tensor',
      () => {
        const dir = copyOf(lora.dir);
        rewriteTensors(dir, (t) => {
          delete t['base_model.model.2.lora_B.weight'];
          t['base_model.model.2.lora_C.weight'] = { data: new Float32Array(2), shape: [2] };
        });
        return dir;
      },
      /missing tensor 'base_model.model.2.lora_B.weight'\n {2}- unexpected tensor 'base_model.model.2.lora_C.weight'/,
    ],
    [
      'a config whose rank disagrees with the tensors',
      () => {
        const dir = copyOf(lora.dir);
        editConfig(dir, (json) => (json.r = 8));
        return dir;
      },
      /'base_model.model.0.lora_A.weight' has shape \[4, 12\], this model needs \[8, 12\]/,
    ],
    [
      'an unknown peft_type',
      () => {
        const dir = copyOf(lora.dir);
        editConfig(dir, (json) => (json.peft_type = 'IA3'));
        return dir;
      },
      /peft_type "IA3"; supported: TERA, VERA, LORA/,
    ],
    [
      'an invalid config value',
      () => {
        const dir = copyOf(lora.dir);
        editConfig(dir, (json) => (json.r = 'four'));
        return dir;
      },
      /LoraConfig: r must be an integer >= 1, got "four"/,
    ],
    [
      'a config that is not JSON',
      () => {
        const dir = copyOf(lora.dir);
        fs.writeFileSync(path.join(dir, 'adapter_config.json'), '{"peft_type": "LORA",');
        return dir;
      },
      /cannot read .*adapter_config.json/,
    ],
    [
      'targets the model does not have',
      () => {
        const dir = copyOf(lora.dir);
        editConfig(dir, (json) => (json.target_modules = ['0', 'fc9']));
        return dir;
      },
      /target module 'fc9' matches no module; the model has: 0 \(Linear\), 1 \(GELU\), 2 \(Linear\)/,
    ],
    [
      'an adapter made for another model',
      () => lora.dir,
      /'base_model.model.0.lora_A.weight' has shape \[4, 12\], this model needs \[4, 10\]/,
      () => new nn.MLP([10, 16, 6], { seed: 65, activation: 'gelu' }),
    ],
    [
      'a stored TeRA factor that differs from its regeneration',
      () => {
        const dir = copyOf(teraSaved.dir);
        rewriteTensors(dir, (t) => (t['base_model.tera_factor_1.16_12_r16x12'].data[5] += 1e-3));
        return dir;
      },
      /'base_model.tera_factor_1.16_12_r16x12' differs from the frozen tensor its seed generates/,
    ],
  ];
  for (const [label, damage, error, makeModel] of cases) {
    it(`refuses ${label}`, () => {
      const dir = damage();
      const model = (makeModel ?? baseModel)();
      const before = fingerprint(model);
      expect(() => tera.loadAdapter(model, dir)).toThrow(error);
      expect(fingerprint(model)).toBe(before);
    });
  }

  it('refuses to load over an adapter name already in use, changing nothing', () => {
    const peft = tera.injectAdapter(baseModel(), new tera.TeraConfig({ targetModules: ['0'] }));
    const before = fingerprint(peft.model);
    expect(() => tera.loadAdapter(peft, lora.dir)).toThrow(/already has an adapter named 'default'/);
    expect(fingerprint(peft.model)).toBe(before);
    peft.unload();
  });
});

/** A gelu MLP's Linear layers in float64 from a loaded model's merged weights and biases. */
function mergedWeights(peft: tera.PeftModel): Float32Array[] {
  peft.mergeAdapter();
  return peft.adapterLayers().map(([, l]) => l.baseLayer.weight.toFloat32Array());
}

type Dtype = 'F32' | 'F16' | 'BF16' | 'F64';

/** IEEE half bits of a value that half precision holds exactly (the tests choose such values). */
function halfBits(v: number): number {
  if (v === 0) return 0;
  const sign = v < 0 ? 0x8000 : 0;
  const exponent = Math.floor(Math.log2(Math.abs(v)));
  const mantissa = (Math.abs(v) / 2 ** exponent - 1) * 1024;
  if (!Number.isInteger(mantissa) || exponent < -14 || exponent > 15) throw new Error(`${v} is not a normal half`);
  return sign | ((exponent + 15) << 10) | mantissa;
}

/**
 * Writes an adapter directory as another tool would (PEFT: metadata {format: pt},
 * no tera-peft digest), with each tensor in the dtype given, by hand.
 */
function writeForeignAdapter(
  config: Record<string, unknown>,
  tensors: Record<string, { dtype: Dtype; shape: number[]; values: ArrayLike<number> }>,
): string {
  const dir = freshDir();
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'adapter_config.json'), JSON.stringify(config, null, 2));
  const header: Record<string, unknown> = { __metadata__: { format: 'pt' } };
  const chunks: Buffer[] = [];
  let offset = 0;
  for (const [name, { dtype, shape, values }] of Object.entries(tensors)) {
    const width = { F32: 4, F16: 2, BF16: 2, F64: 8 }[dtype];
    const chunk = Buffer.alloc(values.length * width);
    Array.from(values).forEach((v, i) => {
      if (dtype === 'F32') chunk.writeFloatLE(v, i * 4);
      else if (dtype === 'F64') chunk.writeDoubleLE(v, i * 8);
      else if (dtype === 'F16') chunk.writeUInt16LE(halfBits(v), i * 2);
      else {
        const f = Buffer.alloc(4);
        f.writeFloatLE(v);
        if (f.readUInt16LE(0) !== 0) throw new Error(`${v} is not a bfloat16`);
        chunk.writeUInt16LE(f.readUInt16LE(2), i * 2);
      }
    });
    header[name] = { dtype, shape, data_offsets: [offset, offset + chunk.length] };
    offset += chunk.length;
    chunks.push(chunk);
  }
  let text = JSON.stringify(header);
  text += ' '.repeat((8 - (text.length % 8)) % 8);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(text.length));
  fs.writeFileSync(path.join(dir, 'adapter_model.safetensors'), Buffer.concat([length, Buffer.from(text), ...chunks]));
  return dir;
}

/** Values k/8 for k in [-16, 16): exact in F16, BF16, F32 and F64. */
function eighths(n: number): number[] {
  return Array.from({ length: n }, () => Math.floor(next() * 32 - 16) / 8);
}

/** B A in float64 for B [out, r] and A [r, in], row-major. */
function product64(b: ArrayLike<number>, a: ArrayLike<number>, out: number, r: number, inp: number): Float64Array {
  const c = new Float64Array(out * inp);
  for (let i = 0; i < out; i++) {
    for (let j = 0; j < inp; j++) for (let k = 0; k < r; k++) c[i * inp + j] += b[i * r + k] * a[k * inp + j];
  }
  return c;
}

/** PEFT's LoRA config as PEFT 0.17-0.20 writes it, every field at its default unless overridden. */
function peftLoraConfig(overrides: Record<string, unknown>): Record<string, unknown> {
  return {
    alora_invocation_tokens: null,
    alpha_pattern: {},
    arrow_config: null,
    auto_mapping: null,
    base_model_name_or_path: 'someone/base-model',
    bias: 'none',
    corda_config: null,
    ensure_weight_tying: false,
    eva_config: null,
    exclude_modules: null,
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: 8,
    lora_bias: false,
    lora_dropout: 0.0,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    peft_version: '0.20.0',
    qalora_group_size: 16,
    r: 8,
    rank_pattern: {},
    revision: null,
    target_modules: ['0', '2'],
    target_parameters: null,
    task_type: null,
    trainable_token_indices: null,
    use_dora: false,
    use_qalora: false,
    use_rslora: false,
    ...overrides,
  };
}

describe('files written by PEFT', () => {
  const base = baseModel();
  const w0 = ['0', '2'].map((name) => (base.getSubmodule(name) as tera.nn.Linear).weight.toFloat32Array());
  const dims: Record<string, [out: number, inp: number]> = { '0': [16, 12], '2': [6, 16] };

  it('LoRA with use_rslora, rank_pattern and alpha_pattern loads as PEFT computes it', () => {
    // Layer '0': r = 2 (default), alpha = 4 (default); layer '2': r = 3 and alpha = 6 from the patterns.
    const ranks: Record<string, number> = { '0': 2, '2': 3 };
    const alphas: Record<string, number> = { '0': 4, '2': 6 };
    const weights: Record<string, { a: number[]; b: number[] }> = {};
    const tensors: Parameters<typeof writeForeignAdapter>[1] = {};
    for (const name of ['0', '2']) {
      const [out, inp] = dims[name];
      weights[name] = { a: eighths(ranks[name] * inp), b: eighths(out * ranks[name]) };
      tensors[`base_model.model.${name}.lora_A.weight`] = {
        dtype: 'F32',
        shape: [ranks[name], inp],
        values: weights[name].a,
      };
      tensors[`base_model.model.${name}.lora_B.weight`] = {
        dtype: 'F32',
        shape: [out, ranks[name]],
        values: weights[name].b,
      };
    }
    const config = peftLoraConfig({
      r: 2,
      lora_alpha: 4,
      use_rslora: true,
      rank_pattern: { 'x\\.2': 9, '2': 3 }, // the first key names no module here; the second wins
      alpha_pattern: { '[2]': 6 },
      lora_dropout: 0.05, // dropout does nothing at inference
    });
    const dir = writeForeignAdapter(config, tensors);
    const peft = tera.loadAdapter(baseModel(), dir);
    const merged = mergedWeights(peft);
    ['0', '2'].forEach((name, i) => {
      const [out, inp] = dims[name];
      const scale = alphas[name] / Math.sqrt(ranks[name]); // rank-stabilised: alpha / sqrt(r)
      const dW = product64(weights[name].b, weights[name].a, out, ranks[name], inp);
      expectAllClose(
        merged[i],
        Array.from(w0[i], (w, j) => w + scale * dW[j]),
        { rtol: 1e-6, atol: 1e-6 },
      );
    });
    peft.unload();
    // Training it would need dropout, which tera-peft does not have.
    expect(() => tera.loadAdapter(baseModel(), dir, { isTrainable: true })).toThrow(
      /loads for inference only \(isTrainable: false\):\n {2}- dropout: tera-peft has no dropout/,
    );
  });

  it('refuses every field whose value it would not honour, naming each, and unknown fields', () => {
    const tensors = {
      'base_model.model.0.lora_A.weight': { dtype: 'F32' as const, shape: [8, 12], values: eighths(96) },
      'base_model.model.0.lora_B.weight': { dtype: 'F32' as const, shape: [16, 8], values: eighths(128) },
    };
    const cases: [Record<string, unknown>, RegExp[]][] = [
      [
        { use_dora: true, bias: 'lora_only', layers_to_transform: [1], shiny_new_option: 1 },
        [
          /\n {2}- use_dora is true; tera-peft supports only false \(DoRA is not implemented\)/,
          /\n {2}- bias is "lora_only"; tera-peft supports only "none"/,
          /\n {2}- layers_to_transform is \[1\]; tera-peft supports only null/,
          /\n {2}- shiny_new_option is not a field tera-peft knows for LoraConfig; refusing it rather than ignoring it/,
        ],
      ],
      [{ init_lora_weights: 'pissa_niter_4' }, [/init_lora_weights is 'pissa_niter_4': that initialisation changes/]],
      [
        { modules_to_save: ['classifier'] },
        [/modules_to_save is \["classifier"\]; tera-peft supports only null or \[\]/],
      ],
    ];
    for (const [overrides, messages] of cases) {
      const dir = writeForeignAdapter(peftLoraConfig({ target_modules: ['0'], ...overrides }), tensors);
      const model = baseModel();
      const before = fingerprint(model);
      const message = (() => {
        try {
          tera.loadAdapter(model, dir);
        } catch (error) {
          return (error as Error).message;
        }
        return 'loaded';
      })();
      for (const expected of messages) expect(message).toMatch(expected);
      expect(fingerprint(model)).toBe(before);
    }
  });

  it('F16, BF16 and F64 tensors load, converted to float32 (adapters on the Hub are often half precision)', () => {
    const values = { a0: eighths(2 * 12), b0: eighths(16 * 2), a2: eighths(2 * 16), b2: eighths(6 * 2) };
    const dir = writeForeignAdapter(peftLoraConfig({ r: 2 }), {
      'base_model.model.0.lora_A.weight': { dtype: 'F16', shape: [2, 12], values: values.a0 },
      'base_model.model.0.lora_B.weight': { dtype: 'BF16', shape: [16, 2], values: values.b0 },
      'base_model.model.2.lora_A.weight': { dtype: 'F64', shape: [2, 16], values: values.a2 },
      'base_model.model.2.lora_B.weight': { dtype: 'F32', shape: [6, 2], values: values.b2 },
    });
    const peft = tera.loadAdapter(baseModel(), dir);
    const loaded = Object.fromEntries(peft.namedParameters().map(([n, p]) => [n, Array.from(p.toFloat32Array())]));
    expect(loaded['0.lora_A.default.weight']).toEqual(values.a0);
    expect(loaded['0.lora_B.default.weight']).toEqual(values.b0);
    expect(loaded['2.lora_A.default.weight']).toEqual(values.a2);
    expect(loaded['2.lora_B.default.weight']).toEqual(values.b2);
    peft.unload();
  });

  /** PEFT's VeRA config as PEFT writes it. */
  const peftVeraConfig = (overrides: Record<string, unknown>) => ({
    auto_mapping: null,
    base_model_name_or_path: null,
    bias: 'none',
    d_initial: 0.1,
    fan_in_fan_out: false,
    inference_mode: true,
    init_weights: true,
    layers_pattern: null,
    layers_to_transform: null,
    modules_to_save: null,
    peft_type: 'VERA',
    projection_prng_key: 0,
    r: 4,
    revision: null,
    save_projection: true,
    target_modules: ['0', '2'],
    task_type: null,
    vera_dropout: 0.0,
    ...overrides,
  });

  it('VeRA uses the projections a file stores (PEFT draws them from torch, not from our generator)', () => {
    const r = 4;
    const a = eighths(r * 16); // [r, maxIn = 16]
    const b = eighths(16 * r); // [maxOut = 16, r]
    const lambda = { b0: eighths(16), d0: eighths(r), b2: eighths(6), d2: eighths(r) };
    const dir = writeForeignAdapter(peftVeraConfig({}), {
      'base_model.vera_A': { dtype: 'F32', shape: [r, 16], values: a },
      'base_model.vera_B': { dtype: 'F32', shape: [16, r], values: b },
      'base_model.model.0.vera_lambda_b': { dtype: 'F32', shape: [16], values: lambda.b0 },
      'base_model.model.0.vera_lambda_d': { dtype: 'F32', shape: [r], values: lambda.d0 },
      'base_model.model.2.vera_lambda_b': { dtype: 'F32', shape: [6], values: lambda.b2 },
      'base_model.model.2.vera_lambda_d': { dtype: 'F32', shape: [r], values: lambda.d2 },
    });
    const peft = tera.loadAdapter(baseModel(), dir);
    const merged = mergedWeights(peft);
    (
      [
        ['0', lambda.b0, lambda.d0],
        ['2', lambda.b2, lambda.d2],
      ] as const
    ).forEach(([name, lb, ld], i) => {
      const [out, inp] = dims[name];
      // PEFT slices vera_A[:, :in] and vera_B[:out, :]; dW = diag(lambda_b) B diag(lambda_d) A.
      const aSlice = Array.from({ length: r * inp }, (_, k) => a[Math.floor(k / inp) * 16 + (k % inp)]);
      const bScaled = Array.from({ length: out * r }, (_, k) => b[k] * lb[Math.floor(k / r)] * ld[k % r]);
      const dW = product64(bScaled, aSlice, out, r, inp);
      expectAllClose(
        merged[i],
        Array.from(w0[i], (w, j) => w + dW[j]),
        { rtol: 1e-6, atol: 1e-6 },
      );
    });
    peft.unload();
  });

  it('VeRA without stored projections loads only if tera-peft wrote it (their values depend on the generator)', () => {
    const lambdas = {
      'base_model.model.0.vera_lambda_b': { dtype: 'F32' as const, shape: [16], values: eighths(16) },
      'base_model.model.0.vera_lambda_d': { dtype: 'F32' as const, shape: [4], values: eighths(4) },
      'base_model.model.2.vera_lambda_b': { dtype: 'F32' as const, shape: [6], values: eighths(6) },
      'base_model.model.2.vera_lambda_d': { dtype: 'F32' as const, shape: [4], values: eighths(4) },
    };
    const dir = writeForeignAdapter(peftVeraConfig({ save_projection: false }), lambdas);
    const model = baseModel();
    const before = fingerprint(model);
    expect(() => tera.loadAdapter(model, dir)).toThrow(
      /the file has no vera_A \/ vera_B \(save_projection is false\) and was not written by tera-peft/,
    );
    expect(fingerprint(model)).toBe(before);

    const ours = savedAdapter(new tera.VeraConfig({ targetModules: ['0', '2'], r: 4, saveProjection: false }));
    const loaded = tera.loadAdapter(baseModel(), ours.dir);
    expect(loaded.forward(x).toFloat32Array()).toEqual(ours.output);
    [ours.peft, loaded].forEach((p) => p.unload());
  });

  it("LoRA and VeRA files hold only fields PEFT's loader knows (PEFT warns about others)", () => {
    // PEFT's LoraConfig / VeraConfig fields (peft 0.20) and PeftConfig's.
    const base = ['peft_type', 'base_model_name_or_path', 'revision', 'task_type', 'inference_mode', 'auto_mapping'];
    const known = {
      LORA: [...base, ...Object.keys(peftLoraConfig({}))],
      VERA: [...base, ...Object.keys(peftVeraConfig({}))],
    };
    const lora = savedAdapter(new tera.LoraConfig({ targetModules: ['0', '2'], seed: 5, useRslora: true }));
    const vera = savedAdapter(new tera.VeraConfig({ targetModules: ['0', '2'], r: 4 }));
    for (const [saved, type] of [
      [lora, 'LORA'],
      [vera, 'VERA'],
    ] as const) {
      const json = JSON.parse(fs.readFileSync(path.join(saved.dir, 'adapter_config.json'), 'utf8'));
      expect(Object.keys(json).filter((key) => !known[type].includes(key))).toEqual([]);
    }
    // VeRA stores its projections by default, as PEFT does.
    expect(Object.keys(parseFile(path.join(vera.dir, 'adapter_model.safetensors')).tensors)).toContain(
      'base_model.vera_A',
    );
    [lora.peft, vera.peft].forEach((p) => p.unload());
  });

  it("VeRA's exclude_modules (unknown to PEFT's VeraConfig) is written as the exact targets", () => {
    const model = () => new nn.MLP([12, 16, 16, 6], { seed: 3, activation: 'gelu' });
    const peft = tera.injectAdapter(
      model(),
      new tera.VeraConfig({ targetModules: '[024]', excludeModules: ['2'], r: 4 }),
    );
    for (const p of peft.trainableParameters()) p.data.set(randomArray(p.size, next));
    const dir = freshDir();
    tera.saveAdapter(peft, dir);
    const json = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    expect([json.target_modules, 'exclude_modules' in json]).toEqual([['0', '4'], false]);
    const loaded = tera.loadAdapter(model(), dir);
    expect(loaded.adapterLayers().map(([name]) => name)).toEqual(['0', '4']);
    expect(loaded.forward(x).toFloat32Array()).toEqual(peft.forward(x).toFloat32Array());
    [peft, loaded].forEach((p) => p.unload());

    // Where a list entry would also name another module ('0' names '1.0' too), a regex matching exactly.
    const nested = () =>
      new nn.Sequential(new nn.Linear(4, 4, { seed: 1 }), new nn.Sequential(new nn.Linear(4, 4, { seed: 2 })));
    const inner = tera.injectAdapter(
      nested(),
      new tera.VeraConfig({ targetModules: '0|1\\.0', excludeModules: ['1.0'], r: 2 }),
    );
    const nestedDir = freshDir();
    tera.saveAdapter(inner, nestedDir);
    expect(JSON.parse(fs.readFileSync(path.join(nestedDir, 'adapter_config.json'), 'utf8')).target_modules).toBe(
      '(?:0)',
    );
    const reloaded = tera.loadAdapter(nested(), nestedDir);
    expect(reloaded.adapterLayers().map(([name]) => name)).toEqual(['0']);
    [inner, reloaded].forEach((p) => p.unload());
  });

  it("'all-linear' adapts every Linear but the output layer, and is saved as the exact targets, as PEFT does", () => {
    const model = () => new nn.MLP([12, 16, 16, 6], { seed: 3, activation: 'gelu' });
    const peft = tera.injectAdapter(model(), new tera.LoraConfig({ targetModules: 'all-linear', r: 2 }));
    expect(peft.adapterLayers().map(([name]) => name)).toEqual(['0', '2']);
    for (const p of peft.trainableParameters()) p.data.set(randomArray(p.size, next));
    const dir = freshDir();
    tera.saveAdapter(peft, dir);
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8')).target_modules).toEqual([
      '0',
      '2',
    ]);
    const loaded = tera.loadAdapter(model(), dir);
    expect(loaded.forward(x).toFloat32Array()).toEqual(peft.forward(x).toFloat32Array());
    [peft, loaded].forEach((p) => p.unload());

    // A PEFT file that says 'all-linear' (any letter case, as PEFT) loads the same way.
    const tensors = {
      'base_model.model.0.lora_A.weight': { dtype: 'F32' as const, shape: [2, 12], values: eighths(24) },
      'base_model.model.0.lora_B.weight': { dtype: 'F32' as const, shape: [16, 2], values: eighths(32) },
    };
    const fromPeft = tera.loadAdapter(
      baseModel(),
      writeForeignAdapter(peftLoraConfig({ r: 2, target_modules: 'ALL-LINEAR' }), tensors),
    );
    expect(fromPeft.adapterLayers().map(([name]) => name)).toEqual(['0']);
    fromPeft.unload();
    expect(() =>
      tera.injectAdapter(new nn.Sequential(new nn.Linear(4, 4)), new tera.LoraConfig({ targetModules: 'all-linear' })),
    ).toThrow(
      /'all-linear' adapts every Linear layer but the output layer, and this model has only its output layer '0'/,
    );
  });
});

describe('untrusted patterns', () => {
  /** A model whose one Linear has a long dotted name, as transformers' modules do. */
  class Deep extends nn.Module {
    readonly block = this.registerModule(
      'transformer_block_with_a_longer_name_0',
      new nn.Sequential(new nn.Linear(12, 6, { seed: 4 })),
    );
    forward(input: tera.autograd.Input) {
      return this.block.forward(input);
    }
  }
  const longName = 'transformer_block_with_a_longer_name_0.0';
  const tensors = {
    [`base_model.model.${longName}.lora_A.weight`]: { dtype: 'F32' as const, shape: [2, 12], values: eighths(24) },
    [`base_model.model.${longName}.lora_B.weight`]: { dtype: 'F32' as const, shape: [6, 2], values: eighths(12) },
  };

  /** Runs `fn`, returning what it threw (or 'no error') and how long it took. */
  function timed(fn: () => unknown): { error: string; ms: number } {
    const start = performance.now();
    let error = 'no error';
    try {
      fn();
    } catch (e) {
      error = (e as Error).message;
    }
    return { error, ms: performance.now() - start };
  }

  it("matches catastrophic-backtracking patterns like '(.*)*x' in linear time, with PEFT's full-match result", () => {
    expect(longName.length).toBeGreaterThanOrEqual(40);
    // A backtracking engine needs about 2^40 steps to find that these do not match (1.2 s at 24 characters,
    // doubling per character); RE2 needs one pass. The bound is generous: it only catches a hang.
    for (const pattern of ['(.*)*x', '(a|.)*(a|.)*(a|.)*#', '(.*.*)*\\d{3}z']) {
      const dir = writeForeignAdapter(peftLoraConfig({ r: 2, target_modules: pattern }), tensors);
      const result = timed(() => tera.loadAdapter(new Deep(), dir));
      expect(result.error).toMatch(/matches no module/);
      expect(result.ms).toBeLessThan(5000);
    }
    // The same kind of pattern where it does match the whole name: the adapter loads.
    const dir = writeForeignAdapter(peftLoraConfig({ r: 2, target_modules: '(.*)*\\.0' }), tensors);
    const peft = tera.loadAdapter(new Deep(), dir);
    expect(peft.adapterLayers().map(([name]) => name)).toEqual([longName]);
    peft.unload();
    // rank_pattern keys are patterns too.
    const keyed = writeForeignAdapter(
      peftLoraConfig({ r: 2, target_modules: [longName], rank_pattern: { '(.*)*x': 7 } }),
      tensors,
    );
    const result = timed(() => tera.loadAdapter(new Deep(), keyed).unload());
    expect(result).toEqual({ error: 'no error', ms: expect.any(Number) });
    expect(result.ms).toBeLessThan(5000);
  });

  it('refuses patterns a linear-time engine cannot run, saying why', () => {
    for (const pattern of ['(?=transformer).*', '(a)\\1']) {
      const dir = writeForeignAdapter(peftLoraConfig({ r: 2, target_modules: pattern }), tensors);
      expect(() => tera.loadAdapter(new Deep(), dir)).toThrow(
        /is not a regular expression tera-peft can match in linear time/,
      );
    }
    expect(() => new tera.LoraConfig({ targetModules: /(?<=a)b/ })).toThrow(/can match in linear time/);
  });
});

describe('interrupted and concurrent saves', () => {
  const writer = path.join(__dirname, 'helpers', 'adapter-writer.ts');
  const spawnWriter = (mode: string, dir: string) =>
    spawn(process.execPath, ['--require', 'tsx/cjs', writer, mode, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = (child: ChildProcess) =>
    new Promise<NodeJS.Signals | number | null>((resolve) =>
      child.on('exit', (code, signal) => resolve(signal ?? code)),
    );
  const temporaries = (dir: string) => fs.readdirSync(dir).filter((name) => name.endsWith('.tmp'));
  const xVersion = tera.random.uniform([3, INPUT_FEATURES], { seed: 7, low: -1, high: 1 });
  const outputs = [0, 1].map((which) => {
    const peft = adapterVersion(which as 0 | 1);
    const out = Array.from(peft.forward(xVersion).toFloat32Array());
    peft.unload();
    return out;
  });
  const MIXED = /holds adapter_config.json and adapter_model.safetensors from different saves/;

  /** Loads `dir` into a fresh base model: the output, or the error's message. */
  function tryLoad(dir: string): { output: number[] } | { error: string } {
    let peft: tera.PeftModel;
    try {
      peft = tera.loadAdapter(baseWriterModel(), dir);
    } catch (error) {
      return { error: (error as Error).message };
    }
    const output = Array.from(peft.forward(xVersion).toFloat32Array());
    peft.unload();
    return { output };
  }

  it('refuses the old config with the new weights that a save killed between its renames leaves; the next save cleans up', async () => {
    const dir = freshDir();
    const child = spawnWriter('crash-between-files', dir);
    expect(await exited(child)).toBe('SIGKILL');
    // The weights of version 1 are in place, the config of version 0 is not yet replaced.
    expect(temporaries(dir)).toEqual([expect.stringMatching(/^\.adapter_config\.json\.\d+\.[0-9a-f]{12}\.tmp$/)]);
    const model = baseWriterModel();
    const before = fingerprint(model);
    expect(() => tera.loadAdapter(model, dir)).toThrow(MIXED);
    expect(fingerprint(model)).toBe(before);

    const again = adapterVersion(1);
    tera.saveAdapter(again, dir);
    again.unload();
    expect(temporaries(dir)).toEqual([]);
    expect(tryLoad(dir)).toEqual({ output: outputs[1] });
  });

  it('a config edited by hand is refused unless allowEditedConfig says so', () => {
    const dir = freshDir();
    const saved = adapterVersion(0);
    tera.saveAdapter(saved, dir);
    saved.unload();
    const file = path.join(dir, 'adapter_config.json');
    fs.writeFileSync(file, fs.readFileSync(file, 'utf8').replace('"lora_alpha": 1', '"lora_alpha": 2'));
    expect(tryLoad(dir)).toEqual({ error: expect.stringMatching(MIXED) });
    const edited = tera.loadAdapter(baseWriterModel(), dir, { allowEditedConfig: true });
    expect(edited.peftConfig.default).toEqual(expect.objectContaining({ alpha: 2 }));
    edited.unload();
  });

  it('readers during repeated saves load one version or refuse the mix, never a mixture; a killed writer leaves nothing behind', async () => {
    const dir = freshDir();
    const child = spawnWriter('loop', dir);
    const done = exited(child);
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
    const seen = { version0: 0, version1: 0, refused: 0 };
    const deadline = Date.now() + 1500;
    while (Date.now() < deadline) {
      const result = tryLoad(dir);
      if ('error' in result) {
        expect(result.error).toMatch(MIXED);
        seen.refused++;
      } else if (result.output.every((v, i) => v === outputs[0][i])) {
        seen.version0++;
      } else {
        expect(result.output).toEqual(outputs[1]); // anything else is a mixture
        seen.version1++;
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
    child.kill('SIGKILL');
    expect(await done).toBe('SIGKILL');
    expect(seen.version0 + seen.version1).toBeGreaterThan(0);

    const after = tryLoad(dir);
    if ('error' in after) expect(after.error).toMatch(MIXED);
    else expect([outputs[0], outputs[1]]).toContainEqual(after.output);
    const again = adapterVersion(0);
    tera.saveAdapter(again, dir);
    again.unload();
    expect(temporaries(dir)).toEqual([]);
    expect(tryLoad(dir)).toEqual({ output: outputs[0] });
  });
});
