/**
 * The comparison with PyTorch, as llm.c does it with its debug state: one training step
 * of each method (the frozen Linear, TeRA, VeRA, LoRA) on small tensors, made once by
 * the PyTorch reference (scripts/bench/torch_reference.py) and committed as golden files,
 * so that every test run compares our outputs, gradients and optimiser step with
 * PyTorch's without needing PyTorch. `npm run goldens` rewrites them; the bench's check
 * suite compares against a fresh PyTorch run when torch is there.
 *
 * Our side goes through the public API only (nn.Linear, injectAdapter, the PeftModel's
 * parameters, saveAdapter for the frozen tensors, autograd, AdamW).
 *
 * Golden file format: test/golden/<case>.safetensors, float32 tensors (safetensors: an
 * 8-byte little-endian header length, a JSON header, the raw data), a few KiB each:
 *   input.x [T, d_in], input.weight [d_out, d_in], input.bias [d_out]
 *       the base Linear and its input, made by our random generator;
 *   param.<suffix>   a trainable tensor before the step, named by its suffix in PEFT's
 *                    adapter files (tera_lambda_1, vera_lambda_b, lora_A.weight), random;
 *   frozen.<name>    a frozen tensor as our code generates it (tera_core, tera_factor_1,
 *                    vera_A, vera_B), which PyTorch takes as it is;
 *   output.loss [1], output.y [T, d_out], output.dx [T, d_in]
 *                    PyTorch's loss (mean cross-entropy against the case's labels), the
 *                    layer's output and the gradient of the loss with respect to x;
 *   grad.<suffix>    PyTorch's gradient of the loss for each trainable tensor;
 *   step.<suffix>    the trainable tensor after one torch.optim.AdamW step;
 * and metadata: format 'tera-peft-golden/1', case (this file's GoldenCase as JSON, labels
 * and optimiser settings included) and made_by (the torch and Python versions).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import {
  AdamW,
  type LoraConfigOptions,
  LoraConfig,
  type PeftModel,
  type TeraConfigOptions,
  TeraConfig,
  type VeraConfigOptions,
  VeraConfig,
  autograd,
  injectAdapter,
  io,
  nn,
  random,
  saveAdapter,
  tensor,
} from '../../lib';
import type { Method } from './layers';
import type { SuiteContext } from './measure';
import type { TorchWorker } from './torch';

export const GOLDEN_FORMAT = 'tera-peft-golden/1';
export const goldenDir = path.resolve(__dirname, '..', '..', 'test', 'golden');

/** torch.optim.AdamW's arguments (weight decay made larger than its default so that it shows). */
interface OptimizerSettings {
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

/** A config's options; every case adapts the one Linear, '0'. */
type Options<T> = Omit<T, 'targetModules'>;

/** The adapter of a case; alpha and r are explicit where PyTorch needs them. */
type AdapterSpec =
  | { method: 'frozen' }
  | { method: 'tera'; options: Options<TeraConfigOptions> & { alpha: number } }
  | { method: 'vera'; options: Options<VeraConfigOptions> }
  | { method: 'lora'; options: Options<LoraConfigOptions> & { r: number; alpha: number } };

export type GoldenCase = AdapterSpec & {
  name: string;
  dOut: number;
  dIn: number;
  tokens: number;
  labels: number[];
  optimizer: OptimizerSettings;
};

const D_OUT = 12;
const D_IN = 16;
const TOKENS = 6;
const shared = {
  dOut: D_OUT,
  dIn: D_IN,
  tokens: TOKENS,
  labels: Array.from({ length: TOKENS }, (_, i) => (5 * i + 1) % D_OUT),
  optimizer: { lr: 0.01, betas: [0.9, 0.999] as [number, number], eps: 1e-8, weightDecay: 0.1 },
};

/**
 * Every method once; TeRA twice: full ranks (modes 3x4 | 4x4, the in-place projection
 * path) and ranks below the modes with alpha != 1. The frozen tensors are saved with the
 * adapter so they can be read back through the file API.
 */
export const GOLDEN_CASES: GoldenCase[] = [
  { ...shared, name: 'frozen', method: 'frozen' },
  {
    ...shared,
    name: 'tera',
    method: 'tera',
    options: { maxModeSize: 4, alpha: 1, seed: 3, saveFactors: true },
  },
  {
    ...shared,
    name: 'tera-ranks',
    method: 'tera',
    options: { outModes: [3, 4], inModes: [4, 4], ranks: [2, 3, 3, 2], alpha: 0.5, seed: 4, saveFactors: true },
  },
  { ...shared, name: 'vera', method: 'vera', options: { r: 4, seed: 5, saveProjection: true } },
  { ...shared, name: 'lora', method: 'lora', options: { r: 4, alpha: 8, seed: 6 } },
];

/** One quantity of one golden case against PyTorch's (a frozen input against its golden copy). */
export interface CheckResult {
  method: Method;
  /** The golden case's name ('tera', 'tera-ranks', ...). */
  case: string;
  quantity: string;
  maxAbsError: number;
  maxAbsReference: number;
  tolerance: number;
  pass: boolean;
}

export type NamedArrays = Record<string, { data: Float32Array; shape: number[] }>;

/** Our layer for a case: the base Linear, its adapter, the trainable tensors by file suffix. */
interface OurLayer {
  base: nn.Linear;
  trainable: [suffix: string, parameter: autograd.Parameter][];
  /** The frozen tensors our code generated for this adapter, by name (tera_core, vera_A). */
  frozen: NamedArrays;
  forward(x: autograd.Var): autograd.Var;
  dispose(): void;
}

function configOf(c: GoldenCase) {
  const targets = { targetModules: ['0'] };
  if (c.method === 'tera') return new TeraConfig({ ...c.options, ...targets });
  if (c.method === 'vera') return new VeraConfig({ ...c.options, ...targets });
  if (c.method === 'lora') return new LoraConfig({ ...c.options, ...targets });
  return null;
}

/** The frozen tensors an adapter file holds ('base_model.tera_core.<signature>' -> 'tera_core'). */
function savedFrozenTensors(peft: PeftModel): NamedArrays {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-golden-'));
  try {
    const { weightsPath } = saveAdapter(peft, dir);
    const frozen: NamedArrays = {};
    for (const [key, t] of Object.entries(io.readSafetensors(weightsPath).tensors)) {
      if (key.startsWith('base_model.model.')) continue; // a layer's trainable tensor
      frozen[key.slice('base_model.'.length).split('.')[0]] = { data: t.data, shape: t.shape };
    }
    return frozen;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function buildLayer(c: GoldenCase): OurLayer {
  const base = new nn.Linear(c.dIn, c.dOut, { seed: 0 });
  const model = new nn.Sequential(base);
  const config = configOf(c);
  if (config === null) {
    model.requiresGrad(false);
    return {
      base,
      trainable: [],
      frozen: {},
      forward: (x) => model.forward(x),
      dispose: () => model.dispose(),
    };
  }
  const peft = injectAdapter(model, config);
  // PEFT's parameter names put the adapter name after the tensor's first part: '0.lora_A.default.weight'.
  const trainable = peft
    .namedParameters()
    .filter(([, p]) => p.requiresGrad)
    .map(([name, p]): [string, autograd.Parameter] => [name.replace(/^0\./, '').replace('.default', ''), p]);
  return {
    base,
    trainable,
    frozen: savedFrozenTensors(peft),
    forward: (x) => peft.forward(x),
    dispose: () => {
      peft.deleteAdapter('default');
      model.dispose();
    },
  };
}

/** A case's inputs, made by our code: random base, input and trainable tensors, and our frozen tensors. */
export function makeInputs(c: GoldenCase): NamedArrays {
  const layer = buildLayer(c);
  const normal = (shape: number[], key: number, std: number) => {
    const t = random.normal(shape, { seed: 21, key, std, device: 'cpu' });
    const data = t.toFloat32Array();
    t.dispose();
    return { data, shape };
  };
  try {
    const inputs: NamedArrays = {
      'input.x': normal([c.tokens, c.dIn], 1, 1),
      'input.weight': normal([c.dOut, c.dIn], 2, 1 / Math.sqrt(c.dIn)),
      'input.bias': normal([c.dOut], 3, 0.1),
    };
    layer.trainable.forEach(([suffix, p], i) => (inputs[`param.${suffix}`] = normal([...p.shape], 10 + i, 0.5)));
    for (const [name, t] of Object.entries(layer.frozen)) inputs[`frozen.${name}`] = t;
    return inputs;
  } finally {
    layer.dispose();
  }
}

export interface OurStep {
  /** Our frozen tensors for the case, to be checked against the golden inputs. */
  frozen: NamedArrays;
  /** output.*, grad.* and step.* as in the golden file. */
  results: Record<string, Float32Array>;
}

function input(inputs: NamedArrays, name: string): Float32Array {
  const t = inputs[name];
  if (t === undefined) throw new Error(`the golden inputs have no '${name}'`);
  return t.data;
}

/** One training step of our implementation on the given inputs: forward, loss, backward, AdamW. */
export function runOurStep(c: GoldenCase, inputs: NamedArrays): OurStep {
  const layer = buildLayer(c);
  try {
    layer.base.weight.data.set(input(inputs, 'input.weight'));
    layer.base.bias!.data.set(input(inputs, 'input.bias'));
    for (const [suffix, p] of layer.trainable) p.data.set(input(inputs, `param.${suffix}`));
    return { frozen: layer.frozen, results: trainingStep(c, layer, input(inputs, 'input.x')) };
  } finally {
    layer.dispose();
  }
}

function trainingStep(c: GoldenCase, layer: OurLayer, xData: Float32Array): Record<string, Float32Array> {
  const x = new autograd.Var(tensor(xData, [c.tokens, c.dIn]), { requiresGrad: true });
  let optimizer: AdamW | null = null;
  try {
    const results: Record<string, Float32Array> = {};
    autograd.tidy(() => {
      const y = layer.forward(x);
      const loss = autograd.softmaxCrossEntropy(y, c.labels);
      loss.backward();
      results['output.loss'] = loss.data.toFloat32Array();
      results['output.y'] = y.data.toFloat32Array();
    });
    results['output.dx'] = x.grad!.toFloat32Array();
    for (const [suffix, p] of layer.trainable) results[`grad.${suffix}`] = p.grad!.toFloat32Array();
    if (layer.trainable.length > 0) {
      const { lr, betas, eps, weightDecay } = c.optimizer;
      optimizer = new AdamW(
        layer.trainable.map(([, p]) => p),
        { lr, betas, eps, weightDecay },
      );
      optimizer.step();
      for (const [suffix, p] of layer.trainable) results[`step.${suffix}`] = p.data.toFloat32Array();
    }
    return results;
  } finally {
    optimizer?.dispose();
    x.dispose();
  }
}

export interface Golden {
  file: string;
  /** The case as the file records it (JSON). */
  caseJson: string;
  madeBy: string;
  inputs: NamedArrays;
  /** output.*, grad.* and step.*: PyTorch's. */
  expected: Record<string, Float32Array>;
}

export function goldenFile(name: string, dir = goldenDir): string {
  return path.join(dir, `${name}.safetensors`);
}

export function readGolden(file: string): Golden {
  const { tensors, metadata } = io.readSafetensors(file);
  if (metadata.format !== GOLDEN_FORMAT) {
    throw new Error(`${file}: format is '${metadata.format}', expected '${GOLDEN_FORMAT}'`);
  }
  const inputs: NamedArrays = {};
  const expected: Record<string, Float32Array> = {};
  for (const [name, t] of Object.entries(tensors)) {
    if (/^(input|param|frozen)\./.test(name)) inputs[name] = { data: t.data, shape: t.shape };
    else if (/^(output|grad|step)\./.test(name)) expected[name] = t.data;
    else throw new Error(`${file}: unexpected tensor '${name}'`);
  }
  return { file, caseJson: metadata.case, madeBy: metadata.made_by, inputs, expected };
}

/** The update's scale as PyTorch (and PEFT) define it: TeRA's alpha, LoRA's alpha / r. */
function torchScale(c: GoldenCase): Record<string, number> {
  if (c.method === 'tera') return { alpha: c.options.alpha };
  if (c.method === 'lora') return { scaling: c.options.alpha / c.options.r };
  return {};
}

/** The case as a golden file records it, with what torch_reference.py reads ("torch"). */
export function caseJson(c: GoldenCase): string {
  return JSON.stringify({ ...c, torch: torchScale(c) });
}

/** Makes a case's golden file with PyTorch: our inputs go in, PyTorch's step comes out. */
export async function makeGolden(torch: TorchWorker, c: GoldenCase, file: string): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-golden-inputs-'));
  try {
    const inputsFile = path.join(dir, 'inputs.safetensors');
    io.writeSafetensors(inputsFile, makeInputs(c), { format: GOLDEN_FORMAT, case: caseJson(c) });
    await torch.request('golden', { input: inputsFile, output: file });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Largest |value|: the scale of a quantity's tolerance. */
export function maxAbs(values: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < values.length; i++) m = Math.max(m, Math.abs(values[i]));
  return m;
}

/**
 * Allowed |ours - PyTorch| for a quantity: 1e-5 of its largest value. Both sides are
 * float32 with sums of at most a few hundred terms here (observed: below 3e-7 of it).
 */
export function goldenTolerance(reference: ArrayLike<number>): number {
  return 1e-5 * maxAbs(reference) + 1e-8;
}

/** Compares our step with a golden file: one result per frozen input and per quantity. */
export function compareWithGolden(c: GoldenCase, golden: Golden): CheckResult[] {
  const method: Method = c.method;
  const ours = runOurStep(c, golden.inputs);
  const results: CheckResult[] = [];
  const compare = (quantity: string, mine: Float32Array | undefined, reference: Float32Array, tolerance: number) => {
    let maxAbsError = mine !== undefined && mine.length === reference.length ? 0 : NaN;
    reference.forEach((r, i) => (maxAbsError = Math.max(maxAbsError, Math.abs((mine?.[i] ?? NaN) - r))));
    const pass = maxAbsError <= tolerance;
    results.push({ method, case: c.name, quantity, maxAbsError, maxAbsReference: maxAbs(reference), tolerance, pass });
  };
  const frozenNames = new Set([
    ...Object.keys(ours.frozen).map((name) => `frozen.${name}`),
    ...Object.keys(golden.inputs).filter((name) => name.startsWith('frozen.')),
  ]);
  // The frozen tensors are regenerated from the seed: they must be the golden inputs, bit for bit.
  for (const name of frozenNames) {
    compare(name, ours.frozen[name.slice('frozen.'.length)]?.data, golden.inputs[name]?.data ?? new Float32Array(), 0);
  }
  for (const [quantity, reference] of Object.entries(golden.expected)) {
    compare(quantity, ours.results[quantity], reference, goldenTolerance(reference));
  }
  for (const quantity of Object.keys(ours.results)) {
    if (!(quantity in golden.expected)) compare(quantity, ours.results[quantity], new Float32Array(), 0);
  }
  return results;
}

/**
 * The bench's check suite: every case of the chosen methods against PyTorch, run now
 * when the bench has torch, else against the committed golden files.
 */
export async function runChecks(context: SuiteContext, methods: Method[]): Promise<CheckResult[]> {
  const cases = GOLDEN_CASES.filter((c) => c.method === 'frozen' || methods.includes(c.method));
  const dir = context.torch ? fs.mkdtempSync(path.join(os.tmpdir(), 'tera-golden-live-')) : goldenDir;
  const results: CheckResult[] = [];
  try {
    for (const c of cases) {
      context.log(`check ${c.name} against PyTorch (${context.torch ? 'run now' : 'golden file'})`);
      if (context.torch) await makeGolden(context.torch, c, goldenFile(c.name, dir));
      const golden = readGolden(goldenFile(c.name, dir));
      if (golden.caseJson !== caseJson(c)) {
        throw new Error(
          `${golden.file} was made for another case: run \`npm run goldens\` after changing GOLDEN_CASES`,
        );
      }
      results.push(...compareWithGolden(c, golden));
    }
  } finally {
    if (context.torch) fs.rmSync(dir, { recursive: true, force: true });
  }
  return results;
}
