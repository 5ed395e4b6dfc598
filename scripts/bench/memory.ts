/**
 * Peak memory of a stack of adapted layers against the frozen stack. Each method runs
 * in a fresh child process (this file with --child), so peaks do not mix: it builds
 * the stack, runs a few training steps, and reports its peak resident set.
 * TeRA's target: its extra peak over the frozen stack stays within one layer's weight
 * plus the shared frozen factors, whatever the depth (not d^2 per layer).
 */
import { spawnSync } from 'node:child_process';

import { autograd, random, setNumThreads } from '../../lib';
import { type BenchModel, type Method, buildModel, teraShapeOf, trainingStep } from './layers';
import { type SuiteContext, type Summary, summarize } from './measure';

export interface MemoryResult {
  device: 'cpu' | 'cuda';
  method: Method;
  layers: number;
  d: number;
  tokens: number;
  /** Peak resident set of a child process (CPU), over `runs` fresh children. */
  peakBytes: Summary;
  /** Median peak over the frozen stack's median peak; null for the frozen stack. */
  extraBytes: number | null;
  /** What the target allows as extra: one layer's weight plus the shared frozen factors (TeRA only). */
  budgetBytes: number | null;
}

interface ChildSpec {
  method: Method;
  layers: number;
  d: number;
  tokens: number;
  steps: number;
  threads: number;
}

const FLOAT_BYTES = 4;

function runChild(spec: ChildSpec): void {
  setNumThreads(spec.threads);
  const model: BenchModel = buildModel({
    method: spec.method,
    layers: spec.layers,
    dOut: spec.d,
    dIn: spec.d,
    device: 'cpu',
  });
  // The input needs a gradient in every variant, so the frozen stack back-propagates too.
  const x = new autograd.Var(random.normal([spec.tokens, spec.d], { seed: 3 }), { requiresGrad: true });
  const dy = random.normal([spec.tokens, spec.d], { seed: 4 });
  for (let step = 0; step < spec.steps; step++) trainingStep(model, x, dy);
  process.stdout.write(JSON.stringify({ peakBytes: process.resourceUsage().maxRSS * 1024 }) + '\n');
}

function measureInChild(spec: ChildSpec): number {
  // process.execArgv carries tsx's loader, so the child runs this TypeScript file too.
  const child = spawnSync(process.execPath, [...process.execArgv, __filename, '--child', JSON.stringify(spec)], {
    encoding: 'utf8',
    timeout: 600_000,
  });
  if (child.status !== 0) {
    throw new Error(
      `memory child for ${spec.method} failed (${child.error?.message ?? `exit ${child.status}`}): ${child.stderr.trim()}`,
    );
  }
  const lastLine = child.stdout.trim().split('\n').pop()!;
  return (JSON.parse(lastLine) as { peakBytes: number }).peakBytes;
}

/** TeRA's allowance: one [d, d] weight plus the shared core and factors of its signature. */
function teraBudget(d: number): number {
  const shape = teraShapeOf(d, d);
  const core = shape.ranks.reduce((a, r) => a * r, 1);
  const factors = shape.modes.reduce((sum, mode, n) => sum + mode * shape.ranks[n], 0);
  return (d * d + core + factors) * FLOAT_BYTES;
}

export async function runMemory(
  context: SuiteContext,
  options: { quick: boolean; methods: Method[] },
): Promise<MemoryResult[]> {
  // A peak resident set varies by about a MiB between identical runs (heap growth, allocator arenas).
  const runs = options.quick ? 1 : 3;
  const base = {
    layers: 24,
    d: 1024,
    tokens: options.quick ? 32 : 128,
    steps: options.quick ? 2 : 3,
    threads: context.threads[0],
  };
  const methods: Method[] = ['frozen', ...options.methods.filter((m) => m !== 'frozen')];
  const peaks = new Map<Method, number[]>(methods.map((m) => [m, []]));
  for (let run = 0; run < runs; run++) {
    for (const method of methods) {
      context.log(`memory: ${base.layers} x ${base.d}^2 stack, ${method}, in a child process (${run + 1}/${runs})`);
      peaks.get(method)!.push(measureInChild({ ...base, method }));
    }
  }
  const frozen = summarize(peaks.get('frozen')!).median;
  return methods.map((method) => ({
    device: 'cpu',
    method,
    layers: base.layers,
    d: base.d,
    tokens: base.tokens,
    peakBytes: summarize(peaks.get(method)!),
    extraBytes: method === 'frozen' ? null : summarize(peaks.get(method)!).median - frozen,
    budgetBytes: method === 'tera' ? teraBudget(base.d) : null,
  }));
}

if (require.main === module && process.argv[2] === '--child') runChild(JSON.parse(process.argv[3]) as ChildSpec);
