/**
 * What each fine-tuning method sends per training step, measured rather than
 * computed: one 4096 x 4096 Linear and the MNIST demo's MLP (784-128-64-10),
 * with TeRA, VeRA, LoRA and full fine-tuning; every trainable parameter gets a
 * gradient, then averageGradients runs `--steps` times under the launcher this
 * script was started with. Rank 0 prints, per case, the bytes each rank handed
 * to MPI per step (tera.distributed.stats: the gradient bucket and its 16-byte
 * layout check) and the median time of one exchange.
 *
 *   mpirun -np 2 npx tsx scripts/distributed-traffic.ts [--steps 20]
 */
import { parseArgs } from 'node:util';

import * as tera from '../lib';

const dist = tera.distributed;

interface Case {
  model: string;
  method: string;
  build: () => { module: tera.nn.Module; params: tera.nn.Parameter[] };
}

function adapted(build: () => tera.nn.Module, config: () => tera.adapters.AdapterConfig) {
  return () => {
    const peft = tera.injectAdapter(build().requiresGrad(false), config());
    return { module: peft.model, params: peft.trainableParameters() };
  };
}

function full(build: () => tera.nn.Module) {
  return () => {
    const module = build().requiresGrad(true);
    return { module, params: module.parameters() };
  };
}

const layer = () => new tera.nn.Sequential(new tera.nn.Linear(4096, 4096, { seed: 1 }));
const mlp = () => new tera.nn.MLP([784, 128, 64, 10], { seed: 7 });
const DEMO_TARGETS = ['0', '2', '4'];

const CASES: Case[] = [
  { model: '4096 x 4096', method: 'TeRA', build: adapted(layer, () => new tera.TeraConfig({ targetModules: ['0'] })) },
  {
    model: '4096 x 4096',
    method: 'VeRA r 256',
    build: adapted(layer, () => new tera.VeraConfig({ targetModules: ['0'], r: 256 })),
  },
  {
    model: '4096 x 4096',
    method: 'LoRA r 16',
    build: adapted(layer, () => new tera.LoraConfig({ targetModules: ['0'], r: 16 })),
  },
  { model: '4096 x 4096', method: 'full fine-tuning', build: full(layer) },
  {
    model: 'demo MLP',
    method: 'TeRA',
    build: adapted(mlp, () => new tera.TeraConfig({ targetModules: DEMO_TARGETS })),
  },
  {
    model: 'demo MLP',
    method: 'VeRA r 256',
    build: adapted(mlp, () => new tera.VeraConfig({ targetModules: DEMO_TARGETS, r: 256 })),
  },
  {
    model: 'demo MLP',
    method: 'LoRA r 8',
    build: adapted(mlp, () => new tera.LoraConfig({ targetModules: DEMO_TARGETS, r: 8 })),
  },
  { model: 'demo MLP', method: 'full fine-tuning', build: full(mlp) },
];

function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes.toFixed(0)} B`;
  if (bytes < 1024 ** 2) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 ** 2).toFixed(1)} MiB`;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function measure(c: Case, steps: number): string[] {
  const { module, params } = c.build();
  for (const p of params) p.grad = tera.random.normal(p.shape, { seed: 2, key: p.size });
  dist.resetStats();
  const times: number[] = [];
  for (let step = 0; step < steps; step++) {
    const started = performance.now();
    dist.averageGradients(params, { count: 32 });
    times.push(performance.now() - started);
  }
  const bytes = dist.stats().averageGradients.bytes / steps;
  module.dispose();
  const values = params.reduce((n, p) => n + p.size, 0);
  return [c.model, c.method, values.toLocaleString('en-US'), formatBytes(bytes), median(times).toFixed(2)];
}

function main(): void {
  const { values } = parseArgs({ options: { steps: { type: 'string', default: '20' } } });
  const steps = Number(values.steps);
  if (!Number.isInteger(steps) || steps < 1) throw new Error(`--steps must be a positive integer, got ${values.steps}`);
  dist.init();
  const rows = CASES.map((c) => measure(c, steps));
  const { worldSize, mpiLibrary, threads } = dist.info();
  dist.log(`${worldSize} ranks, ${mpiLibrary ?? 'no MPI'}, ${threads} thread(s) per rank, ${steps} steps per case\n`);
  dist.log(
    [
      '| model | method | trainable values | sent per rank per step | ms per exchange |',
      '| --- | --- | ---: | ---: | ---: |',
      ...rows.map((row) => `| ${row.join(' | ')} |`),
    ].join('\n'),
  );
  dist.finalize();
}

main();
