/**
 * A language model's training step: a stack of GPT-2-small-shaped blocks (d 768,
 * 12 heads) and a LLaMA-shaped block (d 2048, TinyLlama's 32 query and 4 key-value
 * heads, SwiGLU 5632), built by tera.models.fromConfig, frozen or with TeRA, VeRA or
 * LoRA on the attention's input projections (q_proj and v_proj; GPT-2's fused c_attn)
 * or on every linear layer ('all-linear'). One step is the causal-LM loss, forward and
 * backward, over one row of T tokens; the optimiser is not part of it. Reported:
 * tokens per second, the step against the frozen model's and against LoRA's, and the
 * peak bytes of live tensors (measured in a fresh child process per variant, with
 * the counting Storage of memory.ts). A second table grows the GPT-2 stack
 * (1, 2, 4 blocks) to show what an adapter's extra memory does with depth.
 *
 * The position (GPT-2) or token (LLaMA) embedding trains in every variant, so every
 * step back-propagates through every block, as a model with an adapter in its first
 * block does; "frozen" is that step with no adapter. The vocabulary is 1024 tokens,
 * so the blocks dominate (a 50257-token head would add the same work to every variant).
 *
 * The PyTorch reference (torch_reference.py, TransformerStack) runs the same shapes,
 * methods and targets, interleaved with ours. The suite runs on the CPU, at the first
 * --threads value.
 */
import { spawnSync } from 'node:child_process';

import {
  LoraConfig,
  TeraConfig,
  VeraConfig,
  adapters,
  autograd,
  injectAdapter,
  models,
  setNumThreads,
} from '../../lib';
import type { Parameter } from '../../lib/autograd/var';
import { LORA_RANK, type Method, VERA_RANK, teraShapeOf } from './layers';
import {
  type Contender,
  type SuiteContext,
  type Summary,
  interleave,
  pairedRatio,
  summarize,
  timeSync,
  torchOn,
  useThreads,
} from './measure';
import { countTensorBytes } from './memory';

export type Family = 'gpt2' | 'llama';
export type Targets = 'attention' | 'all';

export interface LmShape {
  family: Family;
  hidden: number;
  heads: number;
  kvHeads: number;
  intermediate: number;
  layers: number;
  vocab: number;
  tokens: number;
}

export interface TransformerResult {
  shape: LmShape;
  /** Target modules in words: 'c_attn', 'q_proj,v_proj', 'all-linear'. */
  targets: string;
  method: Method;
  trainableParameters: number;
  ms: Summary;
  tokensPerSecond: number;
  vsFrozen: Summary | null;
  vsLora: Summary | null;
  torch: Summary | null;
  torchTokensPerSecond: number | null;
  torchVsFrozen: Summary | null;
  peakTensorBytes: number;
  extraTensorBytes: number | null;
  /** TeRA's target for extraTensorBytes (teraAllowance); null for the other methods. */
  allowedExtraBytes: number | null;
}

export interface DepthResult {
  shape: LmShape;
  targets: string;
  method: Method;
  peakTensorBytes: number;
  extraTensorBytes: number | null;
  allowedExtraBytes: number | null;
}

const LORA_ALPHA = 8;
const ADAPTED: Method[] = ['tera', 'vera', 'lora'];

/** The full run's shapes; --quick shrinks them to a smoke test of the suite. */
export function lmShapes(quick: boolean): LmShape[] {
  if (quick) {
    return [
      { family: 'gpt2', hidden: 256, heads: 4, kvHeads: 4, intermediate: 1024, layers: 1, vocab: 256, tokens: 32 },
      { family: 'llama', hidden: 512, heads: 8, kvHeads: 2, intermediate: 1376, layers: 1, vocab: 256, tokens: 32 },
    ];
  }
  return [
    { family: 'gpt2', hidden: 768, heads: 12, kvHeads: 12, intermediate: 3072, layers: 2, vocab: 1024, tokens: 512 },
    { family: 'llama', hidden: 2048, heads: 32, kvHeads: 4, intermediate: 5632, layers: 1, vocab: 1024, tokens: 512 },
  ];
}

function configJson(shape: LmShape): Record<string, unknown> {
  if (shape.family === 'gpt2') {
    return {
      model_type: 'gpt2',
      vocab_size: shape.vocab,
      n_positions: shape.tokens,
      n_embd: shape.hidden,
      n_layer: shape.layers,
      n_head: shape.heads,
      n_inner: shape.intermediate,
    };
  }
  return {
    model_type: 'llama',
    vocab_size: shape.vocab,
    hidden_size: shape.hidden,
    intermediate_size: shape.intermediate,
    num_hidden_layers: shape.layers,
    num_attention_heads: shape.heads,
    num_key_value_heads: shape.kvHeads,
    max_position_embeddings: shape.tokens,
  };
}

/** The target modules: module names as PEFT takes them, and the names the PyTorch reference gives its layers. */
function targetModules(family: Family, targets: Targets): { ours: string | string[]; torch: string[]; label: string } {
  if (family === 'gpt2') {
    return targets === 'attention'
      ? { ours: ['c_attn'], torch: ['c_attn'], label: 'c_attn' }
      : { ours: 'all-linear', torch: ['c_attn', 'attn.c_proj', 'c_fc', 'mlp.c_proj'], label: 'all-linear' };
  }
  const all = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
  return targets === 'attention'
    ? { ours: ['q_proj', 'v_proj'], torch: ['q_proj', 'v_proj'], label: 'q_proj,v_proj' }
    : { ours: 'all-linear', torch: all, label: 'all-linear' };
}

function adapterConfig(method: Exclude<Method, 'frozen'>, targetModules: string | string[]): adapters.AdapterConfig {
  if (method === 'tera') return new TeraConfig({ targetModules });
  if (method === 'vera') return new VeraConfig({ targetModules, r: VERA_RANK });
  return new LoraConfig({ targetModules, r: LORA_RANK, alpha: LORA_ALPHA });
}

interface LmCase {
  step(): void;
  trainable: Parameter[];
  dispose(): void;
}

/** The model of one variant, ready to step. */
function buildCase(shape: LmShape, targets: Targets, method: Method): LmCase {
  const model = models.fromConfig(configJson(shape), { seed: 1 });
  let adapted: Parameter[] = [];
  let release = () => model.dispose();
  if (method === 'frozen') model.requiresGrad(false);
  else {
    const peft = injectAdapter(model, adapterConfig(method, targetModules(shape.family, targets).ours));
    adapted = peft.trainableParameters();
    release = () => {
      peft.deleteAdapter('default'); // frees its share of the shared factors and workspace
      model.dispose();
    };
    // TeRA and VeRA start at dW = 0 (l_1 = 0, lambda_b = 0): move off it so that no work is trivial.
    let seed = 7;
    for (const p of adapted) {
      p.data.set(
        Float32Array.from({ length: p.size }, () => ((seed = (seed * 69069 + 1) >>> 0) / 2 ** 32 - 0.5) * 0.2),
      );
    }
  }
  const embedding = model.getSubmodule(shape.family === 'gpt2' ? 'transformer.wpe' : 'model.embed_tokens');
  const table = embedding.namedParameters()[0][1];
  table.requiresGrad = true;
  const trainable = [table, ...adapted];
  const ids = [Array.from({ length: shape.tokens }, (_, t) => (t * 7919) % shape.vocab)];
  return {
    trainable,
    step: () => {
      autograd.tidy(() => model.loss(ids).backward());
      trainable.forEach((p) => p.zeroGrad());
    },
    dispose: release,
  };
}

/** [dOut, dIn] of every layer the targets adapt in one block, in module order. */
function adaptedDims(shape: LmShape, targets: Targets): [number, number][] {
  const { hidden: d, intermediate: inner, kvHeads, heads } = shape;
  const kv = (kvHeads * d) / heads;
  if (shape.family === 'gpt2') {
    const attention: [number, number][] = [[3 * d, d]];
    return targets === 'attention' ? attention : [...attention, [d, d], [inner, d], [d, inner]];
  }
  const qv: [number, number][] = [
    [d, d],
    [kv, d],
  ];
  return targets === 'attention'
    ? qv
    : [
        [d, d],
        [kv, d],
        [kv, d],
        [d, d],
        [inner, d],
        [inner, d],
        [d, inner],
      ];
}

/**
 * TeRA's memory target for a model: one shared core and factors per (modes, ranks) signature and one
 * d_out x d_in workspace per shape, whatever the depth, plus every layer's vectors and their gradients.
 */
export function teraAllowance(shape: LmShape, targets: Targets): number {
  const dims = adaptedDims(shape, targets);
  const unique = [...new Map(dims.map(([o, i]) => [`${o}x${i}`, [o, i] as const])).values()];
  const shared = unique.reduce((total, [o, i]) => {
    const s = teraShapeOf(o, i);
    const core = s.ranks.reduce((a, r) => a * r, 1);
    const factors = s.modes.reduce((a, m, n) => a + m * s.ranks[n], 0);
    return total + core + factors + o * i;
  }, 0);
  const vectors = dims.reduce((total, [o, i]) => total + teraShapeOf(o, i).ranks.reduce((a, r) => a + r, 0), 0);
  return (shared + 2 * shape.layers * vectors) * 4;
}

function torchSpec(shape: LmShape, targets: Targets, method: Method): Record<string, unknown> {
  const teraShapes = Object.fromEntries(
    adaptedDims(shape, 'all').map(([o, i]) => {
      const s = teraShapeOf(o, i);
      return [`${o}x${i}`, { modes: s.modes, ranks: s.ranks }];
    }),
  );
  return {
    kind: 'transformer',
    ...shape,
    kv_heads: shape.kvHeads,
    method,
    targets: targetModules(shape.family, targets).torch,
    tera_shapes: teraShapes,
    rank: method === 'vera' ? VERA_RANK : LORA_RANK,
    scaling: LORA_ALPHA / LORA_RANK,
  };
}

interface MemoryCase {
  shape: LmShape;
  targets: Targets;
  method: Method;
}

interface ChildSpec {
  cases: MemoryCase[];
  threads: number;
}

/**
 * In a fresh process: builds each case in turn, runs two steps and frees it; prints each case's peak bytes
 * of live tensors above what was live when the case began.
 */
function runChild(spec: ChildSpec): void {
  setNumThreads(spec.threads);
  const counter = countTensorBytes();
  const peaks = spec.cases.map(({ shape, targets, method }) => {
    counter.reset();
    const lm = buildCase(shape, targets, method);
    lm.step();
    lm.step();
    lm.dispose();
    return counter.peak();
  });
  process.stdout.write(JSON.stringify({ peaks }) + '\n');
}

/** The peak tensor bytes of each case, measured in one child process. */
function peaksInChild(cases: MemoryCase[], threads: number): number[] {
  const spec: ChildSpec = { cases, threads };
  // process.execArgv carries tsx's loader, so the child runs this TypeScript file too.
  const child = spawnSync(process.execPath, [...process.execArgv, __filename, '--child', JSON.stringify(spec)], {
    encoding: 'utf8',
    timeout: 600_000,
  });
  if (child.status !== 0) {
    throw new Error(
      `transformer memory child failed (${child.error?.message ?? `exit ${child.status}`}): ${child.stderr.trim()}`,
    );
  }
  return (JSON.parse(child.stdout.trim().split('\n').pop()!) as { peaks: number[] }).peaks;
}

function variants(methods: Method[]): [Targets | null, Method][] {
  const adapted = ADAPTED.filter((m) => methods.includes(m));
  return [
    [null, 'frozen'],
    ...(['attention', 'all'] as const).flatMap((t) => adapted.map((m): [Targets, Method] => [t, m])),
  ];
}

export async function runTransformer(
  context: SuiteContext,
  options: { quick: boolean; methods: Method[] },
): Promise<{ steps: TransformerResult[]; depth: DepthResult[] }> {
  const threads = context.threads[0];
  await useThreads(context, threads);
  const torch = torchOn(context, 'cpu');
  const steps: TransformerResult[] = [];
  for (const shape of lmShapes(options.quick)) {
    const cases = variants(options.methods);
    const name = (targets: Targets | null, method: Method) => `${targets ?? 'none'} ${method}`;
    context.log(`transformer: ${shape.family} d ${shape.hidden} x ${shape.layers} layers, T ${shape.tokens}`);
    const ours = cases.map(([targets, method]) => ({
      key: name(targets, method),
      lm: buildCase(shape, targets ?? 'attention', method),
    }));
    const contenders: Contender[] = ours.map(({ key, lm }) => ({ name: `ours ${key}`, once: () => timeSync(lm.step) }));
    if (torch) {
      for (const [targets, method] of cases) {
        const key = `lm ${name(targets, method)}`;
        await torch.request('setup', { key, case: torchSpec(shape, targets ?? 'attention', method) });
        contenders.push({ name: `torch ${name(targets, method)}`, once: () => torch.time(key, 'lm step') });
      }
    }
    const samples = await interleave(contenders, context.schedule);
    const trainable = new Map(ours.map(({ key, lm }) => [key, lm.trainable.reduce((n, p) => n + p.size, 0)]));
    ours.forEach(({ lm }) => lm.dispose());
    for (const [targets, method] of cases) await torch?.request('drop', { key: `lm ${name(targets, method)}` });

    context.log(`transformer memory: ${shape.family}, every variant in one child`);
    const measured = peaksInChild(
      cases.map(([targets, method]) => ({ shape, targets: targets ?? 'attention', method })),
      threads,
    );
    const peaks = new Map(cases.map(([targets, method], i) => [name(targets, method), measured[i]]));
    const frozenKey = name(null, 'frozen');
    for (const [targets, method] of cases) {
      const key = name(targets, method);
      const mine = samples.get(`ours ${key}`)!;
      const theirs = samples.get(`torch ${key}`);
      const lora = targets === null ? undefined : samples.get(`ours ${name(targets, 'lora')}`);
      const ms = summarize(mine);
      const torchMs = theirs ? summarize(theirs) : null;
      steps.push({
        shape,
        targets: targets === null ? '' : targetModules(shape.family, targets).label,
        method,
        // The embedding every variant trains is not the adapter's.
        trainableParameters: trainable.get(key)! - trainable.get(frozenKey)!,
        ms,
        tokensPerSecond: (1000 * shape.tokens) / ms.median,
        vsFrozen: method === 'frozen' ? null : pairedRatio(mine, samples.get(`ours ${frozenKey}`)!),
        vsLora: lora && method !== 'lora' ? pairedRatio(mine, lora) : null,
        torch: torchMs,
        torchTokensPerSecond: torchMs ? (1000 * shape.tokens) / torchMs.median : null,
        torchVsFrozen: theirs && method !== 'frozen' ? pairedRatio(theirs, samples.get(`torch ${frozenKey}`)!) : null,
        peakTensorBytes: peaks.get(key)!,
        extraTensorBytes: method === 'frozen' ? null : peaks.get(key)! - peaks.get(frozenKey)!,
        allowedExtraBytes: method === 'tera' && targets !== null ? teraAllowance(shape, targets) : null,
      });
    }
  }

  // Depth: the GPT-2-shaped stack at 1, 2 and 4 blocks, frozen and adapted on c_attn.
  const base = lmShapes(options.quick)[0];
  const depthCases = (options.quick ? [1, 2] : [1, 2, 4]).flatMap((layers) =>
    (['frozen', ...ADAPTED.filter((m) => options.methods.includes(m))] as Method[]).map((method): MemoryCase => ({
      shape: { ...base, layers, tokens: options.quick ? 16 : 128 },
      targets: 'attention',
      method,
    })),
  );
  context.log('transformer memory against depth, in one child');
  const depthPeaks = peaksInChild(depthCases, threads);
  const depth = depthCases.map(({ shape, method }, i): DepthResult => {
    const frozen = depthPeaks[depthCases.findIndex((c) => c.method === 'frozen' && c.shape.layers === shape.layers)];
    return {
      shape,
      targets: method === 'frozen' ? '' : 'c_attn',
      method,
      peakTensorBytes: depthPeaks[i],
      extraTensorBytes: method === 'frozen' ? null : depthPeaks[i] - frozen,
      allowedExtraBytes: method === 'tera' ? teraAllowance(shape, 'attention') : null,
    };
  });
  return { steps, depth };
}

if (require.main === module && process.argv[2] === '--child') runChild(JSON.parse(process.argv[3]) as ChildSpec);
