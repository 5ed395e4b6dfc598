/** The environment a benchmark ran in: every figure is reported with it. */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { backendInfo } from '../../lib';
import type { TorchInfo } from './torch';

export const repoRoot = path.resolve(__dirname, '..', '..');

export interface Environment {
  packageVersion: string;
  gitCommit: string | null;
  node: string;
  os: string;
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  blas: string;
  simd: string;
  addon: string;
  gpu: string | null;
  /** Why there is no GPU figure, when there is none. */
  gpuReason?: string;
  cudaDriver?: number;
  cudaRuntime?: number;
  cublas?: string;
  /** One-minute load average at the start and the end: a busy machine shows here. */
  loadAverage: { start: number; end?: number };
  torch: TorchInfo | { available: false; reason: string };
}

function gitCommit(): string | null {
  try {
    const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repoRoot, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--untracked-files=no'], {
      cwd: repoRoot,
      encoding: 'utf8',
    });
    return dirty.trim() ? `${commit} (with uncommitted changes)` : commit;
  } catch {
    return null;
  }
}

export function collectEnvironment(torch: Environment['torch']): Environment {
  const info = backendInfo();
  const pkg = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
  const cuda = info.cuda;
  return {
    packageVersion: pkg.version,
    gitCommit: gitCommit(),
    node: process.version,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    cores: os.availableParallelism(),
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    blas: `${info.cpu.blas} (core ${info.cpu.blasCore})`,
    simd: info.cpu.simd,
    addon: path.relative(repoRoot, info.addon),
    gpu: cuda.available ? `${cuda.device ?? 'CUDA device'} (sm_${cuda.computeCapability ?? '?'})` : null,
    ...(cuda.available
      ? { cudaDriver: cuda.driverVersion, cudaRuntime: cuda.runtimeVersion, cublas: cuda.cublas }
      : { gpuReason: cuda.reason ?? 'no CUDA device' }),
    loadAverage: { start: os.loadavg()[0] },
    torch,
  };
}
