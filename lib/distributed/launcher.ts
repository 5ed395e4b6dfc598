/**
 * What the launcher (mpirun, mpiexec, srun --mpi=pmi2) tells each process about
 * its job through the environment, read before MPI starts. init() uses it to
 * tell a multi-process job from a lone process, and afterwards checks that the
 * MPI library our binding was built against sees the same job: a program started
 * by another MPI's launcher would otherwise run as N unrelated single processes,
 * each training its own model without a word.
 */

export interface LauncherInfo {
  /** Whose variables were found. */
  name: string;
  rank: number;
  size: number;
  /** The variables as read, for messages: 'OMPI_COMM_WORLD_RANK=1, OMPI_COMM_WORLD_SIZE=2'. */
  variables: string;
}

/** Rank and size variables by launcher, first match wins. (Slurm's SLURM_NTASKS is also set in batch scripts that run one process, so it is not read.) */
const LAUNCHERS = [
  { name: 'Open MPI', rank: 'OMPI_COMM_WORLD_RANK', size: 'OMPI_COMM_WORLD_SIZE' },
  { name: 'MPICH / Intel MPI (PMI)', rank: 'PMI_RANK', size: 'PMI_SIZE' },
  { name: 'MVAPICH2', rank: 'MV2_COMM_WORLD_RANK', size: 'MV2_COMM_WORLD_SIZE' },
] as const;

function count(text: string | undefined): number {
  return text !== undefined && /^\d+$/.test(text) ? Number(text) : NaN;
}

/** The launcher's view of this process, or null when no launcher started it. */
export function detectLauncher(env: NodeJS.ProcessEnv = process.env): LauncherInfo | null {
  for (const launcher of LAUNCHERS) {
    const rankText = env[launcher.rank];
    const sizeText = env[launcher.size];
    if (rankText === undefined && sizeText === undefined) continue;
    const variables = `${launcher.rank}=${rankText ?? '(unset)'}, ${launcher.size}=${sizeText ?? '(unset)'}`;
    const rank = count(rankText);
    const size = count(sizeText);
    if (!(size >= 1 && rank >= 0 && rank < size)) {
      throw new Error(`tera.distributed: the ${launcher.name} launcher's variables make no sense (${variables})`);
    }
    return { name: launcher.name, rank, size, variables };
  }
  return null;
}
