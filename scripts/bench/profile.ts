/**
 * Where a TeRA layer step's time goes: each native call the merged path makes
 * (tera/layer.ts), timed alone on preallocated buffers, interleaved with the whole step
 * through the public API (on the path the cost model picks, and forced onto each path)
 * and with the frozen Linear's step. The whole merged step minus the sum of the pieces
 * is what the framework adds (fresh outputs, JS).
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
  const P = shape.outModes.length;
  const api = native();
  const core = normal(shape.ranks, 1, 1 / Math.sqrt(d));
  const factors = shape.modes.map((m, n) => normal([m, shape.ranks[n]], 10 + n, 1 / Math.sqrt(shape.ranks[n])));
  const scales = shape.ranks.map((r, n) => normal([r], 20 + n, 0.1));
  const weight = normal([d, d], 2, 1 / Math.sqrt(d));
  const workspace = zeros([d, d]);
  const rOut = shape.ranks.slice(0, P).reduce((a, b) => a * b, 1);
  const rIn = shape.ranks.slice(P).reduce((a, b) => a * b, 1);
  const z = zeros([rOut * rIn]);
  const xIn = zeros([tokens, rIn]);
  const gOut = zeros([tokens, rOut]);
  const grads = shape.ranks.map((r) => zeros([r]));
  const x = normal([tokens, d], 5);
  const dy = normal([tokens, d], 6);
  const y = zeros([tokens, d]);
  const dx = zeros([tokens, d]);
  const store = (list: Tensor[]) => list.map((t) => t.storage);
  const gemmFlop = 2 * tokens * d * d;
  const tuckerFlop = 2 * reconstructMultiplyAdds(shape.modes, shape.ranks);
  const timed = (name: string, flop: number | null, run: () => void) => ({ name, flop, once: () => timeSync(run) });
  const side = (begin: number, end: number) => ({
    modes: shape.modes.slice(begin, end),
    ranks: shape.ranks.slice(begin, end),
    factors: store(factors.slice(begin, end)),
  });
  const outSide = side(0, P);
  const inSide = side(P, shape.modes.length);
  // Rows of d values contracted to rows of prod R: the multiply-adds of a chain, last mode first.
  const contractFlop = (s: { modes: number[]; ranks: number[] }) =>
    2 * tokens * reconstructMultiplyAdds(s.ranks, s.modes);

  const list = [
    timed('reconstruct W0 + dW', tuckerFlop, () =>
      api.tuckerReconstruct(
        core.storage,
        shape.modes,
        shape.ranks,
        store(factors),
        store(scales),
        1,
        workspace.storage,
        weight.storage,
      ),
    ),
    timed('GEMM y = x W^T', gemmFlop, () =>
      api.gemm(false, true, tokens, d, d, 1, x.storage, workspace.storage, 0, y.storage),
    ),
    timed('GEMM dx = dY W', gemmFlop, () =>
      api.gemm(false, false, tokens, d, d, 1, dy.storage, workspace.storage, 0, dx.storage),
    ),
    timed('kroneckerRows x K_in', contractFlop(inSide), () =>
      api.kroneckerRows(
        x.storage,
        tokens,
        inSide.modes,
        inSide.ranks,
        inSide.factors,
        inSide.ranks.map(() => null),
        1,
        true,
        xIn.storage,
      ),
    ),
    timed('kroneckerRows dY K_out', contractFlop(outSide), () =>
      api.kroneckerRows(
        dy.storage,
        tokens,
        outSide.modes,
        outSide.ranks,
        outSide.factors,
        outSide.ranks.map(() => null),
        1,
        true,
        gOut.storage,
      ),
    ),
    timed('GEMM Z = (dY K_out)^T (x K_in)', 2 * tokens * rOut * rIn, () =>
      api.gemm(true, false, rOut, rIn, tokens, 1, gOut.storage, xIn.storage, 0, z.storage),
    ),
    timed('tuckerCoreGrad', null, () =>
      api.tuckerCoreGrad(z.storage, core.storage, shape.ranks, store(scales), store(grads)),
    ),
  ];
  const all = [core, ...factors, ...scales, weight, workspace, z, xIn, gOut, ...grads, x, dy, y, dx];
  return { list, free: () => all.forEach((t) => t.dispose()) };
}

type Evaluation = 'auto' | 'merged' | 'factored';

function wholeStep(method: 'frozen' | 'tera', d: number, tokens: number, evaluation: Evaluation = 'auto') {
  const model = buildModel({ method, layers: 1, dOut: d, dIn: d, device: 'cpu' }, { evaluation });
  for (const p of model.trainable) p.data.set(normal([...p.shape], 7, 0.1).toFloat32Array());
  const x = new autograd.Var(normal([tokens, d], 8), { requiresGrad: true });
  const dy = normal([tokens, d], 9);
  const name =
    method === 'frozen'
      ? 'whole frozen step'
      : evaluation === 'merged'
        ? 'whole tera step'
        : `whole tera step, ${evaluation}`;
  return {
    contender: { name, once: () => timeSync(() => trainingStep(model, x, dy)) },
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
    const steps = [
      wholeStep('tera', d, tokens, 'merged'),
      wholeStep('tera', d, tokens, 'factored'),
      wholeStep('tera', d, tokens, 'auto'),
      wholeStep('frozen', d, tokens),
    ];
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
