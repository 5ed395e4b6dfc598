/**
 * Writes a run's results: bench.json (everything, raw summaries included), bench.md
 * (the tables, the environment and the targets) and SVG charts, into one folder.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import { type BarRow, renderBarChart } from './charts';
import type { Environment } from './environment';
import type { KernelResult } from './kernels';
import type { CheckResult } from './golden';
import { LOW_RANK, type LayerResult, type Method, SMALL_MODES, variantName } from './layers';
import type { Summary } from './measure';
import type { MemoryResult } from './memory';
import type { ProfileResult } from './profile';
import type { DepthResult, LmShape, TransformerResult } from './transformer';

export interface BenchResults {
  schema: 'tera-peft-bench/1';
  command: string;
  startedAt: string;
  finishedAt: string;
  options: Record<string, unknown>;
  environment: Environment;
  kernels: KernelResult[];
  layers: LayerResult[];
  profile: ProfileResult[];
  memory: MemoryResult[];
  transformer: { steps: TransformerResult[]; depth: DepthResult[] };
  checks: CheckResult[];
  /** Why a suite or a column is empty (no torch, no GPU, a suite that failed). */
  notes: string[];
}

export interface Target {
  name: string;
  measured: string;
  limit: string;
  /** null: not measured in this run (see measured). */
  met: boolean | null;
}

const METHOD_NAMES: Record<Method, string> = { frozen: 'frozen Linear', tera: 'TeRA', vera: 'VeRA', lora: 'LoRA' };
const COLORS: Record<Method, [ours: string, torch: string]> = {
  frozen: ['#555555', '#bbbbbb'],
  tera: ['#1f77b4', '#9ecae9'],
  vera: ['#2ca02c', '#a6dba0'],
  lora: ['#d62728', '#f4a6a6'],
};

function fixed(value: number): string {
  if (value >= 100) return value.toFixed(0);
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

function time(s: Summary): string {
  return `${fixed(s.median)} (${fixed(s.min)}-${fixed(s.max)})`;
}

function ratio(s: Summary | null): string {
  return s === null ? '' : `${s.median.toFixed(2)}x`;
}

function percent(s: Summary | null): string {
  return s === null ? '' : `${(100 * s.median).toFixed(0)}%`;
}

function mib(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}

function threadsLabel(threads: number | null): string {
  return threads === null ? 'GPU' : `${threads}`;
}

function table(header: string[], rows: string[][]): string {
  return [
    `| ${header.join(' | ')} |`,
    `|${header.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.join(' | ')} |`),
  ].join('\n');
}

/**
 * The targets of issue 10 (fp32, CPU, d 4096 for the layers), each from this run's
 * interleaved figures: ratios are medians of per-repetition ratios.
 */
export function evaluateTargets(results: BenchResults): Target[] {
  const targets: Target[] = [];
  const missing = 'not measured in this run';
  const layer = (method: Method, tokens: number, threads: number, variant: string | null = null) =>
    results.layers.find(
      (l) =>
        l.device === 'cpu' &&
        l.threads === threads &&
        l.d === 4096 &&
        l.tokens === tokens &&
        l.method === method &&
        l.variant === variant,
    );
  const stepTarget = (name: string, row: LayerResult | undefined, limit: number) =>
    targets.push({
      name,
      measured: row ? `${ratio(row.vsFrozen)} (${row.path ?? ''})` : missing,
      limit: `<= ${limit}x`,
      met: row?.vsFrozen ? row.vsFrozen.median <= limit : null,
    });
  for (const threads of [1, 2]) {
    for (const [tokens, limit] of [
      [128, 2.2],
      [512, 1.8],
      [2048, 1.55],
    ]) {
      const threadsText = `${threads} thread${threads > 1 ? 's' : ''}`;
      stepTarget(`TeRA step / frozen, d 4096, T ${tokens}, ${threadsText}`, layer('tera', tokens, threads), limit);
      const small = variantName({ maxModeSize: SMALL_MODES });
      stepTarget(
        `TeRA ${small} (the issue's 16x16x16 modes) step / frozen, d 4096, T ${tokens}, ${threadsText}`,
        layer('tera', tokens, threads, small),
        limit,
      );
    }
  }
  for (const tokens of [128, 512]) {
    const lowRank = variantName({ maxRank: LOW_RANK });
    stepTarget(`TeRA ${lowRank} step / frozen, d 4096, T ${tokens}, 1 thread`, layer('tera', tokens, 1, lowRank), 1.15);
  }
  const kernel = (shape: string, name: string, threads: number) =>
    results.kernels.find(
      (k) =>
        k.device === 'cpu' &&
        k.threads === threads &&
        k.shape === shape &&
        k.kernel.startsWith(name) &&
        k.implementation === 'tera-peft',
    );
  const both = (shape: string, name: string) => {
    const one = kernel(shape, name, 1);
    const two = kernel(shape, name, 2);
    return { one, text: one ? `${percent(one.ofSgemm)}${two ? ` (2 threads ${percent(two.ofSgemm)})` : ''}` : missing };
  };
  const shapes = [...new Set(results.kernels.map((k) => k.shape))];
  for (const shape of shapes) {
    for (const name of ['reconstruct', 'scaleGrad']) {
      const { one, text } = both(shape, name);
      targets.push({
        name: `${name} of sgemm, ${shape}, 1 thread`,
        measured: text,
        limit: '>= 40%',
        met: one?.ofSgemm ? one.ofSgemm.median >= 0.4 : null,
      });
    }
    for (const which of ['first', 'middle', 'last']) {
      const { one, text } = both(shape, `modeProduct (${which} mode`);
      if (!one) continue;
      targets.push({
        name: `modeProduct, ${which} mode, of sgemm, ${shape}, 1 thread`,
        measured: text,
        limit: '>= 25%',
        met: one.ofSgemm ? one.ofSgemm.median >= 0.25 : null,
      });
    }
  }
  const tera = layer('tera', 512, 1);
  targets.push({
    name: 'TeRA step speed-up over the PyTorch reference, d 4096, T 512, 1 thread',
    measured: tera?.oursOverTorch
      ? `${(1 / tera.oursOverTorch.median).toFixed(2)}x`
      : tera
        ? 'no PyTorch in this run'
        : missing,
    limit: '>= 2.5x',
    met: tera?.oursOverTorch ? 1 / tera.oursOverTorch.median >= 2.5 : null,
  });
  for (const method of ['vera', 'lora'] as const) {
    const row = layer(method, 512, 1);
    targets.push({
      name: `${METHOD_NAMES[method]} step / frozen, d 4096, T 512, 1 thread`,
      measured: row ? ratio(row.vsFrozen) : missing,
      limit: '<= 1.3x',
      met: row?.vsFrozen ? row.vsFrozen.median <= 1.3 : null,
    });
  }
  const stack = results.memory.find((m) => m.device === 'cpu' && m.method === 'tera');
  const within = stack?.extraTensorBytes != null && stack.budgetBytes !== null;
  targets.push({
    name: `TeRA extra peak tensor memory over the frozen stack (${stack?.layers ?? 24} x ${stack?.d ?? 1024}^2)`,
    measured: within
      ? `${(stack.extraTensorBytes! / 2 ** 20).toFixed(3)} MiB (allowed ${(stack.budgetBytes! / 2 ** 20).toFixed(3)})`
      : missing,
    limit: 'one weight + shared factors (+ the l_n and their gradients)',
    met: within ? stack.extraTensorBytes! <= stack.budgetBytes! : null,
  });
  targets.push(...transformerTargets(results.transformer));
  return targets;
}

function lmLabel(shape: LmShape): string {
  const name = shape.family === 'gpt2' ? 'GPT-2' : 'LLaMA';
  return `${name} d ${shape.hidden} x ${shape.layers}, T ${shape.tokens}`;
}

/** TeRA on the attention projections against the frozen model and LoRA; its extra memory against depth. */
function transformerTargets(transformer: BenchResults['transformer']): Target[] {
  const targets: Target[] = [];
  for (const tera of transformer.steps.filter((s) => s.method === 'tera' && s.targets !== 'all-linear')) {
    const where = `${lmLabel(tera.shape)}, TeRA on ${tera.targets}`;
    targets.push({
      name: `LM step: ${where} vs frozen`,
      measured: ratio(tera.vsFrozen),
      limit: '<= 1.3x',
      met: tera.vsFrozen ? tera.vsFrozen.median <= 1.3 : null,
    });
    targets.push({
      name: `LM step: ${where} vs LoRA on the same targets`,
      measured: ratio(tera.vsLora),
      limit: '<= 1.1x',
      met: tera.vsLora ? tera.vsLora.median <= 1.1 : null,
    });
  }
  for (const row of [...transformer.steps, ...transformer.depth]) {
    if (row.allowedExtraBytes === null || row.extraTensorBytes === null) continue;
    targets.push({
      name: `LM extra peak tensor memory: ${lmLabel(row.shape)}, TeRA on ${row.targets}`,
      measured: `${mib(row.extraTensorBytes)} MiB`,
      limit: `<= ${mib(row.allowedExtraBytes)} MiB: shared core + factors per signature, one workspace per shape, the vectors`,
      met: row.extraTensorBytes <= row.allowedExtraBytes,
    });
  }
  return targets;
}

function environmentSection(env: Environment): string {
  const torch = env.torch.available
    ? `PyTorch ${env.torch.torch} (Python ${env.torch.python}, ${env.torch.executable}; BLAS ${env.torch.blas})`
    : `none: ${env.torch.reason}`;
  const lines = [
    `- tera-peft ${env.packageVersion}${env.gitCommit ? ` at ${env.gitCommit}` : ''}, addon ${env.addon}`,
    `- Node ${env.node}, ${env.os}`,
    `- CPU: ${env.cpuModel}, ${env.cores} cores (${env.simd}), ${env.memoryGiB} GiB`,
    `- BLAS: ${env.blas}`,
    `- GPU: ${env.gpu ? `${env.gpu}, driver ${env.cudaDriver}, runtime ${env.cudaRuntime}, ${env.cublas}` : `none (${env.gpuReason})`}`,
    `- PyTorch: ${torch}`,
    `- Load average (1 min) at start / end: ${env.loadAverage.start.toFixed(2)} / ${env.loadAverage.end?.toFixed(2) ?? '?'}`,
  ];
  return lines.join('\n');
}

function kernelSection(kernels: KernelResult[]): string {
  const rows = kernels.map((k) => [
    k.device,
    threadsLabel(k.threads),
    k.shape,
    k.kernel,
    k.implementation,
    time(k.ms),
    k.gflops === null ? '' : fixed(k.gflops),
    percent(k.ofSgemm),
    ratio(k.vsReconstruct),
  ]);
  return table(
    ['device', 'threads', 'shape', 'kernel', 'by', 'ms median (min-max)', 'GFLOP/s', 'of sgemm', 'time / reconstruct'],
    rows,
  );
}

function layerSection(layers: LayerResult[], torchNote: string): string {
  const rows = layers.map((l) => [
    l.device,
    threadsLabel(l.threads),
    `${l.d}`,
    `${l.tokens}`,
    METHOD_NAMES[l.method],
    l.config,
    l.path ?? '',
    time(l.ours),
    l.vsFrozen ? ratio(l.vsFrozen) : '1',
    l.torch ? time(l.torch) : torchNote,
    ratio(l.oursOverTorch),
    l.torchVsFrozen ? ratio(l.torchVsFrozen) : l.torch ? '1' : '',
  ]);
  return table(
    [
      'device',
      'threads',
      'd',
      'T',
      'method',
      'config',
      'path',
      'ours ms median (min-max)',
      'ours / frozen',
      'PyTorch ms',
      'ours / PyTorch',
      'PyTorch / its frozen',
    ],
    rows,
  );
}

function profileSection(profile: ProfileResult): string {
  const whole = profile.pieces.find((p) => p.name === 'whole tera step')!.ms.median;
  const frozen = profile.pieces.find((p) => p.name === 'whole frozen step')!.ms.median;
  const parts = profile.pieces.filter((p) => !p.name.startsWith('whole'));
  const sum = parts.reduce((total, p) => total + p.ms.median, 0);
  const frozenGemms = parts
    .filter((p) => p.name === 'GEMM y = x W^T' || p.name === 'GEMM dx = dY W')
    .reduce((total, p) => total + p.ms.median, 0);
  const rows = profile.pieces.map((p) => [
    p.name,
    time(p.ms),
    p.name.startsWith('whole') ? '' : `${((100 * p.ms.median) / whole).toFixed(0)}%`,
    p.flop === null ? '' : fixed(p.flop / p.ms.median / 1e6),
  ]);
  rows.push(
    ['sum of the pieces', fixed(sum), `${((100 * sum) / whole).toFixed(0)}%`, ''],
    ['whole merged TeRA step - sum (framework: fresh buffers, JS)', fixed(whole - sum), '', ''],
    ["sum of the pieces / the frozen step's two GEMMs", `${(sum / frozenGemms).toFixed(2)}x`, '', ''],
    ['measured: whole merged TeRA step / whole frozen step', `${(whole / frozen).toFixed(2)}x`, '', ''],
  );
  return [
    `Threads ${profile.threads}, d ${profile.d}, T ${profile.tokens}:`,
    table(['piece', 'ms median (min-max)', 'of the TeRA step', 'GFLOP/s'], rows),
  ].join('\n\n');
}

function memorySection(memory: MemoryResult[]): string {
  const optional = (bytes: number | null) => (bytes === null ? '' : mib(bytes));
  return table(
    [
      'device',
      'method',
      'layers',
      'd',
      'T',
      'peak tensor MiB',
      'extra over frozen MiB',
      'allowed extra MiB',
      'RSS growth MiB median (min-max)',
      'RSS extra over frozen MiB',
    ],
    memory.map((m) => [
      m.device,
      METHOD_NAMES[m.method],
      `${m.layers}`,
      `${m.d}`,
      `${m.tokens}`,
      mib(m.peakTensorBytes),
      optional(m.extraTensorBytes),
      optional(m.budgetBytes),
      m.rssGrowthBytes
        ? `${mib(m.rssGrowthBytes.median)} (${mib(m.rssGrowthBytes.min)}-${mib(m.rssGrowthBytes.max)}, ${m.rssGrowthBytes.reps} runs)`
        : '',
      optional(m.extraRssBytes),
    ]),
  );
}

function transformerSection(steps: TransformerResult[], torchNote: string): string {
  return table(
    [
      'model',
      'targets',
      'method',
      'adapter params',
      'ours ms median (min-max)',
      'ours tokens/s',
      'ours / frozen',
      'ours / LoRA',
      'peak tensor MiB',
      'extra over frozen MiB',
      'TeRA allowance MiB',
      'PyTorch ms',
      'PyTorch tokens/s',
      'PyTorch / its frozen',
    ],
    steps.map((s) => [
      lmLabel(s.shape),
      s.targets,
      METHOD_NAMES[s.method].replace('frozen Linear', 'frozen'),
      s.trainableParameters.toLocaleString('en-US'),
      time(s.ms),
      s.tokensPerSecond.toFixed(0),
      s.vsFrozen ? ratio(s.vsFrozen) : '1',
      ratio(s.vsLora),
      mib(s.peakTensorBytes),
      s.extraTensorBytes === null ? '' : mib(s.extraTensorBytes),
      s.allowedExtraBytes === null ? '' : mib(s.allowedExtraBytes),
      s.torch ? time(s.torch) : torchNote,
      s.torchTokensPerSecond === null ? '' : s.torchTokensPerSecond.toFixed(0),
      s.torchVsFrozen ? ratio(s.torchVsFrozen) : s.torch ? '1' : '',
    ]),
  );
}

function depthSection(depth: DepthResult[]): string {
  return table(
    ['GPT-2 blocks', 'T', 'method', 'targets', 'peak tensor MiB', 'extra over frozen MiB', 'TeRA allowance MiB'],
    depth.map((d) => [
      `${d.shape.layers}`,
      `${d.shape.tokens}`,
      METHOD_NAMES[d.method].replace('frozen Linear', 'frozen'),
      d.targets,
      mib(d.peakTensorBytes),
      d.extraTensorBytes === null ? '' : mib(d.extraTensorBytes),
      d.allowedExtraBytes === null ? '' : mib(d.allowedExtraBytes),
    ]),
  );
}

function checkSection(checks: CheckResult[]): string {
  return table(
    ['method', 'case', 'quantity', 'max abs error', 'max abs value', 'tolerance', 'pass'],
    checks.map((c) => [
      METHOD_NAMES[c.method],
      c.case,
      c.quantity,
      c.maxAbsError.toExponential(2),
      c.maxAbsReference.toExponential(2),
      c.tolerance.toExponential(1),
      c.pass ? 'yes' : 'NO',
    ]),
  );
}

export function renderMarkdown(results: BenchResults, targets: Target[], charts: string[] = []): string {
  const torchNote = results.environment.torch.available ? '' : 'no torch';
  const sections = [
    '# tera-peft benchmark results',
    `\`${results.command}\`, ${results.startedAt} to ${results.finishedAt}. Every time is the median of the timed repetitions after warm-up, with min and max; ratios are medians of per-repetition ratios of interleaved runs.`,
    environmentSection(results.environment),
    ...results.notes.map((n) => `> ${n}`),
  ];
  if (targets.some((t) => t.met !== null)) {
    sections.push(
      '## Targets',
      table(
        ['target', 'measured', 'limit', 'met'],
        targets.map((t) => [t.name, t.measured, t.limit, t.met === null ? '-' : t.met ? 'yes' : 'NO']),
      ),
    );
  }
  if (results.kernels.length) sections.push('## Kernels (fp32)', kernelSection(results.kernels));
  if (results.layers.length) {
    sections.push('## One adapted linear layer: forward + backward (fp32)', layerSection(results.layers, torchNote));
  }
  if (results.profile.length) {
    sections.push('## Profile of the TeRA layer step', ...results.profile.map(profileSection));
  }
  if (results.memory.length) sections.push('## Stack peak memory', memorySection(results.memory));
  if (results.transformer.steps.length) {
    sections.push(
      '## Language-model training step (CPU, fp32): loss forward + backward',
      transformerSection(results.transformer.steps, torchNote),
    );
  }
  if (results.transformer.depth.length) {
    sections.push('## Language-model peak memory against depth', depthSection(results.transformer.depth));
  }
  if (results.checks.length) sections.push('## Same outputs and gradients as PyTorch', checkSection(results.checks));
  if (charts.length) sections.push('## Charts', ...charts.map((file) => `![${file}](${file})`));
  return sections.join('\n\n') + '\n';
}

function runs<T extends { device: string; threads: number | null }>(items: T[]): [string, T[]][] {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const key = `${item.device}-${item.threads === null ? 'gpu' : `${item.threads}t`}`;
    groups.set(key, [...(groups.get(key) ?? []), item]);
  }
  return [...groups];
}

function kernelChart(key: string, kernels: KernelResult[]): string {
  const peak = Math.max(...kernels.filter((k) => k.kernel.startsWith('sgemm')).map((k) => k.gflops ?? 0));
  let previousShape = '';
  const rows: BarRow[] = kernels
    .filter((k) => k.gflops !== null)
    .map((k) => {
      const row = {
        label: `${k.shape} ${k.kernel}`,
        value: k.gflops!,
        color: k.implementation === 'PyTorch' ? '#f0a040' : k.kernel.startsWith('sgemm') ? '#555555' : '#1f77b4',
        groupStart: k.shape !== previousShape,
      };
      previousShape = k.shape;
      return row;
    });
  return renderBarChart({
    title: `Kernel GFLOP/s (${key}), fp32`,
    axisLabel: 'GFLOP/s (median)',
    rows,
    scale: 'linear',
    reference: { value: peak, label: `measured sgemm peak ${fixed(peak)}` },
    legend: [
      ['tera-peft kernels', '#1f77b4'],
      ['sgemm', '#555555'],
      ['PyTorch', '#f0a040'],
    ],
  });
}

function layerChart(key: string, layers: LayerResult[]): string {
  const rows: BarRow[] = [];
  let previous = '';
  for (const l of layers) {
    const shape = `d ${l.d}, T ${l.tokens}`;
    rows.push({
      label: `${shape} ${METHOD_NAMES[l.method]}${l.variant === null ? '' : `, ${l.variant}`}`,
      value: l.ours.median,
      color: COLORS[l.method][0],
      groupStart: shape !== previous,
    });
    if (l.torch) {
      rows.push({
        label: `${shape} ${METHOD_NAMES[l.method]} (PyTorch)`,
        value: l.torch.median,
        color: COLORS[l.method][1],
      });
    }
    previous = shape;
  }
  return renderBarChart({
    title: `Training step of one layer, forward + backward (${key}), fp32`,
    axisLabel: 'milliseconds per step (median, log scale)',
    rows,
    scale: 'log',
    legend: (Object.keys(METHOD_NAMES) as Method[]).map((m) => [METHOD_NAMES[m], COLORS[m][0]]),
  });
}

/** Writes bench.json, bench.md and the charts into `outDir`; returns the paths written. */
export function writeReport(results: BenchResults, outDir: string): string[] {
  fs.mkdirSync(outDir, { recursive: true });
  const targets = evaluateTargets(results);
  const charts: [string, string][] = [
    ...runs(results.kernels).map(([key, k]): [string, string] => [`kernels-${key}.svg`, kernelChart(key, k)]),
    ...runs(results.layers).map(([key, l]): [string, string] => [`layers-${key}.svg`, layerChart(key, l)]),
  ];
  const files: [string, string][] = [
    ['bench.json', JSON.stringify({ ...results, targets }, null, 2) + '\n'],
    [
      'bench.md',
      renderMarkdown(
        results,
        targets,
        charts.map(([name]) => name),
      ),
    ],
    ...charts,
  ];
  return files.map(([name, text]) => {
    const file = path.join(outDir, name);
    fs.writeFileSync(file, text);
    return file;
  });
}
