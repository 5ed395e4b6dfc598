// Kernel launches, shared by every .cu file: each kernel of the backend starts
// through launchKernel, which the host emulation (tests/emulation) turns into a
// run on emulated thread blocks, so the same sources serve both; launchForEach
// runs an elementwise functor over a flat range.
#pragma once

#include <utility>

#include "cuda/cuda_backend.h"
#include "cuda/elementwise_kernels.cuh"

namespace tera {
namespace cuda {

// kernel<<<grid, block, sharedBytes, stream>>>(args...), then checkLaunch(name).
template <typename... Params, typename... Args>
void launchKernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
                  size_t sharedBytes, cudaStream_t stream, Args&&... args) {
#ifdef __CUDACC__
  kernel<<<grid, block, sharedBytes, stream>>>(std::forward<Args>(args)...);
#else
  (void)stream;  // the emulated stream runs each launch to completion
  emu::launch(name, kernel, grid, block, sharedBytes, std::forward<Args>(args)...);
#endif
  checkLaunch(name);
}

constexpr int kForEachThreads = 256;

template <class Op>
__global__ void forEachKernel(int64_t count, Op op) {
  forEachBody(DeviceCtx(), count, op);
}

template <class Op>
void launchForEach(cudaStream_t stream, int64_t count, const Op& op, const char* name) {
  if (count <= 0) return;
  launchKernel(name, forEachKernel<Op>, dim3(unsigned(gridFor(count, kForEachThreads))),
               dim3(kForEachThreads), 0, stream, count, op);
}

}  // namespace cuda
}  // namespace tera
