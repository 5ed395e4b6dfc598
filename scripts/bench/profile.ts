/**
 * Where a TeRA layer step's time goes: each native call the layer makes (tera/layer.ts),
 * timed alone on preallocated buffers, interleaved with the whole step through the
 * public API and with the frozen Linear's step. The whole step minus the sum of the
 * pieces is what the framework adds (fresh zero-filled outputs, copies, JS).
 */
import { autograd, random, type Tensor, zeros } from '../../lib';
import { native } from '../../lib/native/loader';
import { reconstructMultiplyAdds } from './kernels';
import { buildModel, teraShapeOf, trainingStep } from './layers';
import {
  type Contender,
  interleave,
  type SuiteContext,
  type Summary,
  summarize,
  timeSync,
  useThreads,
} from './measure';

export interface ProfileResult {
  threads: number;
  d: number;
  tokens: number;
  /** Each piece and the whole steps, by name, in milliseconds. */
  pieces: { name: string; ms: Summary; flop: number | null }[];
}

function normal(shape: number[], key: number, std = 1): Tensor {
  return random.normal(shape, { seed: 13, key, std });
}

function pieces(d: number, tokens: number) {
  const shape = teraShapeOf(d, d);
  const api = native();
  const core = normal(shape.ranks, 1, 1 / Math.sqrt(d));
  const factors = shape.modes.map((m, n) => normal([m, shape.ranks[n]], 10 + n, 1 / Math.sqrt(shape.ranks[n])));
  const scales = shape.ranks.map((r, n) => normal([r], 20 + n, 0.1));
  const weight = normal([d, d], 2, 1 / Math.sqrt(d));
  const effective = normal([d, d], 3, 1 / Math.sqrt(d));
  const workspace = zeros([d, d]);
  const gradX = normal([d, d], 4);
  const scratch = zeros([d, d]);
  const grads = shape.ranks.map((r) => zeros([r]));
  const x = normal([tokens, d], 5);
  const dy = normal([tokens, d], 6);
  const y = zeros([tokens, d]);
  const dx = zeros([tokens, d]);
  const store = (list: Tensor[]) => list.map((t) => t.storage);
  const gemmFlop = 2 * tokens * d * d;
  const tuckerFlop = 2 * reconstructMultiplyAdds(shape.modes, shape.ranks);
  const timed = (name: string, flop: number | null, run: () => void) => ({ name, flop, once: () => timeSync(run) });

  const list = [
    timed('reconstruct dW', tuckerFlop, () =>
      api.tuckerReconstruct(
        core.storage,
        shape.modes,
        shape.ranks,
        store(factors),
        store(scales),
        1,
        workspace.storage,
      ),
    ),
    timed('axpby W0 + dW', null, () => api.axpby(workspace.storage, weight.storage, 1, 1)),
    timed('GEMM y = x W^T', gemmFlop, () =>
      api.gemm(false, true, tokens, d, d, 1, x.storage, effective.storage, 0, y.storage),
    ),
    timed('GEMM dx = dY W', gemmFlop, () =>
      api.gemm(false, false, tokens, d, d, 1, dy.storage, effective.storage, 0, dx.storage),
    ),
    timed('GEMM gradX = dY^T x', gemmFlop, () =>
      api.gemm(true, false, d, d, tokens, 1, dy.storage, x.storage, 0, workspace.storage),
    ),
    {
      // In place, as the layer calls it: gradX is copied back first, outside the timing.
      name: 'scaleGrad (in place)',
      flop: tuckerFlop,
      once: () => {
        scratch.storage.copyFrom(gradX.storage);
        return timeSync(() =>
          api.tuckerScaleGrad(
            scratch.storage,
            core.storage,
            shape.modes,
            shape.ranks,
            store(factors),
            store(scales),
            store(grads),
            true,
          ),
        );
      },
    },
  ];
  const all = [core, ...factors, ...scales, weight, effective, workspace, gradX, scratch, ...grads, x, dy, y, dx];
  return { list, free: () => all.forEach((t) => t.dispose()) };
}

function wholeStep(method: 'frozen' | 'tera', d: number, tokens: number) {
  const model = buildModel({ method, layers: 1, dOut: d, dIn: d, device: 'cpu' });
  for (const p of model.trainable) p.data.set(normal([...p.shape], 7, 0.1).toFloat32Array());
  const x = new autograd.Var(normal([tokens, d], 8), { requiresGrad: true });
  const dy = normal([tokens, d], 9);
  return {
    contender: { name: `whole ${method} step`, once: () => timeSync(() => trainingStep(model, x, dy)) },
    free: () => {
      model.dispose();
      x.dispose();
      dy.dispose();
    },
  };
}

export async function runProfile(context: SuiteContext, d: number, tokens: number): Promise<ProfileResult[]> {
  const results: ProfileResult[] = [];
  for (const threads of context.threads) {
    await useThreads(context, threads);
    context.log(`profile of the TeRA step, d ${d} T ${tokens}, ${threads} thread(s)`);
    const parts = pieces(d, tokens);
    const steps = [wholeStep('tera', d, tokens), wholeStep('frozen', d, tokens)];
    const contenders: Contender[] = [...parts.list, ...steps.map((s) => s.contender)];
    const samples = await interleave(contenders, context.schedule);
    parts.free();
    steps.forEach((s) => s.free());
    const flops = new Map(parts.list.map((p) => [p.name, p.flop]));
    results.push({
      threads,
      d,
      tokens,
      pieces: contenders.map((c) => ({
        name: c.name,
        ms: summarize(samples.get(c.name)!),
        flop: flops.get(c.name) ?? null,
      })),
    });
  }
  return results;
}
