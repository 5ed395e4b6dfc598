// Elementwise operations, activations, optimiser steps, random fills and
// reductions of the CUDA backend. Elementwise work is one grid-stride functor
// kernel per operation; reductions use a fixed grid for a given size and a
// fixed combination order, so their results are deterministic. Results that
// the host needs (sum, dot, loss) are downloaded, which synchronises the stream.
#include <cmath>

#include "cuda/cuda_backend.h"
#include "cuda/elementwise_kernels.cuh"
#include "cuda/launch.cuh"

namespace tera {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <class Term>
__global__ void __launch_bounds__(kReduceThreads)
    reducePartialKernel(int64_t count, Term term, double* partial) {
  TERA_SHARED_ARRAY(double, smem, kReduceThreads);
  reducePartialBody(DeviceCtx(), count, term, partial, smem);
}

__global__ void __launch_bounds__(kReduceThreads)
    reduceFinalKernel(const double* partial, int64_t count, double* result) {
  TERA_SHARED_ARRAY(double, smem, kReduceThreads);
  reduceFinalBody(DeviceCtx(), partial, count, result, smem);
}

__global__ void __launch_bounds__(kRowThreads)
    rowSumKernel(float* out, const float* x, int64_t rows, int64_t cols, float beta) {
  TERA_SHARED_ARRAY(double, smem, kRowThreads);
  rowSumBody(DeviceCtx(), out, x, rows, cols, beta, smem);
}

__global__ void __launch_bounds__(kThreads)
    columnPartialKernel(const float* x, int64_t rows, int64_t cols, int64_t chunkRows,
                        double* partial) {
  TERA_SHARED_ARRAY(double, smem, kThreads);
  columnPartialBody(DeviceCtx(), x, rows, cols, chunkRows, partial, smem);
}

__global__ void __launch_bounds__(kRowThreads)
    softmaxRowKernel(const float* logits, const float* labels, int64_t rows, int64_t classes,
                     float* grad, float scale, double* rowLoss) {
  TERA_SHARED_ARRAY(double, smem, kRowThreads);
  softmaxRowBody(DeviceCtx(), logits, labels, rows, classes, grad, scale, rowLoss, smem);
}

__global__ void __launch_bounds__(kRowThreads)
    argmaxRowKernel(float* out, const float* x, int64_t rows, int64_t cols) {
  TERA_SHARED_ARRAY(float, values, kRowThreads);
  TERA_SHARED_ARRAY(int64_t, indices, kRowThreads);
  argmaxRowBody(DeviceCtx(), out, x, rows, cols, values, indices);
}

int reduceBlocks(int64_t count) { return gridFor(count, kReduceThreads * 8, kReduceMaxBlocks); }

}  // namespace

void CudaBackend::randomFill(float* out, int64_t count, Distribution distribution, uint64_t seed,
                             uint64_t stream, float a, float b) {
  launchForEach(stream_, count,
                RandomOp{out, seed, stream, a, b, distribution == Distribution::Normal},
                "RandomOp");
}

void CudaBackend::fill(float* out, int64_t count, float value) {
  launchForEach(stream_, count, FillOp{out, value}, "FillOp");
}

void CudaBackend::axpby(float* y, const float* x, int64_t count, float a, float b) {
  launchForEach(stream_, count, AxpbyOp{y, x, a, b}, "AxpbyOp");
}

void CudaBackend::multiply(float* out, const float* x, const float* y, int64_t count) {
  launchForEach(stream_, count, MultiplyOp{out, x, y}, "MultiplyOp");
}

void CudaBackend::scaleMatrix(float* out, const float* x, const float* v, int64_t rows,
                              int64_t cols, bool perColumn) {
  launchForEach(stream_, rows * cols, ScaleMatrixOp{out, x, v, cols, perColumn}, "ScaleMatrixOp");
}

void CudaBackend::addRowVector(float* x, const float* v, int64_t rows, int64_t cols) {
  launchForEach(stream_, rows * cols, AddRowVectorOp{x, v, cols}, "AddRowVectorOp");
}

void CudaBackend::sumAxis(float* out, const float* x, int64_t rows, int64_t cols, bool overColumns,
                          float beta) {
  if (overColumns) {
    if (rows <= 0) return;
    launchKernel("rowSumKernel", rowSumKernel, dim3(unsigned(gridFor(rows, 1, 1 << 20))),
                 dim3(kRowThreads), 0, stream_, out, x, rows, cols, beta);
    return;
  }
  if (cols <= 0) return;
  // Up to 64 chunks of rows, each summed by blocks of 32 columns x 8 lanes.
  const int64_t chunkRows = std::max<int64_t>(512, (rows + 63) / 64);
  const int64_t chunks = std::max<int64_t>(1, (rows + chunkRows - 1) / chunkRows);
  double* partial = scratchDoubles(kScratchDoubles, chunks * cols);
  const dim3 grid(unsigned(gridFor(cols, 32, 1 << 16)), unsigned(chunks));
  launchKernel("columnPartialKernel", columnPartialKernel, grid, dim3(kThreads), 0, stream_, x,
               rows, cols, chunkRows, partial);
  launchForEach(stream_, cols, ColumnFinalOp{out, partial, cols, rows > 0 ? chunks : 0, beta},
                "ColumnFinalOp");
}

void CudaBackend::activationForward(Activation activation, float* y, const float* x,
                                    int64_t count) {
  launchForEach(stream_, count, ActivationForwardOp{activation, y, x}, "ActivationForwardOp");
}

void CudaBackend::activationBackward(Activation activation, float* dx, const float* x,
                                     const float* dy, int64_t count, float beta) {
  launchForEach(stream_, count, ActivationBackwardOp{activation, dx, x, dy, beta},
                "ActivationBackwardOp");
}

namespace {
template <class Term>
double reduceOnDevice(CudaBackend& backend, int64_t count, const Term& term) {
  if (count <= 0) return 0.0;
  const int blocks = reduceBlocks(count);
  double* work = backend.scratchDoubles(kScratchResult, blocks + 1);
  launchKernel("reducePartialKernel", reducePartialKernel<Term>, dim3(unsigned(blocks)),
               dim3(kReduceThreads), 0, backend.stream(), count, term, work + 1);
  launchKernel("reduceFinalKernel", reduceFinalKernel, dim3(1), dim3(kReduceThreads), 0,
               backend.stream(), work + 1, int64_t(blocks), work);
  return backend.fetchDouble(work);
}
}  // namespace

double CudaBackend::sum(const float* x, int64_t count) {
  return reduceOnDevice(*this, count, SumTerm{x});
}

double CudaBackend::dot(const float* x, const float* y, int64_t count) {
  return reduceOnDevice(*this, count, DotTerm{x, y});
}

double CudaBackend::softmaxCrossEntropy(const float* logits, const float* labels, int64_t rows,
                                        int64_t classes, float* grad, float scale) {
  if (rows <= 0) return std::nan("");  // the CPU's 0 / 0
  // Labels first, as the CPU does: the first bad row is reported.
  unsigned long long* firstBad =
      static_cast<unsigned long long*>(scratch(kScratchResult, sizeof(unsigned long long)));
  TERA_CUDA_CHECK(cudaMemsetAsync(firstBad, 0xff, sizeof(unsigned long long), stream_));
  launchForEach(stream_, rows, LabelCheckOp{labels, classes, firstBad}, "LabelCheckOp");
  unsigned long long bad = 0;
  TERA_CUDA_CHECK(cudaMemcpyAsync(&bad, firstBad, sizeof bad, cudaMemcpyDeviceToHost, stream_));
  TERA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (bad != ~0ull) {
    float label = 0;
    download(&label, labels + bad, 1);
    throw Error("softmaxCrossEntropy: label " + std::to_string(label) + " at row " +
                std::to_string(bad) + " is not a class index in [0, " + std::to_string(classes) +
                ")");
  }
  double* rowLoss = scratchDoubles(kScratchDoubles, rows);
  launchKernel("softmaxRowKernel", softmaxRowKernel, dim3(unsigned(gridFor(rows, 1, 1 << 20))),
               dim3(kRowThreads), 0, stream_, logits, labels, rows, classes, grad, scale, rowLoss);
  return reduceOnDevice(*this, rows, DoubleTerm{rowLoss}) / double(rows);
}

void CudaBackend::argmaxRows(float* out, const float* x, int64_t rows, int64_t cols) {
  if (rows <= 0) return;
  launchKernel("argmaxRowKernel", argmaxRowKernel, dim3(unsigned(gridFor(rows, 1, 1 << 20))),
               dim3(kRowThreads), 0, stream_, out, x, rows, cols);
}

void CudaBackend::adamwStep(float* param, const float* grad, float* m, float* v, int64_t count,
                            const AdamWSettings& s) {
  // Bias corrections exactly as the CPU backend computes them.
  const double correction1 = 1.0 - std::pow(double(s.beta1), double(s.step));
  const double correction2 = 1.0 - std::pow(double(s.beta2), double(s.step));
  const float stepSize = float(double(s.learningRate) / correction1);
  const float rootCorrection2 = float(std::sqrt(correction2));
  launchForEach(stream_, count,
                AdamWOp{param, grad, m, v, s.learningRate, s.beta1, s.beta2, s.epsilon,
                        s.weightDecay, stepSize, rootCorrection2},
                "AdamWOp");
}

void CudaBackend::sgdStep(float* param, const float* grad, float* momentum, int64_t count,
                          const SgdSettings& s) {
  launchForEach(stream_, count,
                SgdOp{param, grad, momentum, s.learningRate, s.momentum, s.weightDecay, s.nesterov},
                "SgdOp");
}

}  // namespace cuda
}  // namespace tera
