/**
 * What each rank runs in the distributed tests (test/85-distributed.test.ts
 * launches it under `mpirun -np 2`, or alone). Usage:
 *   worker.ts <scenario> <outDir> [timeoutSeconds]
 * Each rank writes what it saw to <outDir>/rank<r>.json; the jest test compares.
 *
 * Scenarios: train (TeRA, VeRA, LoRA on parts of every batch, plus a plain-mean
 * control), collectives (allReduce, broadcast, barrier, their async twins,
 * stats, sharding), mismatch (models that differ on rank 1, and mismatched
 * gradient lists), lone (a process started without mpirun), lone-nccl (the
 * same asking for the NCCL engine), throw (rank 1 fails), stall (rank 1 hangs).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

import * as tera from '../../lib';
import { METHODS, type Variant, buildModel, steps, train } from './toy';

const dist = tera.distributed;
const [scenario, outDir, timeoutText] = process.argv.slice(2);
const timeoutSeconds = timeoutText === undefined ? 60 : Number(timeoutText);

function write(result: unknown): void {
  fs.writeFileSync(path.join(outDir, `rank${dist.rank()}.json`), JSON.stringify(result));
}

/** The message of what `fn` throws ('' if nothing). */
function errorOf(fn: () => unknown): string {
  try {
    fn();
    return '';
  } catch (error) {
    return (error as Error).message;
  }
}

function trainEveryMethod(): void {
  const { rank, worldSize } = dist.info();
  const exchange = (weighted: boolean) => (count: number, loss: number) => {
    const model = current!;
    dist.averageGradients(model, weighted ? { count } : {});
    const sums = tera.tensor(new Float32Array([loss * count, count]));
    dist.allReduce(sums);
    const [lossSum, total] = sums.toFloat32Array();
    return lossSum / total;
  };
  let current: tera.PeftModel | null = null;
  const results: Record<string, unknown> = {};
  for (const method of METHODS) {
    current = buildModel(method);
    const verified = dist.verifyModel(current);
    results[method] = { ...train(current, steps(rank, worldSize), exchange(true)), verified };
    // After training the ranks must still hold identical models.
    results[`${method} after`] = dist.verifyModel(current).digest;
    current = buildModel(method);
    results[`${method} plain mean`] = train(current, steps(rank, worldSize), exchange(false));
  }
  results.stats = dist.stats();
  write(results);
}

function collectives(): Promise<void> {
  const { rank } = dist.info();
  const a = tera.tensor(new Float32Array([rank + 1, 10 * (rank + 1)]));
  const b = tera.tensor(new Float32Array([0.5 * rank]), [1, 1]);
  dist.allReduce([a, b]);
  const sum = [...a.toFloat32Array(), ...b.toFloat32Array()];
  dist.allReduce(a, { op: 'mean' });
  const mean = Array.from(a.toFloat32Array());
  const c = tera.tensor(new Float32Array([rank === 1 ? 7 : -1, rank]));
  dist.broadcast(c, 1);
  const broadcast = Array.from(c.toFloat32Array());
  dist.barrier();
  const shards = [10, 11, 3].map((n) => dist.shardBatches(n, { batchSize: 4, seed: 2, epoch: 1 }));
  const refusals = {
    notTensor: errorOf(() => dist.allReduce([a, 'x' as unknown as tera.Tensor])),
    badOp: errorOf(() => dist.allReduce(a, { op: 'max' as 'sum' })),
    badRoot: errorOf(() => dist.broadcast(a, 2)),
    layout: errorOf(() => dist.allReduce(rank === 0 ? [a, b] : [a])),
  };
  // Gradients on every rank (a), on rank 0 only (b), on none (c); rank r's loss averaged r + 1 examples.
  const scale = rank + 1;
  const params = [3, 2, 1].map((n) => new tera.nn.Parameter(tera.zeros([n])));
  const setGradients = () => {
    params[0].grad = tera.tensor(new Float32Array([scale, 2 * scale, -scale]));
    params[1].grad = rank === 0 ? tera.tensor(new Float32Array([4, 8])) : null;
    params[2].grad = null;
  };
  const gradients = () => params.map((p) => (p.grad === null ? null : Array.from(p.grad.toFloat32Array())));
  setGradients();
  dist.averageGradients(params);
  const plainMean = gradients();
  setGradients();
  const d = tera.tensor(new Float32Array([rank + 2]));
  const pending = dist.allReduceAsync(d);
  const inFlight = errorOf(() => dist.barrier());
  return pending
    .then(() => dist.broadcastAsync(d, 0))
    .then(() => dist.barrierAsync())
    .then(() => dist.averageGradientsAsync(params, { count: scale }))
    .then(() => {
      write({
        plainMean,
        weightedMean: gradients(),
        sum,
        mean,
        broadcast,
        asyncResult: Array.from(d.toFloat32Array()),
        inFlight,
        refusals,
        shards: shards.map((list) => list.map((s) => ({ indices: Array.from(s.indices), globalCount: s.globalCount }))),
        stats: dist.stats(),
        info: dist.info(),
      });
    });
}

function mismatch(): void {
  const { rank } = dist.info();
  const variants: [string, 'tera' | 'vera' | 'lora', Variant][] = [
    ['lora-rank', 'lora', 'lora-rank'],
    ['tera-seed', 'tera', 'tera-seed'],
    ['base-weights', 'vera', 'base-weights'],
    ['targets', 'tera', 'targets'],
  ];
  const results: Record<string, string> = {};
  for (const [name, method, variant] of variants) {
    results[name] = errorOf(() => dist.verifyModel(buildModel(method, rank === 1 ? variant : 'same')));
  }
  // Same configs, but rank 1's regenerated TeRA core came out different.
  const model = buildModel('tera');
  if (rank === 1) {
    const layer = model.adapterLayers()[0][1];
    const core = Object.values(layer.adapter('default')!.frozenTensors())[0];
    const values = core.toFloat32Array();
    values[3] += 1e-3;
    core.set(values);
  }
  results['frozen-factor'] = errorOf(() => dist.verifyModel(model));
  results.matching = dist.verifyModel(buildModel('vera')).digest;
  const params = buildModel('lora').trainableParameters();
  results.gradientLists = errorOf(() => dist.averageGradients(rank === 0 ? params : params.slice(1)));
  results.countOnOneRank = errorOf(() => dist.averageGradients(params, rank === 0 ? { count: 3 } : {}));
  write(results);
}

function lone(): void {
  const info = dist.info();
  const model = buildModel('tera');
  const verified = dist.verifyModel(model);
  const trained = train(model, steps(info.rank, info.worldSize), (count, loss) => {
    dist.averageGradients(model, { count });
    return loss;
  });
  write({ info, verified, trained });
}

async function main(): Promise<void> {
  dist.init({ timeoutSeconds, engine: scenario === 'lone-nccl' ? 'nccl' : 'mpi' });
  switch (scenario) {
    case 'train':
      trainEveryMethod();
      break;
    case 'collectives':
      await collectives();
      break;
    case 'mismatch':
      mismatch();
      break;
    case 'lone':
    case 'lone-nccl':
      lone();
      break;
    case 'throw':
      if (dist.rank() === 1) throw new Error('boom on rank 1');
      dist.averageGradients(buildModel('tera'));
      break;
    case 'stall':
      if (dist.rank() === 1) {
        const until = Date.now() + 100_000;
        while (Date.now() < until); // busy, never reaching the barrier
      }
      dist.barrier();
      break;
    default:
      throw new Error(`unknown scenario '${scenario}'`);
  }
  dist.finalize();
}

void main();
