// Launching an elementwise body over a flat range: shared by every .cu file.
#pragma once

#include "cuda/cuda_backend.h"
#include "cuda/elementwise_kernels.cuh"

namespace tera {
namespace cuda {

constexpr int kForEachThreads = 256;

template <class Op>
__global__ void forEachKernel(int64_t count, Op op) {
  forEachBody(DeviceCtx(), count, op);
}

template <class Op>
void launchForEach(cudaStream_t stream, int64_t count, const Op& op, const char* name) {
  if (count <= 0) return;
  forEachKernel<<<gridFor(count, kForEachThreads), kForEachThreads, 0, stream>>>(count, op);
  checkLaunch(name);
}

}  // namespace cuda
}  // namespace tera
