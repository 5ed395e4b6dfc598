/**
 * The process group: init() and finalize(), this process's place in the job,
 * and the one path every collective takes (runSync / runAsync perform the
 * Requests an operation's generator yields, see requests.ts).
 *
 * Engines. MPI (through the binding in native/mpi) is always the control plane
 * and moves CPU tensors. With engine 'nccl', CUDA tensors are all-reduced and
 * broadcast by NCCL on the device; its unique id travels over MPI. A process
 * started without a launcher and without the MPI binding is a job of one: every
 * collective is then a no-op, so the same script runs on a laptop.
 *
 * Blocking. MPI and NCCL calls block until every rank has joined. The
 * synchronous API blocks the calling (main) thread, as the library's sync
 * kernels do: a data-parallel step cannot go on before its gradients are
 * averaged anyway. The *Async API runs the same calls on a libuv worker thread
 * for programs whose event loop must stay responsive. One operation at a time:
 * starting another while one is in flight is refused, because every rank must
 * issue its collectives in the same order.
 *
 * Bounded failure. Every blocking call runs under the MPI binding's watchdog
 * (timeoutSeconds, default 600 s, PyTorch's NCCL default): past it, the job is
 * aborted with a message naming the call. A rank that exits with an error before
 * finalize() aborts the job (MPI_Abort) from its 'exit' handler, so the others
 * stop at once instead of waiting for the timeout; one that exits cleanly
 * without finalize() is finalised there. A failed NCCL collective (a peer died,
 * the network failed) also aborts the job: the ranks no longer agree.
 */
import { availableParallelism, cpus, hostname } from 'node:os';
import { inspect } from 'node:util';

import { setNumThreads } from '../backend';
import { native } from '../native/loader';
import type { Device } from '../tensor/device';
import { Tensor } from '../tensor/tensor';
import { type LauncherInfo, detectLauncher } from './launcher';
import { type MpiBinding, type MpiInitInfo, loadMpiBinding } from './mpi';
import {
  type Bucket,
  type Request,
  type Steps,
  allgatherRecords,
  broadcastBytes,
  payloadBytes,
  recordText,
  textRecord,
} from './requests';

export type Engine = 'mpi' | 'nccl';

export interface InitOptions {
  /** 'mpi' (default): CPU tensors over MPI. 'nccl': CUDA tensors over NCCL as well. */
  engine?: Engine;
  /** How long a blocking collective may wait for the other ranks before the job is aborted (default 600). */
  timeoutSeconds?: number;
  /**
   * 'auto' (default): with several ranks on a host and TERA_NUM_THREADS unset,
   * give each rank its share of the cores (those its launcher bound it to, or
   * cores / ranks on the host), as torchrun does. 'keep': leave the thread count alone.
   */
  threads?: 'auto' | 'keep';
}

export interface DistributedInfo {
  rank: number;
  worldSize: number;
  /** Rank and size among the processes on this host. */
  localRank: number;
  localSize: number;
  host: string;
  engine: Engine;
  /** 'mpi', or 'none' for a lone process started without a launcher and without the MPI binding. */
  transport: 'mpi' | 'none';
  /** The MPI library's version line, and the binding file. */
  mpiLibrary: string | null;
  mpiBinding: string | null;
  /** MPI's thread support (the *Async calls need 'serialized' or 'multiple'). */
  threadLevel: string | null;
  /** The launcher's variables, e.g. 'Open MPI (OMPI_COMM_WORLD_RANK=0, OMPI_COMM_WORLD_SIZE=2)'. */
  launcher: string | null;
  nccl: { library: string; version: number } | null;
  /** CPU threads of this rank after init. */
  threads: number;
  timeoutSeconds: number;
}

/** What one kind of operation has cost this rank since init (or resetStats). */
export interface OperationStats {
  calls: number;
  /** Bytes this rank handed to collectives (the message sizes). */
  bytes: number;
  /** Wall-clock seconds spent blocked in collectives. */
  seconds: number;
}

type Transport = Omit<MpiBinding, 'init' | 'libraryVersion' | 'setTimeout'>;

/** A job of one: nothing to exchange. */
const loneProcess: Transport = {
  finalize() {},
  abort(_code, message) {
    throw new Error(message);
  },
  allreduce() {},
  allreduceAsync: async () => {},
  broadcast() {},
  broadcastAsync: async () => {},
  allgather: (send, recv) => recv.set(send),
  allgatherAsync: async (send, recv) => recv.set(send),
  barrier() {},
  barrierAsync: async () => {},
  watch() {},
  unwatch() {},
};

export interface Group {
  readonly info: DistributedInfo;
  readonly transport: Transport;
  /** The operation in flight, if any. */
  inFlight: string | null;
  /** The flat buffer of each device, reused while the size stays. */
  readonly buckets: Map<Device, Bucket>;
  readonly stats: Map<string, OperationStats>;
}

let current: Group | null = null;
let finalizedOnce = false;
const DEFAULT_TIMEOUT_SECONDS = 600;

/** The group; throws naming `what` if init() has not run. */
export function group(what: string): Group {
  if (current === null) {
    throw new Error(
      `tera.distributed.${what}: not initialised; call tera.distributed.init() first` +
        (finalizedOnce ? ' (finalize() has already run)' : ''),
    );
  }
  return current;
}

export function isInitialized(): boolean {
  return current !== null;
}

export function info(): DistributedInfo {
  return { ...group('info').info };
}

export function rank(): number {
  return group('rank').info.rank;
}

export function worldSize(): number {
  return group('worldSize').info.worldSize;
}

export function localRank(): number {
  return group('localRank').info.localRank;
}

/** Per operation name: calls, bytes and seconds since init() or resetStats(). */
export function stats(): Record<string, OperationStats> {
  return Object.fromEntries([...group('stats').stats].map(([name, s]) => [name, { ...s }]));
}

export function resetStats(): void {
  group('resetStats').stats.clear();
}

function checkOptions(options: InitOptions): Required<InitOptions> {
  if (options === null || typeof options !== 'object') throw new Error('init(options): options must be an object');
  const known = ['engine', 'timeoutSeconds', 'threads'];
  const unknown = Object.keys(options).filter((key) => !known.includes(key));
  if (unknown.length > 0) throw new Error(`init: unknown option ${unknown.join(', ')}; options: ${known.join(', ')}`);
  const engine = options.engine ?? 'mpi';
  if (engine !== 'mpi' && engine !== 'nccl') throw new Error(`init: engine must be 'mpi' or 'nccl', got '${engine}'`);
  const timeoutSeconds = options.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS;
  if (typeof timeoutSeconds !== 'number' || !(timeoutSeconds > 0 && timeoutSeconds <= 1e7)) {
    throw new Error(`init: timeoutSeconds must be a number of seconds in (0, 1e7], got ${String(timeoutSeconds)}`);
  }
  const threads = options.threads ?? 'auto';
  if (threads !== 'auto' && threads !== 'keep') throw new Error(`init: threads must be 'auto' or 'keep'`);
  return { engine, timeoutSeconds, threads };
}

/** Cores for one of `localSize` ranks on this host: its launcher binding, else an even share. */
function threadsPerRank(localSize: number): number {
  const visible = availableParallelism(); // follows the CPU affinity a launcher set
  const machine = cpus().length;
  return visible < machine ? visible : Math.max(1, Math.floor(machine / localSize));
}

function describeLauncher(launcher: LauncherInfo | null): string | null {
  return launcher === null ? null : `${launcher.name} (${launcher.variables})`;
}

/** Starts MPI (or a job of one), checks it sees the launcher's job. */
function startTransport(
  launcher: LauncherInfo | null,
  timeoutSeconds: number,
): { transport: Transport; mpi: MpiInitInfo | null; bindingPath: string | null } {
  const loaded = loadMpiBinding();
  if ('error' in loaded) {
    if (loaded.fatal || (launcher !== null && launcher.size > 1)) {
      const started =
        launcher === null ? '' : ` The launcher started ${launcher.size} processes (${launcher.variables}).`;
      throw new Error(`tera.distributed.init: the MPI binding is unusable: ${loaded.error}.${started}`);
    }
    return { transport: loneProcess, mpi: null, bindingPath: null };
  }
  const mpi = loaded.binding.init(timeoutSeconds);
  if (launcher !== null && launcher.size !== mpi.size) {
    loaded.binding.finalize();
    throw new Error(
      `tera.distributed.init: the launcher started ${launcher.size} processes (${launcher.name}: ${launcher.variables}) ` +
        `but MPI sees a job of ${mpi.size}: this program was launched by another MPI's launcher than the one the ` +
        `binding was built against (${mpi.library}). Launch with that MPI's mpirun, or rebuild the binding ` +
        `against the MPI you launch with (its mpicc first on the PATH, then npm run build:mpi).`,
    );
  }
  return { transport: loaded.binding, mpi, bindingPath: loaded.path };
}

/**
 * Joins the job: starts MPI (rank and size come from the launcher through MPI),
 * divides the host's cores among its ranks, and with engine 'nccl' sets up NCCL
 * (one GPU per rank). Call it once, before building the model. Returns
 * this process's place in the job.
 */
export function init(options: InitOptions = {}): DistributedInfo {
  const { engine, timeoutSeconds, threads } = checkOptions(options);
  if (current !== null) throw new Error('tera.distributed.init: already initialised');
  if (finalizedOnce) throw new Error('tera.distributed.init: MPI cannot start again in a process after finalize()');
  const launcher = detectLauncher();
  const { transport, mpi, bindingPath } = startTransport(launcher, timeoutSeconds);
  const localSize = mpi?.localSize ?? 1;
  if (threads === 'auto' && localSize > 1 && process.env.TERA_NUM_THREADS === undefined) {
    setNumThreads(threadsPerRank(localSize));
  }
  const g: Group = {
    info: {
      rank: mpi?.rank ?? 0,
      worldSize: mpi?.size ?? 1,
      localRank: mpi?.localRank ?? 0,
      localSize,
      host: mpi?.processor ?? hostname(),
      engine,
      transport: mpi === null ? 'none' : 'mpi',
      mpiLibrary: mpi?.library ?? null,
      mpiBinding: bindingPath,
      threadLevel: mpi?.threadLevel ?? null,
      launcher: describeLauncher(launcher),
      nccl: null,
      threads: native().getNumThreads(),
      timeoutSeconds,
    },
    transport,
    inFlight: null,
    buckets: new Map(),
    stats: new Map(),
  };
  current = g;
  process.on('exit', onExit);
  process.on('uncaughtExceptionMonitor', onUncaught);
  if (engine === 'nccl') {
    try {
      g.info.nccl = runSync('init', ncclSetup);
    } catch (error) {
      finalize();
      throw error;
    }
  }
  return { ...g.info };
}

/**
 * With one GPU per rank (CUDA_VISIBLE_DEVICES set to the local rank when unset
 * and several ranks share a host), checks that every rank can use NCCL on its
 * own GPU, then joins the communicator with rank 0's unique id.
 */
function* ncclSetup(g: Group): Steps<{ library: string; version: number }> {
  const { rank, worldSize, localRank, localSize, host } = g.info;
  if (localSize > 1 && process.env.CUDA_VISIBLE_DEVICES === undefined) {
    process.env.CUDA_VISIBLE_DEVICES = String(localRank); // read by CUDA at its first call
  }
  const status = native().ncclStatus();
  let busId = '';
  let problem = status.available ? '' : (status.reason ?? 'unavailable');
  if (problem === '') {
    try {
      busId = native().ncclDeviceBusId();
    } catch (error) {
      problem = (error as Error).message;
    }
  }
  const records = yield* allgatherRecords(worldSize, textRecord(JSON.stringify({ host, busId, problem }), 2048));
  const ranks = records.map(
    (record) => JSON.parse(recordText(record)) as { host: string; busId: string; problem: string },
  );
  const failures = ranks.flatMap((r, i) => (r.problem ? [`rank ${i} (${r.host}): ${r.problem}`] : []));
  if (failures.length > 0) throw new Error(`tera.distributed.init: engine 'nccl' cannot start: ${failures.join('; ')}`);
  const byGpu = new Map<string, number[]>();
  ranks.forEach((r, i) => byGpu.set(`${r.host} ${r.busId}`, [...(byGpu.get(`${r.host} ${r.busId}`) ?? []), i]));
  const shared = [...byGpu].filter(([, list]) => list.length > 1);
  if (shared.length > 0) {
    const [gpu, list] = shared[0];
    throw new Error(
      `tera.distributed.init: ranks ${list.join(', ')} share the GPU ${gpu}; NCCL needs one GPU per rank. Start ` +
        `no more ranks per host than it has GPUs; init() gives rank r of a host CUDA_VISIBLE_DEVICES=r when the ` +
        `variable is unset and no CUDA call came before init()`,
    );
  }
  const uniqueId = yield* broadcastBytes(rank === 0 ? native().ncclUniqueId() : null, 0, rank === 0);
  yield { kind: 'ncclInit', id: uniqueId, rank, size: worldSize };
  return { library: status.library ?? '', version: status.version ?? 0 };
}

/**
 * Leaves the job (MPI_Finalize, NCCL's communicator destroyed). Collective:
 * every rank calls it. Afterwards no collective can run, and MPI cannot start
 * again in this process. A clean exit without it finalises too. Safe to call twice.
 */
export function finalize(): void {
  const g = current;
  if (g === null) return;
  if (g.inFlight !== null)
    throw new Error(`tera.distributed.finalize: ${g.inFlight} is still in flight; await it first`);
  current = null;
  finalizedOnce = true;
  process.removeListener('exit', onExit);
  process.removeListener('uncaughtExceptionMonitor', onUncaught);
  for (const bucket of g.buckets.values()) if (bucket instanceof Tensor) bucket.dispose();
  if (g.info.nccl !== null) native().ncclDestroy();
  g.transport.finalize();
}

// Node emits 'exit' before it prints an uncaught error, and MPI_Abort ends the
// process at once: the abort message carries the error instead.
let uncaught: unknown = undefined;
function onUncaught(error: unknown): void {
  uncaught = error;
}

function onExit(code: number): void {
  const g = current;
  if (g === null || g.info.transport === 'none') return;
  if (code === 0 && g.inFlight === null) {
    finalize();
    return;
  }
  const why = uncaught === undefined ? '' : `:\n${inspect(uncaught)}\n`;
  g.transport.abort(
    code === 0 ? 1 : code,
    `tera.distributed: rank ${g.info.rank} is exiting (code ${code}) ` +
      `${g.inFlight === null ? 'before finalize()' : `with ${g.inFlight} in flight`}${why}; ending the job`,
  );
}

function begin(name: string): Group {
  const g = group(name);
  if (g.inFlight !== null) {
    throw new Error(
      `tera.distributed.${name}: ${g.inFlight} is still in flight; await it first (every rank must issue ` +
        `its collectives in the same order)`,
    );
  }
  g.inFlight = name;
  return g;
}

/** A failed collective leaves the ranks disagreeing: the job ends (a lone process just throws). */
function fatal(g: Group, name: string, error: unknown): never {
  if (g.info.worldSize > 1) {
    g.transport.abort(
      1,
      `tera.distributed: rank ${g.info.rank}: ${name} failed: ${(error as Error).message}; ending the job`,
    );
  }
  throw error;
}

function statsOf(g: Group, name: string): OperationStats {
  let entry = g.stats.get(name);
  if (entry === undefined) {
    entry = { calls: 0, bytes: 0, seconds: 0 };
    g.stats.set(name, entry);
  }
  return entry;
}

function performSync(g: Group, request: Request): void {
  const t = g.transport;
  switch (request.kind) {
    case 'allreduce':
      return t.allreduce(request.data, request.op);
    case 'broadcast':
      return t.broadcast(request.data, request.root);
    case 'allgather':
      return t.allgather(request.send, request.recv);
    case 'barrier':
      return t.barrier();
    case 'ncclAllReduce':
      return native().ncclAllReduce(request.data.storage, 'sum', g.info.timeoutSeconds);
    case 'ncclBroadcast':
      return native().ncclBroadcast(request.data.storage, request.root, g.info.timeoutSeconds);
    case 'ncclInit':
      t.watch(`ncclCommInitRank (rank ${request.rank} of ${request.size})`);
      try {
        return native().ncclInit(request.id, request.rank, request.size);
      } finally {
        t.unwatch();
      }
  }
}

function performAsync(g: Group, request: Request): Promise<void> {
  const t = g.transport;
  switch (request.kind) {
    case 'allreduce':
      return t.allreduceAsync(request.data, request.op);
    case 'broadcast':
      return t.broadcastAsync(request.data, request.root);
    case 'allgather':
      return t.allgatherAsync(request.send, request.recv);
    case 'barrier':
      return t.barrierAsync();
    case 'ncclAllReduce':
      return native().ncclAllReduceAsync(request.data.storage, 'sum', g.info.timeoutSeconds);
    case 'ncclBroadcast':
      return native().ncclBroadcastAsync(request.data.storage, request.root, g.info.timeoutSeconds);
    case 'ncclInit':
      return Promise.resolve(performSync(g, request));
  }
}

/** Runs an operation, blocking this thread in each collective. */
export function runSync<T>(name: string, body: (g: Group) => Steps<T>): T {
  const g = begin(name);
  try {
    const steps = body(g);
    let next = steps.next();
    const entry = statsOf(g, name);
    entry.calls++;
    while (!next.done) {
      const started = performance.now();
      try {
        performSync(g, next.value);
      } catch (error) {
        fatal(g, name, error);
      }
      entry.seconds += (performance.now() - started) / 1000;
      entry.bytes += payloadBytes(next.value);
      next = steps.next();
    }
    return next.value;
  } finally {
    g.inFlight = null;
  }
}

/** Runs an operation with each collective on a worker thread. */
export async function runAsync<T>(name: string, body: (g: Group) => Steps<T>): Promise<T> {
  const g = begin(name);
  try {
    const steps = body(g);
    let next = steps.next();
    const entry = statsOf(g, name);
    entry.calls++;
    while (!next.done) {
      const started = performance.now();
      try {
        await performAsync(g, next.value);
      } catch (error) {
        fatal(g, name, error);
      }
      entry.seconds += (performance.now() - started) / 1000;
      entry.bytes += payloadBytes(next.value);
      next = steps.next();
    }
    return next.value;
  } finally {
    g.inFlight = null;
  }
}
