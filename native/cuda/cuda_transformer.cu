// The transformer kernels of the CUDA backend (bodies in transformer_kernels.cuh):
// embedding lookup and scatter-add, the norms, the masked row softmax, rotary embeddings, permutes
// and block copies. Row kernels run one block per row; column sums use fixed chunks, so every
// result is deterministic for a given shape.
#include <algorithm>

#include "cuda/cuda_backend.h"
#include "cuda/launch.cuh"
#include "cuda/transformer_kernels.cuh"

namespace tera {
namespace cuda {
namespace {

constexpr int kColumnThreads = 256;

__global__ void __launch_bounds__(kRowThreads)
    normForwardKernel(Norm norm, float* y, float* stats, const float* x, const float* weight,
                      const float* bias, int64_t rows, int64_t cols, float eps) {
  __shared__ double smem[kRowThreads];
  normForwardBody(DeviceCtx(), norm, y, stats, x, weight, bias, rows, cols, eps, smem);
}

__global__ void __launch_bounds__(kRowThreads)
    normBackwardRowKernel(Norm norm, float* dx, const float* dy, const float* x,
                          const float* weight, const float* stats, int64_t rows, int64_t cols) {
  __shared__ double smem[2 * kRowThreads];
  normBackwardRowBody(DeviceCtx(), norm, dx, dy, x, weight, stats, rows, cols, smem);
}

__global__ void __launch_bounds__(kColumnThreads)
    normColumnPartialKernel(const float* dy, const float* x, const float* stats, int64_t rows,
                            int64_t cols, int64_t chunkRows, double* partial) {
  __shared__ double smem[2 * kColumnThreads];
  normColumnPartialBody(DeviceCtx(), dy, x, stats, rows, cols, chunkRows, partial, smem);
}

__global__ void __launch_bounds__(kRowThreads)
    softmaxRowsKernel(float* y, const float* x, int64_t rows, int64_t cols, AttentionMask mask,
                      bool masked) {
  __shared__ double smem[2 * kRowThreads];
  softmaxRowsBody(DeviceCtx(), y, x, rows, cols, mask, masked, smem);
}

__global__ void __launch_bounds__(kRowThreads)
    softmaxBackwardKernel(float* dx, const float* y, const float* dy, int64_t rows, int64_t cols) {
  __shared__ double smem[kRowThreads];
  softmaxBackwardBody(DeviceCtx(), dx, y, dy, rows, cols, smem);
}

int rowGrid(int64_t rows) { return gridFor(rows, 1, 1 << 20); }

}  // namespace

void CudaBackend::embeddingForward(float* out, const float* weight, const float* ids, int64_t count,
                                   int64_t vocab, int64_t dim) {
  checkIndices("embedding", "token id", "position", "a token index", ids, count, vocab,
               kNoIgnoreIndex);
  launchForEach(stream_, count * dim, EmbeddingForwardOp{out, weight, ids, dim},
                "EmbeddingForwardOp");
}

void CudaBackend::embeddingBackward(float* dweight, const float* dy, const float* ids,
                                    int64_t count, int64_t vocab, int64_t dim) {
  checkIndices("embedding", "token id", "position", "a token index", ids, count, vocab,
               kNoIgnoreIndex);
  launchForEach(stream_, dim, EmbeddingBackwardOp{dweight, dy, ids, count, dim},
                "EmbeddingBackwardOp");
}

void CudaBackend::normForward(Norm norm, float* y, float* stats, const float* x,
                              const float* weight, const float* bias, int64_t rows, int64_t cols,
                              float eps) {
  if (rows <= 0) return;
  normForwardKernel<<<rowGrid(rows), kRowThreads, 0, stream_>>>(norm, y, stats, x, weight, bias,
                                                                rows, cols, eps);
  checkLaunch("normForwardKernel");
}

void CudaBackend::normBackward(Norm norm, float* dx, float* dweight, float* dbias, const float* dy,
                               const float* x, const float* weight, const float* stats,
                               int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  if (dweight || dbias) {  // column sums first: dx may overwrite dy
    const int64_t chunkRows = std::max<int64_t>(512, (rows + 63) / 64);
    const int64_t chunks = (rows + chunkRows - 1) / chunkRows;
    double* partial = scratchDoubles(kScratchDoubles, 2 * chunks * cols);
    const dim3 grid(unsigned(gridFor(cols, 32, 1 << 16)), unsigned(chunks));
    normColumnPartialKernel<<<grid, kColumnThreads, 0, stream_>>>(dy, x, stats, rows, cols,
                                                                  chunkRows, partial);
    checkLaunch("normColumnPartialKernel");
    launchForEach(stream_, cols, NormColumnFinalOp{dweight, dbias, partial, cols, chunks},
                  "NormColumnFinalOp");
  }
  if (!dx) return;
  normBackwardRowKernel<<<rowGrid(rows), kRowThreads, 0, stream_>>>(norm, dx, dy, x, weight, stats,
                                                                    rows, cols);
  checkLaunch("normBackwardRowKernel");
}

void CudaBackend::softmaxRows(float* y, const float* x, int64_t rows, int64_t cols,
                              const AttentionMask* mask) {
  if (rows <= 0) return;
  softmaxRowsKernel<<<rowGrid(rows), kRowThreads, 0, stream_>>>(
      y, x, rows, cols, mask ? *mask : AttentionMask(), mask != nullptr);
  checkLaunch("softmaxRowsKernel");
}

void CudaBackend::softmaxBackward(float* dx, const float* y, const float* dy, int64_t rows,
                                  int64_t cols) {
  if (rows <= 0) return;
  softmaxBackwardKernel<<<rowGrid(rows), kRowThreads, 0, stream_>>>(dx, y, dy, rows, cols);
  checkLaunch("softmaxBackwardKernel");
}

void CudaBackend::rope(float* y, const float* x, const float* positions, const RopeShape& s,
                       bool inverse) {
  const int64_t half = s.rotaryDim / 2;
  const int64_t tableSize = (s.positionsPerBatch ? s.batch : 1) * s.tokens * half;
  float* cosTable = scratchFloats(kScratchPing, 2 * tableSize);
  float* sinTable = cosTable + tableSize;
  launchForEach(stream_, tableSize,
                RopeTableOp{cosTable, sinTable, positions, s.theta, s.rotaryDim}, "RopeTableOp");
  const int64_t rows = s.batch * s.heads * s.tokens;
  launchForEach(stream_, rows * half,
                RopeApplyOp{y, x, cosTable, sinTable, s.heads, s.tokens, s.headDim, s.rotaryDim,
                            s.positionsPerBatch, inverse ? -1.0f : 1.0f},
                "RopeApplyOp");
  if (y != x && s.rotaryDim < s.headDim) {
    copyBlocks(y + s.rotaryDim, s.headDim, x + s.rotaryDim, s.headDim, rows,
               s.headDim - s.rotaryDim);
  }
}

void CudaBackend::permute(float* y, const float* x, const int64_t* shape, const int* dims,
                          int rank) {
  PermuteOp op{y, x, rank, {}, {}};
  int64_t xStride[kMaxOrder];
  int64_t size = 1;
  for (int a = rank - 1; a >= 0; --a) {
    xStride[a] = size;
    size *= shape[a];
  }
  for (int a = 0; a < rank; ++a) {
    op.yShape[a] = shape[dims[a]];
    op.srcStride[a] = xStride[dims[a]];
  }
  launchForEach(stream_, size, op, "PermuteOp");
}

void CudaBackend::copyBlocks(float* dst, int64_t dstStride, const float* src, int64_t srcStride,
                             int64_t rows, int64_t cols) {
  launchForEach(stream_, rows * cols, CopyBlocksOp{dst, src, dstStride, srcStride, cols},
                "CopyBlocksOp");
}

}  // namespace cuda
}  // namespace tera
