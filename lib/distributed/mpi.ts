/**
 * The MPI binding (native/mpi, tera_mpi.node): its typed surface and its loader.
 * It is compiled against this machine's MPI at install time when mpicc is found
 * (scripts/install-mpi.mjs) or by `npm run build:mpi`, never shipped prebuilt:
 * MPI has no ABI shared by its implementations. Candidates: TERA_MPI_ADDON_PATH
 * alone when set (an explicit choice is never replaced silently), else
 * build-mpi/Release/tera_mpi.node in the package. TERA_MPI=0 turns MPI off: a
 * process started without a launcher is then a job of one.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export interface MpiInitInfo {
  rank: number;
  size: number;
  /** Rank and size among the processes on this host (MPI_COMM_TYPE_SHARED). */
  localRank: number;
  localSize: number;
  /** MPI_Get_processor_name: the host. */
  processor: string;
  threadLevel: 'single' | 'funneled' | 'serialized' | 'multiple';
  /** MPI_Get_library_version's first line. */
  library: string;
}

export type MpiReduceOp = 'sum' | 'max' | 'min';

/**
 * The binding's calls. Synchronous ones block the calling thread; *Async ones
 * run on a libuv worker thread. Every blocking call is watched: past the
 * timeout the job is aborted. Buffers are in place.
 */
export interface MpiBinding {
  init(timeoutSeconds: number): MpiInitInfo;
  libraryVersion(): string;
  setTimeout(seconds: number): void;
  finalize(): void;
  /** Prints `message` and ends every rank of the job with `code` (MPI_Abort). */
  abort(code: number, message: string): never;
  allreduce(data: Float32Array | Float64Array | Int32Array, op: MpiReduceOp): void;
  allreduceAsync(data: Float32Array | Float64Array | Int32Array, op: MpiReduceOp): Promise<void>;
  broadcast(data: Uint8Array, root: number): void;
  broadcastAsync(data: Uint8Array, root: number): Promise<void>;
  /** recv (worldSize records of send's length) gets every rank's record in rank order. */
  allgather(send: Uint8Array, recv: Uint8Array): void;
  allgatherAsync(send: Uint8Array, recv: Uint8Array): Promise<void>;
  barrier(): void;
  barrierAsync(): Promise<void>;
  /** Puts a blocking call made elsewhere (NCCL set-up) under the watchdog until unwatch(). */
  watch(label: string): void;
  unwatch(): void;
}

const packageRoot = path.resolve(__dirname, '..', '..');
export const MPI_ADDON = path.join(packageRoot, 'build-mpi', 'Release', 'tera_mpi.node');

/** How to get the binding, for messages. */
export const BUILD_MPI_HELP =
  'install an MPI with its compiler wrapper (Debian/Ubuntu: sudo apt-get install openmpi-bin libopenmpi-dev), ' +
  'then build the binding: `npm run build:mpi` in a clone, or `npm rebuild tera-peft --foreground-scripts` ' +
  'in a project that depends on tera-peft';

/** `fatal`: the binding exists or was asked for explicitly but cannot be used, which even a lone process must report. */
export type MpiLoad = { binding: MpiBinding; path: string } | { error: string; fatal: boolean };

/** The binding, or why it cannot be loaded. */
export function loadMpiBinding(): MpiLoad {
  if (process.env.TERA_MPI === '0') return { error: 'TERA_MPI=0 turns MPI off', fatal: false };
  const override = process.env.TERA_MPI_ADDON_PATH;
  const file = override ? path.resolve(override) : MPI_ADDON;
  const source = override ? ' (TERA_MPI_ADDON_PATH)' : '';
  if (!fs.existsSync(file)) {
    return { error: `${file}${source}: not found; ${BUILD_MPI_HELP}`, fatal: Boolean(override) };
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return { binding: require(file) as MpiBinding, path: file };
  } catch (error) {
    const message = (error as Error).message.replace(`${file}: `, '').replace(/\s+/g, ' ');
    return {
      error:
        `${file}${source} does not load: ${message}. It was built against another MPI, or that MPI's ` +
        `libraries are no longer found; rebuild it (npm run build:mpi)`,
      fatal: true,
    };
  }
}
