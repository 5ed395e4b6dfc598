// CPU transformer kernels: embedding lookup and its
// scatter-add, LayerNorm / RMSNorm, the (masked) row softmax, rotary position
// embeddings, permutes and block copies. Each is the reference of its CUDA twin
// (native/cuda/transformer_kernels.cuh); the semantics are documented on the
// Backend methods in core/backend.h. Rows are split over the thread pool;
// reductions accumulate in double in a fixed order, so results do not depend
// on the thread count.
#pragma once

#include <cstdint>

#include "core/backend.h"

namespace tera {
namespace cpu {

void embeddingForward(float* out, const float* weight, const float* ids, int64_t count,
                      int64_t vocab, int64_t dim);
void embeddingBackward(float* dweight, const float* dy, const float* ids, int64_t count,
                       int64_t vocab, int64_t dim);
void normForward(Norm norm, float* y, float* stats, const float* x, const float* weight,
                 const float* bias, int64_t rows, int64_t cols, float eps);
void normBackward(Norm norm, float* dx, float* dweight, float* dbias, const float* dy,
                  const float* x, const float* weight, const float* stats, int64_t rows,
                  int64_t cols);
void softmaxRows(float* y, const float* x, int64_t rows, int64_t cols, const AttentionMask* mask);
void softmaxBackward(float* dx, const float* y, const float* dy, int64_t rows, int64_t cols);
void rope(float* y, const float* x, const float* positions, const RopeShape& shape, bool inverse);
void permute(float* y, const float* x, const int64_t* shape, const int* dims, int rank);
void copyBlocks(float* dst, int64_t dstStride, const float* src, int64_t srcStride, int64_t rows,
                int64_t cols);

// Throws indexErrorMessage(kernel, what, ..., unit, ..., kind, limit) for the first
// entry of indices [count] that is not an integer in [0, limit) and not `skip`.
void checkIndices(const char* kernel, const char* what, const char* unit, const char* kind,
                  const float* indices, int64_t count, int64_t limit,
                  int64_t skip = kNoIgnoreIndex);

}  // namespace cpu
}  // namespace tera
