/**
 * tera.distributed: data-parallel training over MPI (CPU) and NCCL (GPU), as
 * Horovod and PyTorch DDP do it. Each rank holds the whole model, trains on its
 * part of every batch, and averages gradients before the optimiser steps. With
 * TeRA only the scaling vectors' gradients travel: the frozen core and factors
 * are regenerated bit for bit from the seed on every rank. docs/distributed.md
 * has the launch commands and the figures.
 */
export { init, finalize, isInitialized, info, rank, worldSize, localRank, stats, resetStats } from './group';
export type { Engine, InitOptions, DistributedInfo, OperationStats } from './group';
export { allReduce, allReduceAsync, broadcast, broadcastAsync, barrier, barrierAsync } from './collectives';
export type { AllReduceOp, AllReduceOptions } from './collectives';
export { averageGradients, averageGradientsAsync } from './gradients';
export type { AverageGradientsOptions, GradientSource } from './gradients';
export { shardBatches } from './sharding';
export type { Shard, ShardOptions } from './sharding';
export { modelFingerprint, verifyModel } from './fingerprint';
export type { FingerprintEntry, FingerprintOptions, VerifiedModel } from './fingerprint';
export { log, onRank0, saveAdapter } from './rank0';
