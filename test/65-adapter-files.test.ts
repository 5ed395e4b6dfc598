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
      max_mode_size: 16,
      max_rank: 16,
      out_modes: null,
      in_modes: null,
      ranks: null,
      alpha: 2,
      seed: 7,
      save_factors: false,
    });
    peft.unload();
  });

  it('stores a TeRA adapter of a 4096 x 4096 layer in 384 bytes of tensor data', () => {
    const peft = tera.injectAdapter(
      new nn.Sequential(new nn.Linear(4096, 4096, { seed: 1 })),
      new tera.TeraConfig({ targetModules: ['0'] }),
    );
    const dir = freshDir();
    const { weightsPath } = tera.saveAdapter(peft, dir);
    const { tensors } = parseFile(weightsPath);
    expect(Object.values(tensors).map((t) => t.shape)).toEqual([[16], [16], [16], [16], [16], [16]]);
    const headerSize = Number(fs.readFileSync(weightsPath).readBigUInt64LE(0));
    expect(fs.statSync(weightsPath).size - 8 - headerSize).toBe(6 * 16 * 4);
    expect(fs.statSync(weightsPath).size).toBeLessThan(1024);
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
      'a tensor stored as F16',
      () => {
        const dir = copyOf(lora.dir);
        const file = path.join(dir, 'adapter_model.safetensors');
        // A file with one F16 tensor among the F32 ones, laid out by hand.
        const { tensors } = io.readSafetensors(file);
        const names = Object.keys(tensors).sort();
        const header: Record<string, unknown> = {};
        const chunks: Buffer[] = [];
        let offset = 0;
        for (const name of names) {
          const t = tensors[name];
          const half = name.endsWith('2.lora_A.weight');
          const chunk = Buffer.alloc(t.data.length * (half ? 2 : 4));
          t.data.forEach((v, i) => (half ? chunk.writeUInt16LE(0x3c00, i * 2) : chunk.writeFloatLE(v, i * 4)));
          header[name] = { dtype: half ? 'F16' : 'F32', shape: t.shape, data_offsets: [offset, offset + chunk.length] };
          offset += chunk.length;
          chunks.push(chunk);
        }
        let text = JSON.stringify(header);
        text += ' '.repeat((8 - (text.length % 8)) % 8);
        const length = Buffer.alloc(8);
        length.writeBigUInt64LE(BigInt(text.length));
        fs.writeFileSync(file, Buffer.concat([length, Buffer.from(text), ...chunks]));
        return dir;
      },
      /'base_model.model.2.lora_A.weight' is F16; adapters are stored as F32/,
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
