// Mode products and the Tucker kernels on the GPU. A single mode product is a
// cuBLAS GEMM (one, or a strided batch). A multi-mode product (reconstruction,
// and the core-space projection of the scale gradient) runs the fused two-pass
// kernels of tucker_kernels.cuh when their planner finds a layout that fits
// shared memory and registers (the first output mode at most 32 wide, and the
// leading group's outputs per column group within the pass-B accumulators),
// and otherwise successive strided-batched GEMMs with ping-pong buffers. The
// scale gradient then contracts H = Z * G with the scaling vectors by suffix
// contractions and prefix weights, never dividing by l.
#include <algorithm>
#include <climits>
#include <vector>

#include "cuda/cuda_backend.h"
#include "cuda/elementwise_kernels.cuh"
#include "cuda/launch.cuh"
#include "cuda/tucker_kernels.cuh"

namespace tera {
namespace cuda {
namespace {

__global__ void __launch_bounds__(kPhaseAThreads, 3)
    phaseAKernel(const __grid_constant__ PhaseAParams params, const float* in, float* staged) {
  TERA_DYNAMIC_SHARED(float, smem);
  phaseABody(DeviceCtx(), params, in, staged, smem);
}

template <int J0MAX, int PMAX>
__global__ void __launch_bounds__(kPhaseBThreads, 1)
    phaseBKernel(const __grid_constant__ PhaseBParams params, const float* staged, float* out) {
  TERA_DYNAMIC_SHARED(float, smem);
  phaseBBody<J0MAX, PMAX>(DeviceCtx(), params, staged, out, smem);
}

constexpr int kColumnDotsThreads = 256;

__global__ void __launch_bounds__(kColumnDotsThreads)
    columnDotsKernel(const float* a, const float* b, int64_t rows, int64_t cols, float alpha,
                     double* out) {
  columnDotsBody(DeviceCtx(), a, b, rows, cols, alpha, out);
}

// out[i] = base[i] + out[i]
struct AddBaseOp {
  float* out;
  const float* base;
  TERA_DEV void operator()(int64_t i) const { out[i] = base[i] + out[i]; }
};

constexpr int kContractThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kContractThreads)
    contractLastKernel(const T* in, int64_t rows, int64_t R, const float* l, double* out) {
  contractLastBody(DeviceCtx(), in, rows, R, l, out);
}

constexpr int kColumnThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kColumnThreads)
    weightedColumnPartialKernel(const double* weight, const T* s, int64_t rows, int64_t R,
                                int64_t chunk, double* partial) {
  TERA_SHARED_ARRAY(double, smem, kColumnThreads);
  weightedColumnPartialBody(DeviceCtx(), weight, s, rows, R, chunk, partial, smem);
}

struct FillDoubleOp {
  double* out;
  double value;
  TERA_DEV void operator()(int64_t i) const { out[i] = value; }
};

using PhaseAFn = void (*)(PhaseAParams, const float*, float*);
using PhaseBFn = void (*)(PhaseBParams, const float*, float*);
constexpr PhaseAFn kPhaseA = phaseAKernel;
PhaseBFn phaseBFor(int j0max) {
  switch (j0max) {
    case 8:
      return phaseBKernel<8, kPhaseBAccumulators / 8>;
    case 16:
      return phaseBKernel<16, kPhaseBAccumulators / 16>;
    default:
      return phaseBKernel<32, kPhaseBAccumulators / 32>;
  }
}

}  // namespace

void CudaBackend::configureTuckerKernels() {
  TERA_CUDA_CHECK(cudaFuncSetAttribute(kPhaseA, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       sharedMemoryOptin_));
  for (int j0max : {8, 16, 32}) {
    TERA_CUDA_CHECK(cudaFuncSetAttribute(
        phaseBFor(j0max), cudaFuncAttributeMaxDynamicSharedMemorySize, sharedMemoryOptin_));
  }
}

void CudaBackend::multiModeProduct(int order, const int64_t* inDims, const int64_t* outDims,
                                   const float* in, const float* const* mats, float* out,
                                   const float* base) {
  FusedPlan plan;
  if (planFused(order, inDims, outDims, mats, size_t(planSharedMemory_), &plan)) {
    plan.b.base = base;
    float* staged = scratchFloats(kScratchStaged, plan.stagedFloats);
    const int64_t w = int64_t(1) << plan.b.widthLog2;
    if (plan.b.rowLength % w != 0) {  // the padded columns of the last group stay defined
      const int64_t lastGroup = (plan.b.colBlocks - 1) * plan.b.rowsIn * w;
      TERA_CUDA_CHECK(cudaMemsetAsync(staged + lastGroup, 0,
                                      size_t(plan.b.rowsIn * w) * sizeof(float), stream_));
    }
    const int64_t residentA =
        int64_t(blocksPerMultiprocessor(reinterpret_cast<const void*>(kPhaseA), kPhaseAThreads,
                                        plan.smemA)) *
        multiprocessors_;
    const int gridA = gridFor(plan.a.slabs, 1, int(std::min<int64_t>(residentA, INT_MAX)));
    launchKernel("tucker pass A", kPhaseA, dim3(unsigned(gridA)), dim3(kPhaseAThreads), plan.smemA,
                 stream_, plan.a, in, staged);
    const PhaseBFn phaseB = phaseBFor(plan.j0max);
    const int64_t residentB = int64_t(blocksPerMultiprocessor(reinterpret_cast<const void*>(phaseB),
                                                              kPhaseBThreads, plan.smemB)) *
                              multiprocessors_;
    const int gridB = gridFor(plan.b.colBlocks, 1, int(std::min<int64_t>(residentB, INT_MAX)));
    launchKernel("tucker pass B", phaseB, dim3(unsigned(gridB)), dim3(kPhaseBThreads), plan.smemB,
                 stream_, plan.b, staged, out);
    return;
  }
  // Successive mode products, last mode first, through two scratch buffers.
  int64_t largest = 1;
  for (int n = 1; n < order; ++n) {
    largest = std::max(largest, product(inDims, 0, n) * product(outDims, n, order));
  }
  float* ping = order > 1 ? scratchFloats(kScratchPing, largest) : nullptr;
  float* pong = order > 2 ? scratchFloats(kScratchPong, largest) : nullptr;
  int64_t cur[kMaxOrder];
  std::copy(inDims, inDims + order, cur);
  const float* src = in;
  for (int n = order - 1; n >= 0; --n) {
    float* dst = n == 0 ? out : (src == ping ? pong : ping);
    modeProductGemm(product(cur, 0, n), inDims[n], product(cur, n + 1, order), outDims[n], mats[n],
                    src, dst);
    cur[n] = outDims[n];
    src = dst;
  }
  if (base) launchForEach(stream_, product(outDims, 0, order), AddBaseOp{out, base}, "AddBaseOp");
}

void CudaBackend::modeProduct(const int64_t* shape, int order, int mode, const float* x,
                              const float* matrix, int64_t rows, const float* scale, float* y) {
  if (order < 1 || order > kMaxOrder || mode < 0 || mode >= order) {
    throw Error("modeProduct: mode " + std::to_string(mode) + " is out of range for order " +
                std::to_string(order));
  }
  checkedProduct(shape, order, "modeProduct input");
  if (rows <= 0) throw Error("modeProduct: the matrix must have at least one row");
  const int64_t P = product(shape, 0, mode), K = shape[mode], Q = product(shape, mode + 1, order);
  const float* u = matrix;
  if (scale) prepareMats(1, &rows, &K, &matrix, &scale, 1.0f, false, &u);
  modeProductGemm(P, K, Q, rows, u, x, y);
}

void CudaBackend::prepareMats(int count, const int64_t* rows, const int64_t* cols,
                              const float* const* src, const float* const* scales, float alpha,
                              bool transpose, const float** mats) {
  PrepareMatsOp op;
  op.count = count;
  op.transpose = transpose;
  int64_t total = 0;
  for (int n = 0; n < count; ++n) {
    op.offset[n] = total;
    total += rows[n] * cols[n];
  }
  op.offset[count] = total;
  float* buffer = scratchFloats(kScratchMats, total);
  for (int n = 0; n < count; ++n) {
    op.src[n] = src[n];
    op.scale[n] = scales ? scales[n] : nullptr;
    op.multiplier[n] = n == 0 ? alpha : 1.0f;
    op.dst[n] = buffer + op.offset[n];
    op.rows[n] = rows[n];
    op.cols[n] = cols[n];
    mats[n] = op.dst[n];
  }
  launchForEach(stream_, total, op, "PrepareMatsOp");
}

void CudaBackend::tuckerReconstruct(const TuckerShape& shape, const float* core,
                                    const float* const* factors, const float* const* scales,
                                    float alpha, float* out, const float* base) {
  const int N = shape.order;
  if (N < 1 || N > kMaxOrder) throw Error("tuckerReconstruct: bad Tucker order");
  const float* mats[kMaxOrder];
  prepareMats(N, shape.modes, shape.ranks, factors, scales, alpha, false, mats);
  multiModeProduct(N, shape.ranks, shape.modes, core, mats, out, base);
}

void CudaBackend::tuckerScaleGrad(const TuckerShape& shape, float* gradX, const float* core,
                                  const float* const* factors, const float* const* scales,
                                  float* const* gradScales, bool overwriteGradX) {
  const int N = shape.order;
  if (N < 1 || N > kMaxOrder) throw Error("tuckerScaleGrad: bad Tucker order");
  const int64_t* R = shape.ranks;
  // Z = gradX x_1 A_1^T ... x_N A_N^T, then H = Z * G.
  const float* mats[kMaxOrder];
  prepareMats(N, shape.modes, R, factors, nullptr, 1.0f, true, mats);
  const int64_t coreSize = shape.coreSize();
  // With overwriteGradX and modes == ranks, H replaces gradX (both passes of the
  // fused product, and the GEMM chain from its second step, no longer read it).
  const bool inPlace = overwriteGradX && N >= 2 && std::equal(shape.modes, shape.modes + N, R);
  float* h = inPlace ? gradX : scratchFloats(kScratchCore, coreSize);
  multiModeProduct(N, shape.modes, R, gradX, mats, h);
  multiply(h, h, core, coreSize);
  peelGradients(static_cast<const float*>(h), N, R, scales, gradScales);
}

void CudaBackend::tuckerCoreGrad(int order, const int64_t* ranks, const float* z, const float* core,
                                 const float* const* scales, float* const* gradScales) {
  if (order < 1 || order > kMaxOrder) throw Error("tuckerCoreGrad: bad order");
  const int64_t coreSize = product(ranks, 0, order);
  float* h = scratchFloats(kScratchCore, coreSize);
  multiply(h, z, core, coreSize);
  peelGradients(static_cast<const float*>(h), order, ranks, scales, gradScales);
}

template <typename T>
void CudaBackend::peelGradients(const T* h, int order, const int64_t* R, const float* const* scales,
                                float* const* gradScales) {
  const int N = order;
  // lead[n] = R_0 * ... * R_{n-1}. suffix[n] (n >= 1, size lead[n]) is H contracted
  // with l_n..l_{N-1}; weights[n] (size lead[n]) = l_0 (x) ... (x) l_{n-1}.
  int64_t lead[kMaxOrder + 1];
  lead[0] = 1;
  for (int n = 0; n < N; ++n) lead[n + 1] = lead[n] * R[n];
  const int64_t maxR = *std::max_element(R, R + N);
  int64_t chunks[kMaxOrder], chunkRows[kMaxOrder];
  int64_t maxChunks = 1;
  for (int n = 0; n < N; ++n) {
    chunkRows[n] = std::max<int64_t>(1, (lead[n] + 255) / 256);
    chunks[n] = (lead[n] + chunkRows[n] - 1) / chunkRows[n];
    maxChunks = std::max(maxChunks, chunks[n]);
  }
  int64_t suffixOffset[kMaxOrder + 1], weightOffset[kMaxOrder + 1], doubles = 0;
  for (int n = 1; n < N; ++n) {
    suffixOffset[n] = doubles;
    doubles += lead[n];
  }
  for (int n = 0; n < N; ++n) {
    weightOffset[n] = doubles;
    doubles += lead[n];
  }
  const int64_t partialOffset = doubles;
  doubles += maxChunks * maxR;
  double* work = scratchDoubles(kScratchDoubles, doubles);
  double* partial = work + partialOffset;
  auto scaleOf = [&](int n) { return scales ? scales[n] : nullptr; };

  for (int n = N - 1; n >= 1; --n) {
    const dim3 grid(unsigned(gridFor(lead[n], kContractThreads)));
    if (n == N - 1) {
      launchKernel("contractLast", contractLastKernel<T>, grid, dim3(kContractThreads), 0, stream_,
                   h, lead[n], R[n], scaleOf(n), work + suffixOffset[n]);
    } else {
      launchKernel("contractLast", contractLastKernel<double>, grid, dim3(kContractThreads), 0,
                   stream_, work + suffixOffset[n + 1], lead[n], R[n], scaleOf(n),
                   work + suffixOffset[n]);
    }
  }
  launchForEach(stream_, 1, FillDoubleOp{work + weightOffset[0], 1.0}, "FillDoubleOp");
  for (int n = 0; n < N; ++n) {
    const double* weight = work + weightOffset[n];
    const dim3 grid(unsigned(gridFor(chunks[n], 1)));
    if (n == N - 1) {
      launchKernel("weightedColumnPartial", weightedColumnPartialKernel<T>, grid,
                   dim3(kColumnThreads), 0, stream_, weight, h, lead[n], R[n], chunkRows[n],
                   partial);
    } else {
      launchKernel("weightedColumnPartial", weightedColumnPartialKernel<double>, grid,
                   dim3(kColumnThreads), 0, stream_, weight, work + suffixOffset[n + 1], lead[n],
                   R[n], chunkRows[n], partial);
    }
    launchForEach(stream_, R[n], ChunkFinalOp{gradScales[n], partial, R[n], chunks[n]},
                  "ChunkFinalOp");
    if (n + 1 < N) {
      launchForEach(stream_, lead[n + 1],
                    ExpandWeightsOp{weight, scaleOf(n), work + weightOffset[n + 1], R[n]},
                    "ExpandWeightsOp");
    }
  }
}

void CudaBackend::kroneckerRows(int64_t rows, const TuckerShape& shape, const float* const* factors,
                                const float* const* scales, float alpha, bool contract,
                                const float* x, float* y) {
  const int Q = shape.order;
  if (Q < 1 || Q > kMaxOrder) throw Error("kroneckerRows: bad order");
  // M_n = A_n diag(s_n) ([I, R]) to expand, its transpose ([R, I]) to contract;
  // alpha folded into the first.
  int64_t in[kMaxOrder], out[kMaxOrder];
  for (int n = 0; n < Q; ++n) {
    in[n] = contract ? shape.modes[n] : shape.ranks[n];
    out[n] = contract ? shape.ranks[n] : shape.modes[n];
  }
  const float* mats[kMaxOrder];
  prepareMats(Q, shape.modes, shape.ranks, factors, scales, alpha, contract, mats);
  // Successive mode products on [rows, ...], last mode first, by cuBLAS.
  int64_t largest = 0, cur[kMaxOrder];
  std::copy(in, in + Q, cur);
  for (int n = Q - 1; n >= 1; --n) {
    cur[n] = out[n];
    largest = std::max(largest, rows * product(cur, 0, Q));
  }
  float* ping = Q > 1 ? scratchFloats(kScratchPing, largest) : nullptr;
  float* pong = Q > 2 ? scratchFloats(kScratchPong, largest) : nullptr;
  std::copy(in, in + Q, cur);
  const float* src = x;
  for (int n = Q - 1; n >= 0; --n) {
    float* dst = n == 0 ? y : (src == ping ? pong : ping);
    modeProductGemm(rows * product(cur, 0, n), cur[n], product(cur, n + 1, Q), out[n], mats[n], src,
                    dst);
    cur[n] = out[n];
    src = dst;
  }
}

void CudaBackend::kroneckerScale(int64_t rows, int order, const int64_t* ranks,
                                 const float* const* scales, float alpha, const float* x,
                                 float* y) {
  if (order < 1 || order > kMaxOrder) throw Error("kroneckerScale: bad order");
  KroneckerScaleOp op;
  op.x = x;
  op.y = y;
  op.cols = product(ranks, 0, order);
  op.order = order;
  for (int n = 0; n < order; ++n) {
    op.ranks[n] = ranks[n];
    op.scales[n] = scales ? scales[n] : nullptr;
  }
  op.alpha = alpha;
  launchForEach(stream_, rows * op.cols, op, "KroneckerScaleOp");
}

void CudaBackend::kroneckerScaleGrad(int64_t rows, int order, const int64_t* ranks, const float* a,
                                     const float* b, const float* const* scales, float alpha,
                                     float* const* gradScales) {
  if (order < 1 || order > kMaxOrder) throw Error("kroneckerScaleGrad: bad order");
  const int64_t cols = product(ranks, 0, order);
  double* m = scratchDoubles(kScratchColumnDots, cols);
  launchKernel("columnDots", columnDotsKernel, dim3(unsigned(gridFor(cols, kColumnDotsThreads))),
               dim3(kColumnDotsThreads), 0, stream_, a, b, rows, cols, alpha, m);
  peelGradients(static_cast<const double*>(m), order, ranks, scales, gradScales);
}

}  // namespace cuda
}  // namespace tera
