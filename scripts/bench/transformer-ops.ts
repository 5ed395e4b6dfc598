/**
 * `npx tsx scripts/bench/transformer-ops.ts [--threads N] [--reps N]`: times the transformer ops
 * of lib/autograd/transformer.ts at GPT-2-small shapes (forward + backward, CPU), next to the same
 * computation in PyTorch (eager ops: torch 1.13 has no fused attention on the CPU) when a Python
 * with torch is found (TERA_BENCH_PYTHON, python3, /usr/bin/python3). Prints the minimum and the
 * median of the repetitions in milliseconds (on a loaded machine the minimum is the least disturbed
 * run); a figure, not a test.
 */
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';

import * as tera from '../../lib';

const ag = tera.autograd;

interface Case {
  name: string;
  /** Runs forward + backward once; returns nothing the timer needs. */
  run: () => void;
  /** The same in PyTorch: statements run per repetition, after `setup`. */
  torchSetup: string;
  torchStep: string;
}

interface Timing {
  min: number;
  median: number;
}

function summarize(samples: number[]): Timing {
  const sorted = [...samples].sort((a, b) => a - b);
  return { min: sorted[0], median: sorted[Math.floor(sorted.length / 2)] };
}

function time(run: () => void, reps: number): Timing {
  run(); // warm-up: first-touch allocations, OpenBLAS buffers
  const samples: number[] = [];
  for (let r = 0; r < reps; r++) {
    const start = process.hrtime.bigint();
    run();
    samples.push(Number(process.hrtime.bigint() - start) / 1e6);
  }
  return summarize(samples);
}

function leaf(shape: number[], seed: number): tera.autograd.Var {
  return new ag.Var(tera.random.normal(shape, { seed }), { requiresGrad: true });
}

function cases(): Case[] {
  const [B, H, T, D, d, V] = [1, 12, 512, 64, 768, 50257];
  const q = leaf([B, H, T, D], 1);
  const k = leaf([B, H, T, D], 2);
  const v = leaf([B, H, T, D], 3);
  const x = leaf([B, T, d], 4);
  const gamma = leaf([d], 5);
  const beta = leaf([d], 6);
  const logits = leaf([B * T, V], 7);
  const labels = Array.from({ length: B * T }, (_, i) => (i * 7919) % V);
  const seedAttention = tera.ones([B, H, T, D]);
  const seedNorm = tera.ones([B, T, d]);
  const zero = (...vars: tera.autograd.Var[]) => vars.forEach((p) => p.zeroGrad());
  const qkv = `q = torch.randn(${B}, ${H}, ${T}, ${D}, requires_grad=True); k = torch.randn_like(q, requires_grad=True); v = torch.randn_like(q, requires_grad=True)
mask = torch.ones(${T}, ${T}).tril().bool(); g = torch.ones_like(q)`;
  return [
    {
      name: `attention causal B ${B}, H ${H}, T ${T}, D ${D}: forward + backward`,
      run: () => {
        ag.tidy(() => ag.attention(q, k, v, { causal: true }).backward(seedAttention));
        zero(q, k, v);
      },
      torchSetup: qkv,
      torchStep: `s = (q @ k.transpose(-1, -2)) * ${1 / Math.sqrt(D)}
p = s.masked_fill(~mask, float('-inf')).softmax(-1)
(p @ v).backward(g); q.grad = k.grad = v.grad = None`,
    },
    {
      name: `attention causal B ${B}, H ${H}, T ${T}, D ${D}: forward only`,
      run: () => ag.tidy(() => ag.noGrad(() => ag.attention(q, k, v, { causal: true }))),
      torchSetup: qkv,
      torchStep: `with torch.no_grad():
    s = (q @ k.transpose(-1, -2)) * ${1 / Math.sqrt(D)}
    o = s.masked_fill(~mask, float('-inf')).softmax(-1) @ v`,
    },
    {
      name: `layerNorm [${B * T}, ${d}]: forward + backward`,
      run: () => {
        ag.tidy(() => ag.layerNorm(x, gamma, beta).backward(seedNorm));
        zero(x, gamma, beta);
      },
      torchSetup: `x = torch.randn(${B}, ${T}, ${d}, requires_grad=True); w = torch.randn(${d}, requires_grad=True); b = torch.randn(${d}, requires_grad=True); g = torch.ones_like(x)`,
      torchStep: `torch.nn.functional.layer_norm(x, (${d},), w, b).backward(g); x.grad = w.grad = b.grad = None`,
    },
    {
      name: `crossEntropy [${B * T}, ${V}]: forward + backward`,
      run: () => {
        ag.tidy(() => ag.crossEntropy(logits, labels).backward());
        zero(logits);
      },
      torchSetup: `x = torch.randn(${B * T}, ${V}, requires_grad=True); y = torch.tensor([(i * 7919) % ${V} for i in range(${B * T})])`,
      torchStep: `torch.nn.functional.cross_entropy(x, y).backward(); x.grad = None`,
    },
  ];
}

function torchTimes(all: Case[], threads: number, reps: number): (Timing | string)[] {
  const candidates = [process.env.TERA_BENCH_PYTHON, 'python3', '/usr/bin/python3'].filter(Boolean) as string[];
  const program = `
import time, torch, json, sys
torch.set_num_threads(${threads}); torch.manual_seed(0)
out = []
for setup, step in json.loads(sys.stdin.read()):
    env = {'torch': torch}
    exec(setup, env)
    code = compile(step, 'step', 'exec')
    exec(code, env)
    samples = []
    for _ in range(${reps}):
        t = time.perf_counter(); exec(code, env); samples.append((time.perf_counter() - t) * 1e3)
    samples.sort()
    out.append({'min': samples[0], 'median': samples[len(samples) // 2]})
print(json.dumps({'torch': torch.__version__, 'times': out}))
`;
  const input = JSON.stringify(all.map((c) => [c.torchSetup, c.torchStep]));
  let reason = 'no Python with torch';
  for (const python of candidates) {
    const result = spawnSync(python, ['-c', program], { input, encoding: 'utf8', timeout: 600_000 });
    if (result.status === 0) {
      const reply = JSON.parse(result.stdout) as { torch: string; times: Timing[] };
      console.log(`PyTorch ${reply.torch} (${python}), ${threads} thread(s)`);
      return reply.times;
    }
    reason = `${python}: ${(result.stderr || String(result.error)).trim().split('\n').pop()}`;
  }
  return all.map(() => `unavailable (${reason})`);
}

function main(): void {
  const { values } = parseArgs({ options: { threads: { type: 'string' }, reps: { type: 'string' } } });
  const threads = Number(values.threads ?? tera.getNumThreads());
  const reps = Number(values.reps ?? 11);
  tera.setNumThreads(threads);
  const all = cases();
  const ours = all.map((c) => time(c.run, reps));
  const theirs = torchTimes(all, threads, reps);
  const show = (t: Timing) => `${t.min.toFixed(1)} (median ${t.median.toFixed(1)})`;
  console.log(`tera-peft, ${threads} thread(s), minimum of ${reps} in ms (median):`);
  all.forEach((c, i) => {
    const t = theirs[i];
    const vs = typeof t === 'string' ? t : `${show(t)}; ours / torch ${(ours[i].min / t.min).toFixed(2)}`;
    console.log(`  ${c.name}: ours ${show(ours[i])}, torch ${vs}`);
  });
}

main();
