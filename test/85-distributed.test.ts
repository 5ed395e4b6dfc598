/**
 * tera.distributed.
 *
 * Everywhere: the data sharding (every example once per epoch, the same
 * global batches on every rank, sizes the world size does not divide),
 * random.permutation, the model fingerprint, argument checks, and a job of one
 * (MPI turned off with TERA_MPI=0), including the NCCL engine's refusal
 * without a GPU.
 *
 * Under `mpirun -np 2` (test/distributed/worker.ts on each rank; skipped,
 * saying why, when Open MPI is not installed): TeRA, VeRA and LoRA trained on
 * the two halves of every batch end where one process training on whole batches
 * ends, to float32 rounding, while a plain mean over ranks does not (the
 * control); collectives against sums written here; mismatched models refused
 * with the first difference named; a rank that throws or hangs ends the job
 * within a bounded time; the MNIST demo with --distributed reaches the accuracy
 * of one process.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import * as tera from '../lib';
import { MPI_ADDON } from '../lib/distributed/mpi';
import { native } from '../lib/native/loader';
import { parseDemoArgs } from '../scripts/demo/cli';
import { runDemo } from '../scripts/demo/mnist-demo';
import { BATCH, EPOCHS, EXAMPLES, METHODS, buildModel, steps, train } from './distributed/toy';
import { expectAllClose, expectDiffer, expectMaxAbsDiff } from './helpers/tolerance';

const dist = tera.distributed;
const repo = path.resolve(__dirname, '..');
const worker = path.join(__dirname, 'distributed', 'worker.ts');

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

interface Run {
  status: number | null;
  output: string;
  seconds: number;
  /** What each rank wrote (rank0.json, rank1.json ...), in rank order. */
  ranks: Json[];
}

/** Runs worker.ts `scenario` (after `prefix`, e.g. mpirun and its flags) and collects what each rank wrote. */
function runWorker(prefix: string[], scenario: string, timeoutSeconds: number, env: NodeJS.ProcessEnv = {}): Run {
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-dist-'));
  const started = performance.now();
  const [command, ...args] = [...prefix, process.execPath, '--import', 'tsx', worker, scenario, outDir];
  const run = spawnSync(command, [...args, String(timeoutSeconds)], {
    cwd: repo,
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, ...env },
  });
  const seconds = (performance.now() - started) / 1000;
  const ranks = fs
    .readdirSync(outDir)
    .sort()
    .map((file) => JSON.parse(fs.readFileSync(path.join(outDir, file), 'utf8')) as Json);
  fs.rmSync(outDir, { recursive: true, force: true });
  return { status: run.status, output: `${run.stdout}${run.stderr}${run.error ?? ''}`, seconds, ranks };
}

/** A failed run shows its output. */
function expectSuccess(run: Run): void {
  expect(run.status === 0 ? 0 : run.output).toBe(0);
}

/** mpirun when it exists (Open MPI gets --oversubscribe, and --allow-run-as-root as root), else why not. */
function findMpirun(): { command: string[] } | { reason: string } {
  const probe = spawnSync('mpirun', ['--version'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    return { reason: 'mpirun not found: Open MPI is not installed (bash scripts/setup.sh installs it)' };
  }
  const openMpi = /Open MPI/.test(probe.stdout);
  const root = process.getuid?.() === 0;
  return {
    command: [
      'mpirun',
      ...(openMpi ? ['--oversubscribe'] : []),
      ...(openMpi && root ? ['--allow-run-as-root'] : []),
      '-np',
      '2',
    ],
  };
}

describe('data sharding', () => {
  const cases = [
    { n: 10, batchSize: 4, worldSize: 2 },
    { n: 11, batchSize: 4, worldSize: 2 },
    { n: 19, batchSize: 7, worldSize: 3 },
    { n: 3, batchSize: 4, worldSize: 2 },
    { n: 5, batchSize: 2, worldSize: 3 },
  ];

  test.each(cases)(
    'every example once per epoch, the same steps on every rank ($n examples, batch $batchSize, $worldSize ranks)',
    ({ n, batchSize, worldSize }) => {
      const order = tera.random.permutation(n, { seed: 9, key: 2 });
      const perRank = Array.from({ length: worldSize }, (_, rank) =>
        dist.shardBatches(n, { batchSize, seed: 9, epoch: 2, rank, worldSize }),
      );
      const stepCount = Math.ceil(n / batchSize);
      for (const shards of perRank) expect(shards.length).toBe(stepCount);
      const seen: number[] = [];
      for (let step = 0; step < stepCount; step++) {
        const globalCount = Math.min(batchSize, n - step * batchSize);
        const parts = perRank.map((shards) => Array.from(shards[step].indices));
        for (const shards of perRank) expect(shards[step].globalCount).toBe(globalCount);
        // Contiguous near-equal parts of the epoch order's next global batch, in rank order.
        expect(parts.flat()).toEqual(Array.from(order.subarray(step * batchSize, step * batchSize + globalCount)));
        const sizes = parts.map((p) => p.length);
        expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
        seen.push(...parts.flat());
      }
      expect(seen.sort((a, b) => a - b)).toEqual(Array.from({ length: n }, (_, i) => i));
    },
  );

  test('dropLast drops the smaller last batch; an explicit order is used as given', () => {
    const kept = dist.shardBatches(10, { batchSize: 4, dropLast: true, rank: 1, worldSize: 2 });
    expect(kept.map((s) => Array.from(s.indices))).toEqual([
      [2, 3],
      [6, 7],
    ]);
    const given = dist.shardBatches([5, 3, 1, 0, 2], { batchSize: 5, rank: 0, worldSize: 2 });
    expect(Array.from(given[0].indices)).toEqual([5, 3]);
  });

  test('refuses what it cannot shard', () => {
    expect(() => dist.shardBatches(10, { batchSize: 0, rank: 0, worldSize: 2 })).toThrow(
      /batchSize must be an integer >= 1/,
    );
    expect(() => dist.shardBatches(10, { batchSize: 2, rank: 2, worldSize: 2 })).toThrow(
      /rank 2 is not below worldSize 2/,
    );
    expect(() => dist.shardBatches(10, { batchSize: 2, rank: 0 })).toThrow(/give rank and worldSize together/);
    expect(() => dist.shardBatches(10, { batchSize: 2 })).toThrow(/call tera.distributed.init\(\) first/);
    expect(() => dist.shardBatches([1, -1], { batchSize: 2, rank: 0, worldSize: 1 })).toThrow(/order\[1\] is -1/);
    expect(() => dist.shardBatches([0, 1], { batchSize: 2, seed: 1, rank: 0, worldSize: 1 })).toThrow(/used as given/);
  });

  test('random.permutation is a permutation fixed by (seed, key)', () => {
    const p = tera.random.permutation(50, { seed: 4, key: 1 });
    expect(Array.from(p).sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(Array.from(tera.random.permutation(50, { seed: 4, key: 1 }))).toEqual(Array.from(p));
    expect(Array.from(tera.random.permutation(50, { seed: 4, key: 2 }))).not.toEqual(Array.from(p));
  });
});

describe('buckets: packInto and unpackFrom', () => {
  const a = tera.tensor(new Float32Array([1, -2, 3]));
  const b = tera.tensor(new Float32Array([0.5, 4]));

  test.each(['a Float32Array', 'a CPU tensor'])(
    'pack scaled segments at their offsets into %s, and unpack them',
    (kind) => {
      const host = new Float32Array(7).fill(9);
      const device = tera.full([7], 9);
      const bucket = kind === 'a Float32Array' ? host : device.storage;
      const read = () => (kind === 'a Float32Array' ? Array.from(host) : Array.from(device.toFloat32Array()));
      native().packInto(bucket, [a.storage, b.storage], [4, 1], 2);
      expect(read()).toEqual([9, 2 * 0.5, 2 * 4, 9, 2 * 1, 2 * -2, 2 * 3]);
      const outA = tera.zeros([3]);
      const outB = tera.zeros([2]);
      native().unpackFrom(bucket, [outB.storage, outA.storage], [1, 4], 0.25);
      expect(Array.from(outA.toFloat32Array())).toEqual([0.5, -1, 1.5]);
      expect(Array.from(outB.toFloat32Array())).toEqual([0.25, 2]);
    },
  );

  test('refuses segments that do not fit, and mismatched arguments', () => {
    const host = new Float32Array(4);
    expect(() => native().packInto(host, [a.storage], [2], 1)).toThrow(
      'packInto: sources[0] (3 elements at offset 2) does not fit in the bucket of 4',
    );
    expect(() => native().unpackFrom(host, [a.storage, b.storage], [0], 1)).toThrow(
      'unpackFrom: 2 tensors but 1 offsets',
    );
    expect(() => native().packInto(host, [], [], 1)).toThrow('packInto: no tensors');
    expect(() => native().packInto(new Float64Array(4) as unknown as Float32Array, [a.storage], [0], 1)).toThrow(
      'packInto: the bucket must be a tensor or a Float32Array',
    );
    expect(() => native().packInto(a.storage, [a.storage], [0], 1)).toThrow(
      'packInto: the output tensor must not also be an input',
    );
    expect(Array.from(host)).toEqual([0, 0, 0, 0]);
  });
});

describe('the demo with --distributed', () => {
  test('runs on the CPU over MPI unless told --device cuda (NCCL); auto cannot choose the engine', () => {
    expect(parseDemoArgs(['--distributed'])).toEqual(expect.objectContaining({ distributed: true, device: 'cpu' }));
    expect(parseDemoArgs(['--distributed', '--device', 'cuda']).device).toBe('cuda');
    expect(parseDemoArgs([]).device).toBe('auto');
    expect(() => parseDemoArgs(['--distributed', '--device', 'auto'])).toThrow(
      '--distributed needs --device cpu (MPI) or --device cuda (NCCL, one GPU per rank)',
    );
  });
});

describe('model fingerprint', () => {
  const value = (entries: tera.distributed.FingerprintEntry[], key: string) =>
    entries.find((e) => e.key === key)?.value;

  test('lists configs, parameters with hashes, and the frozen tensors each adapter regenerates', () => {
    const entries = dist.modelFingerprint(buildModel('tera'));
    expect(value(entries, "adapter 'default' seed")).toBe('0');
    expect(value(entries, "adapter 'default' peft_type")).toBe('"TERA"');
    expect(value(entries, "parameter '0.tera_lambda_1.default'")).toMatch(/^\[16\] trainable cpu sha256:[0-9a-f]{32}$/);
    expect(value(entries, "parameter '0.base_layer.weight'")).toMatch(/^\[16, 12\] frozen cpu sha256:/);
    expect(entries.filter((e) => e.key.startsWith('frozen tensor')).map((e) => e.key)).toEqual([
      "frozen tensor 'base_model.tera_core.16_12_r16x12' of adapter 'default'",
      "frozen tensor 'base_model.tera_factor_1.16_12_r16x12' of adapter 'default'",
      "frozen tensor 'base_model.tera_factor_2.16_12_r16x12' of adapter 'default'",
      "frozen tensor 'base_model.tera_core.5_16_r5x16' of adapter 'default'",
      "frozen tensor 'base_model.tera_factor_1.5_16_r5x16' of adapter 'default'",
      "frozen tensor 'base_model.tera_factor_2.5_16_r5x16' of adapter 'default'",
    ]);
    const vera = dist.modelFingerprint(buildModel('vera')).filter((e) => e.key.startsWith('frozen tensor'));
    expect(vera.map((e) => e.key)).toEqual([
      "frozen tensor 'base_model.vera_A' of adapter 'default'",
      "frozen tensor 'base_model.vera_B' of adapter 'default'",
    ]);
  });

  test('is the same for the same model built twice, and one changed value changes exactly its entry', () => {
    const a = dist.modelFingerprint(buildModel('lora'));
    const model = buildModel('lora');
    expect(dist.modelFingerprint(model)).toEqual(a);
    const weight = model.namedParameters().find(([name]) => name === '2.base_layer.weight')![1];
    const values = weight.toFloat32Array();
    values[7] = Math.fround(values[7] + 1e-6);
    weight.data.set(values);
    const changed = dist.modelFingerprint(model);
    expect(changed.filter((e, i) => e.value !== a[i].value).map((e) => e.key)).toEqual([
      "parameter '2.base_layer.weight'",
    ]);
    expect(value(dist.modelFingerprint(model, { hashParameters: false }), "parameter '2.base_layer.weight'")).toBe(
      '[5, 16] frozen cpu',
    );
  });

  test('refuses what is not a model', () => {
    expect(() => dist.modelFingerprint({} as tera.nn.Module)).toThrow(
      'modelFingerprint: pass a PeftModel or an nn.Module',
    );
  });
});

describe('a job of one (TERA_MPI=0)', () => {
  const saved = process.env.TERA_MPI;
  beforeAll(() => {
    process.env.TERA_MPI = '0';
  });
  afterAll(() => {
    if (saved === undefined) delete process.env.TERA_MPI;
    else process.env.TERA_MPI = saved;
    if (dist.isInitialized()) dist.finalize();
  });

  test('before init() every call says to call it', () => {
    expect(() => dist.rank()).toThrow('tera.distributed.rank: not initialised; call tera.distributed.init() first');
    expect(() => dist.allReduce(tera.ones([2]))).toThrow(/allReduce: not initialised/);
  });

  test('init() without a launcher gives rank 0 of 1, and collectives leave tensors as they are', () => {
    expect(() => dist.init({ engine: 'gloo' as 'mpi' })).toThrow("init: engine must be 'mpi' or 'nccl', got 'gloo'");
    expect(() => dist.init({ timeoutSeconds: 0 })).toThrow(/timeoutSeconds must be a number of seconds/);
    expect(() => dist.init({ timout: 5 } as tera.distributed.InitOptions)).toThrow('init: unknown option timout');
    const info = dist.init();
    expect(info).toEqual(
      expect.objectContaining({ rank: 0, worldSize: 1, transport: 'none', launcher: null, engine: 'mpi' }),
    );
    const t = tera.tensor(new Float32Array([1.5, -2]));
    dist.allReduce(t, { op: 'mean' });
    dist.broadcast(t, 0);
    dist.barrier();
    expect(Array.from(t.toFloat32Array())).toEqual([1.5, -2]);
    expect(() => dist.init()).toThrow('tera.distributed.init: already initialised');
  });

  test('averageGradients and verifyModel: a job of one trains exactly as one process', () => {
    const model = buildModel('tera');
    expect(dist.verifyModel(model).entries).toBe(dist.modelFingerprint(model).length);
    const together = train(model, steps(0, 1), (count, loss) => {
      dist.averageGradients(model, { count });
      return loss;
    });
    const alone = train(buildModel('tera'), steps(0, 1));
    for (const [name, values] of Object.entries(alone.params)) expectMaxAbsDiff(together.params[name], values, 0);
  });

  test('checks arguments before communicating', () => {
    const params = buildModel('lora').trainableParameters();
    expect(() => dist.averageGradients(params, { count: 1.5 })).toThrow(/count must be an integer in \[0, 2\^24\]/);
    expect(() => dist.averageGradients([])).toThrow('averageGradients: there are no trainable parameters');
    expect(() => dist.averageGradients([tera.ones([2])] as unknown as tera.nn.Parameter[])).toThrow(
      /item 0 is not a Parameter/,
    );
    expect(() => dist.allReduce([])).toThrow('allReduce: pass a tensor or a non-empty array of tensors');
    const gone = tera.ones([2]);
    gone.dispose();
    expect(() => dist.allReduce(gone)).toThrow('allReduce: tensor 0 has been disposed');
    expect(() => dist.broadcast(tera.ones([2]), 1)).toThrow('broadcast: root must be a rank in [0, 1), got 1');
    expect(() => dist.onRank0(5 as unknown as () => void)).toThrow('onRank0(fn) takes a function');
  });

  test('onRank0 returns the function result on rank 0 and rethrows its error', () => {
    expect(dist.onRank0(() => 42)).toBe(42);
    expect(() =>
      dist.onRank0(() => {
        throw new Error('disk full');
      }),
    ).toThrow('disk full');
    expect(() => dist.onRank0(() => dist.barrier())).toThrow(/barrier: onRank0 is still in flight/);
  });

  test('the NCCL engine: refused with the reason where NCCL cannot run, set up for a job of one where it can', () => {
    dist.finalize();
    const status = native().ncclStatus();
    const run = runWorker([], 'lone-nccl', 60, { TERA_MPI: '0' });
    if (status.available) {
      expectSuccess(run);
      expect(run.ranks[0].info.nccl).toEqual({ library: status.library, version: status.version });
    } else {
      expect(status.reason).toBeTruthy();
      expect(run.status).not.toBe(0);
      expect(run.output).toContain(`engine 'nccl' cannot start: rank 0 (${os.hostname()}): ${status.reason}`);
    }
  });
});

const mpirun = findMpirun();
const describeMpi = 'command' in mpirun ? describe : describe.skip;

describeMpi(`under mpirun -np 2${'reason' in mpirun ? ` (SKIPPED: ${mpirun.reason})` : ''}`, () => {
  const launch = (scenario: string, timeoutSeconds = 60) =>
    runWorker((mpirun as { command: string[] }).command, scenario, timeoutSeconds);

  test('the MPI binding is built (npm ci builds it when mpicc is found; else npm run build:mpi)', () => {
    expect(fs.existsSync(MPI_ADDON) ? MPI_ADDON : `missing: run npm run build:mpi`).toBe(MPI_ADDON);
  });

  describe('TeRA, VeRA and LoRA trained on halves of every batch', () => {
    let run: Run;
    beforeAll(() => {
      run = launch('train');
    }, 120_000);

    test('the job ran on 2 ranks', () => {
      expectSuccess(run);
      expect(run.ranks).toHaveLength(2);
    });

    test.each(METHODS)('%s: the same parameters as one process on the whole batches', (method) => {
      const reference = train(buildModel(method), steps(0, 1));
      const [rank0, rank1] = run.ranks.map((r) => r[method]);
      // 2 epochs of 19 examples in batches of 7: parts of 4 + 3 and 3 + 2 examples.
      expect(reference.losses).toHaveLength(EPOCHS * Math.ceil(EXAMPLES / BATCH));
      expect(Object.keys(rank0.params)).toEqual(Object.keys(reference.params));
      for (const [name, values] of Object.entries(reference.params)) {
        expectAllClose(rank0.params[name], values, { rtol: 1e-5, atol: 1e-6, what: `${method} ${name}` });
        expectMaxAbsDiff(rank1.params[name], rank0.params[name], 0); // the ranks stay identical
      }
      expectAllClose(rank0.losses, reference.losses, { rtol: 1e-5, atol: 1e-6, what: `${method} losses` });
      expect(run.ranks[1][`${method} after`]).toBe(run.ranks[0][`${method} after`]);
      expect(rank0.verified.digest).toBe(rank1.verified.digest);
    });

    test.each(METHODS)('%s: a plain mean over ranks of unequal parts does not (the control)', (method) => {
      const reference = train(buildModel(method), steps(0, 1));
      const plain = run.ranks[0][`${method} plain mean`];
      const all = (params: Record<string, number[]>) => Object.keys(reference.params).flatMap((k) => params[k]);
      expectDiffer(all(plain.params), all(reference.params), 1e-4);
    });

    test('each step sends one bucket: the gradients, a flag per tensor, the count, plus a 16-byte layout check', () => {
      const stats = run.ranks[0].stats;
      let expected = 0;
      for (const method of METHODS) {
        const params = buildModel(method).trainableParameters();
        const bucket = params.reduce((n, p) => n + p.size, 0) + params.length + 2;
        expected += 2 * steps(0, 1).length * (4 * bucket + 16); // the weighted run and the control
      }
      expect(stats.averageGradients.calls).toBe(2 * METHODS.length * steps(0, 1).length);
      expect(stats.averageGradients.bytes).toBe(expected);
    });
  });

  test('collectives: sums, means and broadcasts, sync and async, and what they refuse', () => {
    const run = launch('collectives');
    expectSuccess(run);
    const ranks = [0, 1];
    const sum = (f: (r: number) => number) => ranks.reduce((s, r) => s + f(r), 0);
    for (const r of run.ranks) {
      expect(r.sum).toEqual([sum((k) => k + 1), sum((k) => 10 * (k + 1)), sum((k) => 0.5 * k)]);
      expect(r.mean).toEqual([sum((k) => k + 1), sum((k) => 10 * (k + 1))]); // the mean of equal sums
      expect(r.broadcast).toEqual([7, 1]);
      expect(r.asyncResult).toEqual([sum((k) => k + 2)]);
      expect(r.inFlight).toMatch(/barrier: allReduce is still in flight; await it first/);
      // Rank r's gradient of a is (r + 1) [1, 2, -1] over r + 1 examples; b has one on rank 0 only; c none.
      const a = [1, 2, -1];
      expectAllClose(
        r.plainMean[0],
        a.map((v) => sum((k) => (k + 1) * v) / 2),
        { what: 'plain mean of a' },
      );
      expectAllClose(r.plainMean[1], [4 / 2, 8 / 2], { what: 'plain mean of b' });
      const examples = sum((k) => k + 1);
      expectAllClose(
        r.weightedMean[0],
        a.map((v) => sum((k) => (k + 1) * (k + 1) * v) / examples),
        {
          what: 'weighted mean of a',
        },
      );
      expectAllClose(r.weightedMean[1], [(1 * 4) / examples, (1 * 8) / examples], { what: 'weighted mean of b' });
      expect([r.plainMean[2], r.weightedMean[2]]).toEqual([null, null]);
      expect(r.refusals).toEqual({
        notTensor: 'allReduce: item 1 is not a Tensor',
        badOp: "allReduce: op must be 'sum' or 'mean', got 'max'",
        badRoot: 'broadcast: root must be a rank in [0, 2), got 2',
        layout: expect.stringContaining(
          'allReduce: the ranks passed different tensors (rank 0: 2 tensors, 3 values; rank 1: 1 tensor, 2 values',
        ),
      });
      expect(r.info).toEqual(expect.objectContaining({ worldSize: 2, localSize: 2, transport: 'mpi' }));
      expect(r.info.launcher).toMatch(/^Open MPI \(OMPI_COMM_WORLD_RANK=\d, OMPI_COMM_WORLD_SIZE=2\)$/);
    }
    expect(run.ranks.map((r) => r.info.rank)).toEqual([0, 1]);
    // The sharding of real ranks matches the one computed here for each rank.
    for (const [rank, r] of run.ranks.entries()) {
      [10, 11, 3].forEach((n, i) => {
        const here = dist.shardBatches(n, { batchSize: 4, seed: 2, epoch: 1, rank, worldSize: 2 });
        expect(r.shards[i]).toEqual(here.map((s) => ({ indices: Array.from(s.indices), globalCount: s.globalCount })));
      });
    }
  });

  test('mismatched models are refused on every rank, naming the first difference', () => {
    const run = launch('mismatch');
    expectSuccess(run);
    const [rank0, rank1] = run.ranks;
    expect(rank1).toEqual(rank0);
    const first = (message: string) => message.split('\n')[1];
    expect(first(rank0['lora-rank'])).toBe("  rank 1: adapter 'default' r: rank 0 has 4, rank 1 has 2");
    expect(first(rank0['tera-seed'])).toBe("  rank 1: adapter 'default' seed: rank 0 has 0, rank 1 has 1");
    expect(first(rank0.targets)).toBe(
      `  rank 1: adapter 'default' target_modules: rank 0 has ["0","2"], rank 1 has ["0"]`,
    );
    expect(first(rank0['base-weights'])).toMatch(
      /^ {2}rank 1: parameter '0.base_layer.weight': rank 0 has \[16, 12\] frozen cpu sha256:(\w+), rank 1 has \[16, 12\] frozen cpu sha256:(?!\1)\w+$/,
    );
    expect(first(rank0['frozen-factor'])).toMatch(
      /^ {2}rank 1: frozen tensor 'base_model.tera_core.16_12_r16x12' of adapter 'default': rank 0 has .*, rank 1 has /,
    );
    expect(rank0['lora-rank']).toMatch(/^tera.distributed.verifyModel: the ranks built different models/);
    expect(rank0.matching).toMatch(/^[0-9a-f]{64}$/);
    expect(rank0.gradientLists).toMatch(/^averageGradients: the ranks passed different tensors \(rank 0: 4 tensors/);
    expect(rank0.countOnOneRank).toBe(
      'averageGradients: 1 of 2 ranks passed a count and the others did not; pass one on every rank (or on none)',
    );
  });

  test('a rank that throws ends the whole job at once, with its error', () => {
    const run = launch('throw', 60);
    expect(run.status).not.toBe(0);
    expect(run.output).toContain(
      'tera.distributed: rank 1 is exiting (code 1) before finalize():\nError: boom on rank 1',
    );
    expect(run.seconds).toBeLessThan(20); // not the 60 s timeout
  });

  test('a rank that hangs ends the job after the timeout, naming the stuck call', () => {
    const run = launch('stall', 3);
    expect(run.status).toBe(124);
    expect(run.output).toMatch(/rank 0 of 2: MPI_Barrier \(call #\d+ on this rank\) has not completed after 3 s/);
    expect(run.seconds).toBeLessThan(20); // rank 1 would busy-wait for 100 s
  });

  test('a lone process is a job of one; launched by a foreign launcher it refuses', () => {
    const lone = runWorker([], 'lone', 60);
    expectSuccess(lone);
    expect(lone.ranks[0].info).toEqual(
      expect.objectContaining({ rank: 0, worldSize: 1, transport: 'mpi', launcher: null }),
    );
    const reference = train(buildModel('tera'), steps(0, 1));
    for (const [name, values] of Object.entries(reference.params)) {
      expectMaxAbsDiff(lone.ranks[0].trained.params[name], values, 0);
    }
    const foreign = runWorker([], 'lone', 60, { PMI_RANK: '0', PMI_SIZE: '2' });
    expect(foreign.status).not.toBe(0);
    expect(foreign.output).toContain(
      'the launcher started 2 processes (MPICH / Intel MPI (PMI): PMI_RANK=0, PMI_SIZE=2) but MPI sees a job of 1',
    );
  });

  test('the MNIST demo with --distributed reaches the accuracy of one process', () => {
    const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tera-dist-demo-'));
    const flags = ['--methods', 'tera,lora', '--epochs', '1', '--train-limit', '700', '--device', 'cpu'];
    const [command, ...args] = (mpirun as { command: string[] }).command;
    const demo = path.join(repo, 'scripts', 'demo', 'mnist-demo.ts');
    const run = spawnSync(
      command,
      [...args, process.execPath, '--import', 'tsx', demo, ...flags, '--distributed', '--out', outDir],
      { cwd: repo, encoding: 'utf8', timeout: 120_000 },
    );
    expect(run.status === 0 ? 0 : run.stderr).toBe(0);
    const distributed = JSON.parse(fs.readFileSync(path.join(outDir, 'results.json'), 'utf8'));
    fs.rmSync(outDir, { recursive: true, force: true });
    const single = runDemo(parseDemoArgs([...flags, '--out', outDir]), () => {});
    fs.rmSync(outDir, { recursive: true, force: true });
    for (const [i, method] of (distributed.methods as Json[]).entries()) {
      expect(method.accuracyAfter).toBe(single.methods[i].accuracyAfter);
      expect(method.communication.ranks).toBe(2);
      expect(method.communication.gradientBytesPerStep).toBeGreaterThan(4 * method.trainableParameters);
    }
    expect(run.stdout).toMatch(/\| method +\|.*\| ranks \| gradients sent \/ step \| ms \/ step \(median\) \|/);
  });
});
