/**
 * `npm run bench [-- options]`: the benchmark suite. Runs the chosen suites (kernels,
 * layers, memory, check), side by side with the PyTorch reference when Python can
 * import torch, and writes bench.json, bench.md and SVG charts to the output folder.
 */
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';

import { backendInfo } from '../../lib';
import { collectEnvironment, repoRoot } from './environment';
import { kernelShapes, runKernels } from './kernels';
import { runChecks } from './golden';
import { type Method, runLayers } from './layers';
import type { Schedule, SuiteContext } from './measure';
import { runMemory } from './memory';
import { runProfile } from './profile';
import { type BenchResults, evaluateTargets, renderMarkdown, writeReport } from './report';
import { TorchWorker } from './torch';
import { runTransformer } from './transformer';

const SUITES = ['check', 'kernels', 'layers', 'profile', 'memory', 'transformer'] as const;
type Suite = (typeof SUITES)[number];

const USAGE = `Usage: npm run bench -- [options]
  --quick              a small version (under two minutes): 1 thread, 3 repetitions, d 1024 only, T 64 models
  --cases LIST         suites to run, from ${SUITES.join(',')} (default: all)
  --shapes LIST        kernel shapes whose name contains one of these (e.g. 1024x1024,16^6)
  --d LIST             layer sizes (default 1024,4096)
  --tokens LIST        tokens per step for the layer cases (default 128,512,2048)
  --methods LIST       layer methods, from frozen,tera,vera,lora (default: all)
  --threads LIST       CPU thread counts (default 1,2)
  --device LIST        cpu and/or cuda (default: cpu, and cuda when a GPU is present)
  --reps N             timed repetitions per case (default: fit a time budget, 5 to 25)
  --warmup N           untimed runs of each contender first (default 1)
  --budget SECONDS     time aim for one case's repetitions (default 20)
  --out DIR            where to write bench.json, bench.md and charts (default bench-results/<run>)
  --python EXE         the Python to run the PyTorch reference with (default python3, then /usr/bin/python3)
  --no-torch           skip the PyTorch reference`;

function list(value: string | undefined, fallback: string[]): string[] {
  return value === undefined
    ? fallback
    : value
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
}

function numbers(value: string | undefined, fallback: number[], what: string): number[] {
  return list(value, fallback.map(String)).map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1) throw new Error(`${what}: '${s}' is not a positive integer`);
    return n;
  });
}

function pick<T extends string>(values: string[], allowed: readonly T[], what: string): T[] {
  for (const v of values) {
    if (!allowed.includes(v as T)) throw new Error(`${what}: unknown '${v}' (choose from ${allowed.join(', ')})`);
  }
  return values as T[];
}

function parseOptions(argv: string[]) {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: 'boolean', default: false },
      cases: { type: 'string' },
      shapes: { type: 'string' },
      d: { type: 'string' },
      tokens: { type: 'string' },
      methods: { type: 'string' },
      threads: { type: 'string' },
      device: { type: 'string' },
      reps: { type: 'string' },
      warmup: { type: 'string' },
      budget: { type: 'string' },
      out: { type: 'string' },
      python: { type: 'string' },
      'no-torch': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  const quick = values.quick;
  const cases = pick(list(values.cases, [...SUITES]), SUITES, '--cases');
  const cudaPresent = backendInfo().cuda.available;
  const devices = pick(
    list(values.device, cudaPresent ? ['cpu', 'cuda'] : ['cpu']),
    ['cpu', 'cuda'] as const,
    '--device',
  );
  if (devices.includes('cuda') && !cudaPresent) throw new Error(`--device cuda: ${backendInfo().cuda.reason}`);
  const shapeFilter = list(values.shapes, quick ? ['1024x1024'] : []);
  const reps = values.reps === undefined ? (quick ? 3 : undefined) : numbers(values.reps, [], '--reps')[0];
  const schedule: Schedule = {
    warmup: values.warmup === undefined ? 1 : Number(values.warmup),
    reps,
    budgetMs: 1000 * (values.budget === undefined ? 20 : Number(values.budget)),
    minReps: 5,
    maxReps: 25,
  };
  const runName = quick ? 'quick' : cases.length === SUITES.length ? 'full' : cases.join('-');
  return {
    help: values.help,
    quick,
    cases,
    devices,
    threads: numbers(values.threads, quick ? [1] : [1, 2], '--threads'),
    kernelShapes: kernelShapes.filter((s) => shapeFilter.length === 0 || shapeFilter.some((f) => s.name.includes(f))),
    layerSizes: numbers(values.d, quick ? [1024] : [1024, 4096], '--d'),
    tokens: numbers(values.tokens, quick ? [128] : [128, 512, 2048], '--tokens'),
    methods: pick(
      list(values.methods, ['frozen', 'tera', 'vera', 'lora']),
      ['frozen', 'tera', 'vera', 'lora'] as const,
      '--methods',
    ) as Method[],
    schedule,
    out: path.resolve(values.out ?? path.join(repoRoot, 'bench-results', runName)),
    python: values.python,
    torch: !values['no-torch'],
  };
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  if (options.help) {
    console.log(USAGE);
    return;
  }
  const startedAt = new Date().toISOString();
  const log = (line: string) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}`);

  const started = options.torch
    ? TorchWorker.start(options.python)
    : { available: false as const, reason: 'skipped (--no-torch)' };
  const torch = 'worker' in started ? started.worker : null;
  const environment = collectEnvironment('worker' in started ? await started.info : started);
  const notes: string[] = [];
  if (!torch) notes.push(`The PyTorch columns are empty: ${'reason' in started ? started.reason : ''}.`);
  if (!options.devices.includes('cuda'))
    notes.push(`No GPU figures: ${environment.gpuReason ?? 'not requested (--device)'}.`);

  const torchCuda = environment.torch.available && environment.torch.cuda !== null;
  if (torch && options.devices.includes('cuda') && !torchCuda) {
    notes.push('The GPU rows have no PyTorch columns: this PyTorch cannot use the GPU.');
  }
  const context: SuiteContext = {
    schedule: options.schedule,
    threads: options.threads,
    devices: options.devices,
    torch,
    torchCuda,
    log,
  };
  const results: BenchResults = {
    schema: 'tera-peft-bench/1',
    command: ['npm run bench --', ...process.argv.slice(2)].join(' '),
    startedAt,
    finishedAt: '',
    options: { ...options, kernelShapes: options.kernelShapes.map((s) => s.name) },
    environment,
    kernels: [],
    layers: [],
    profile: [],
    memory: [],
    transformer: { steps: [], depth: [] },
    checks: [],
    notes,
  };
  let failed = false;
  const suites: Record<Suite, () => Promise<void>> = {
    check: async () => {
      results.checks = await runChecks(context, options.methods);
      if (!torch) notes.push('Outputs and gradients are checked against the PyTorch golden files in test/golden.');
    },
    kernels: async () => {
      results.kernels = await runKernels(context, options.kernelShapes);
    },
    layers: async () => {
      results.layers = await runLayers(context, {
        sizes: options.layerSizes,
        tokens: options.tokens,
        methods: options.methods,
        lowRankTokens: [128, 512],
      });
    },
    profile: async () => {
      const d = Math.max(...options.layerSizes);
      const tokens = options.tokens.includes(512) ? 512 : options.tokens[0];
      results.profile = await runProfile(context, d, tokens);
    },
    memory: async () => {
      results.memory = await runMemory(context, { quick: options.quick, methods: options.methods });
    },
    transformer: async () => {
      results.transformer = await runTransformer(context, { quick: options.quick, methods: options.methods });
    },
  };
  try {
    for (const suite of SUITES.filter((s) => options.cases.includes(s))) {
      try {
        await suites[suite]();
      } catch (error) {
        failed = true;
        notes.push(`The ${suite} suite failed: ${(error as Error).message}`);
        log(`${suite} failed: ${(error as Error).stack}`);
      }
    }
  } finally {
    torch?.close();
  }
  if (results.checks.some((c) => !c.pass)) failed = true;
  environment.loadAverage.end = os.loadavg()[0];
  results.finishedAt = new Date().toISOString();
  const files = writeReport(results, options.out);
  console.log(renderMarkdown(results, evaluateTargets(results)));
  log(`wrote ${files.map((f) => path.relative(process.cwd(), f)).join(', ')}`);
  if (failed) process.exitCode = 1;
}

main().catch((error: Error) => {
  console.error(error.message);
  process.exitCode = 2;
});
