/**
 * Peak memory of a stack of adapted layers against the frozen stack. Each method runs
 * in a fresh child process (this file with --child), so peaks do not mix: it builds
 * the stack, runs a few training steps, and reports
 * - the peak bytes of live tensors: every tensor's memory comes from the addon's
 *   Storage, which the child counts (exact, the same in every run; on a GPU these are
 *   the allocated device bytes);
 * - on the CPU, the growth of its resident set: peak (VmHWM) minus the RSS just before
 *   the stack is built. glibc's mmap threshold is pinned (MALLOC_MMAP_THRESHOLD_) so
 *   that freed tensors go back to the system and RSS follows live memory rather than
 *   the allocator's history; it still varies by a few MiB between identical runs.
 * TeRA's target: its extra peak over the frozen stack stays within one layer's weight
 * plus the shared frozen factors, whatever the depth (not d^2 per layer).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';

import { autograd, random, setNumThreads } from '../../lib';
import { native } from '../../lib/native/loader';
import { type Method, buildModel, teraShapeOf, trainingStep } from './layers';
import { type SuiteContext, type Summary, summarize } from './measure';

export interface MemoryResult {
  device: 'cpu' | 'cuda';
  method: Method;
  layers: number;
  d: number;
  tokens: number;
  /** Peak bytes of live tensors. */
  peakTensorBytes: number;
  /** Over the frozen stack's; null for the frozen stack. */
  extraTensorBytes: number | null;
  /** Peak RSS minus the RSS before the stack was built, over several fresh children (CPU only). */
  rssGrowthBytes: Summary | null;
  /** Median growth over the frozen stack's median growth. */
  extraRssBytes: number | null;
  /** What the target allows TeRA as extra (see teraBudget); null for the others. */
  budgetBytes: number | null;
}

interface ChildSpec {
  method: Method;
  device: 'cpu' | 'cuda';
  layers: number;
  d: number;
  tokens: number;
  steps: number;
  threads: number;
}

interface ChildReport {
  peakTensorBytes: number;
  rssGrowthBytes: number;
}

const FLOAT_BYTES = 4;
// glibc's initial threshold, pinned: blocks of 128 KiB and more are mapped and unmapped.
const MMAP_THRESHOLD = '131072';

function statusKiB(field: 'VmRSS' | 'VmHWM'): number {
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(fs.readFileSync('/proc/self/status', 'utf8'));
  if (!match) throw new Error(`no ${field} in /proc/self/status (the memory suite needs Linux)`);
  return Number(match[1]);
}

/**
 * Counts live tensor bytes from here on by wrapping the addon's Storage class. peak(): the most bytes
 * live at once since the start or the last reset(), above what was live at that moment.
 */
export function countTensorBytes(): { peak(): number; reset(): void } {
  const binding = native();
  let live = 0;
  let base = 0;
  let peak = 0;
  class CountedStorage extends binding.Storage {
    constructor(length: number, device: 'cpu' | 'cuda') {
      super(length, device);
      live += length * FLOAT_BYTES;
      peak = Math.max(peak, live);
    }

    override release(): void {
      const wasLive = !this.disposed;
      super.release();
      if (wasLive && this.disposed) live -= this.length * FLOAT_BYTES;
    }
  }
  binding.Storage = CountedStorage;
  return {
    peak: () => peak - base,
    reset: () => {
      base = peak = live;
    },
  };
}

function runChild(spec: ChildSpec): void {
  setNumThreads(spec.threads);
  // The input needs a gradient in every variant, so the frozen stack back-propagates too.
  const x = new autograd.Var(random.normal([spec.tokens, spec.d], { seed: 3, device: spec.device }), {
    requiresGrad: true,
  });
  const dy = random.normal([spec.tokens, spec.d], { seed: 4, device: spec.device });
  const baselineKiB = statusKiB('VmRSS');
  const counter = countTensorBytes();
  const model = buildModel({
    method: spec.method,
    layers: spec.layers,
    dOut: spec.d,
    dIn: spec.d,
    device: spec.device,
  });
  for (let step = 0; step < spec.steps; step++) trainingStep(model, x, dy);
  const report: ChildReport = {
    peakTensorBytes: counter.peak(),
    rssGrowthBytes: (statusKiB('VmHWM') - baselineKiB) * 1024,
  };
  process.stdout.write(JSON.stringify(report) + '\n');
}

function measureInChild(spec: ChildSpec): ChildReport {
  // process.execArgv carries tsx's loader, so the child runs this TypeScript file too.
  const child = spawnSync(process.execPath, [...process.execArgv, __filename, '--child', JSON.stringify(spec)], {
    encoding: 'utf8',
    timeout: 600_000,
    env: { ...process.env, MALLOC_MMAP_THRESHOLD_: MMAP_THRESHOLD },
  });
  if (child.status !== 0) {
    const why = child.error?.message ?? `exit ${child.status}`;
    throw new Error(`memory child for ${spec.method} failed (${why}): ${child.stderr.trim()}`);
  }
  return JSON.parse(child.stdout.trim().split('\n').pop()!) as ChildReport;
}

/**
 * TeRA's allowance: one [d, d] weight plus the shared core and factors of its signature,
 * plus what the adapter is made of anyway: every layer's l_n and their gradients.
 */
function teraBudget(d: number, layers: number): number {
  const shape = teraShapeOf(d, d);
  const core = shape.ranks.reduce((a, r) => a * r, 1);
  const factors = shape.modes.reduce((sum, mode, n) => sum + mode * shape.ranks[n], 0);
  const vectors = shape.ranks.reduce((a, r) => a + r, 0);
  return (d * d + core + factors + 2 * layers * vectors) * FLOAT_BYTES;
}

export async function runMemory(
  context: SuiteContext,
  options: { quick: boolean; methods: Method[] },
): Promise<MemoryResult[]> {
  const stack = { layers: 24, d: 1024, tokens: options.quick ? 32 : 128, steps: 3, threads: context.threads[0] };
  // Tensor bytes are exact; RSS needs a few runs to show its spread.
  const runs = options.quick ? 1 : 3;
  const methods: Method[] = ['frozen', ...options.methods.filter((m) => m !== 'frozen')];
  const results: MemoryResult[] = [];
  for (const device of context.devices) {
    const reports = new Map<Method, ChildReport[]>(methods.map((m) => [m, []]));
    for (let run = 0; run < (device === 'cpu' ? runs : 1); run++) {
      for (const method of methods) {
        context.log(`memory: ${stack.layers} x ${stack.d}^2 stack, ${method} on ${device}, child ${run + 1}`);
        reports.get(method)!.push(measureInChild({ ...stack, method, device }));
      }
    }
    const tensorPeak = (m: Method) => reports.get(m)![0].peakTensorBytes;
    const rss = (m: Method) => summarize(reports.get(m)!.map((r) => r.rssGrowthBytes));
    for (const method of methods) {
      const frozen = method === 'frozen';
      results.push({
        device,
        method,
        layers: stack.layers,
        d: stack.d,
        tokens: stack.tokens,
        peakTensorBytes: tensorPeak(method),
        extraTensorBytes: frozen ? null : tensorPeak(method) - tensorPeak('frozen'),
        rssGrowthBytes: device === 'cpu' ? rss(method) : null,
        extraRssBytes: device === 'cpu' && !frozen ? rss(method).median - rss('frozen').median : null,
        budgetBytes: method === 'tera' ? teraBudget(stack.d, stack.layers) : null,
      });
    }
  }
  return results;
}

if (require.main === module && process.argv[2] === '--child') runChild(JSON.parse(process.argv[3]) as ChildSpec);
