// Mode products and the Tucker kernels on the GPU. A single mode product is a
// cuBLAS GEMM (one, or a strided batch). A multi-mode product (reconstruction,
// and the core-space projection of the scale gradient) runs the fused two-pass
// kernels of tucker_kernels.cuh when the planner below finds a layout that fits
// shared memory and registers (modes up to 32 wide in pass A, 16 in pass B, the
// first output mode up to 32), and otherwise successive strided-batched GEMMs
// with ping-pong buffers. The scale gradient then contracts H = Z * G with the
// scaling vectors by suffix contractions and prefix weights, never dividing by l.
#include <algorithm>
#include <vector>

#include "cuda/cuda_backend.h"
#include "cuda/elementwise_kernels.cuh"
#include "cuda/tucker_kernels.cuh"

namespace tera {
namespace cuda {
namespace {

template <class Op>
__global__ void forEachKernel(int64_t count, Op op) {
  forEachBody(DeviceCtx(), count, op);
}

template <class Op>
void launchForEach(cudaStream_t stream, int64_t count, const Op& op, const char* name) {
  if (count <= 0) return;
  forEachKernel<<<gridFor(count, 256), 256, 0, stream>>>(count, op);
  checkLaunch(name);
}

template <int FPT>
__global__ void __launch_bounds__(kPhaseAThreads, 3)
    phaseAKernel(const __grid_constant__ PhaseAParams params, const float* in, float* staged) {
  extern __shared__ __align__(16) float smem[];
  phaseABody<FPT>(DeviceCtx(), params, in, staged, smem);
}

template <int J0MAX, int PMAX>
__global__ void __launch_bounds__(kPhaseBThreads, 1)
    phaseBKernel(const __grid_constant__ PhaseBParams params, const float* staged, float* out) {
  extern __shared__ __align__(16) float smem[];
  phaseBBody<J0MAX, PMAX>(DeviceCtx(), params, staged, out, smem);
}

template <typename T>
__global__ void contractLastKernel(const T* in, int64_t rows, int64_t R, const float* l,
                                   double* out) {
  contractLastBody(DeviceCtx(), in, rows, R, l, out);
}

constexpr int kColumnThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kColumnThreads)
    weightedColumnPartialKernel(const double* weight, const T* s, int64_t rows, int64_t R,
                                int64_t chunk, double* partial) {
  __shared__ double smem[kColumnThreads];
  weightedColumnPartialBody(DeviceCtx(), weight, s, rows, R, chunk, partial, smem);
}

struct FillDoubleOp {
  double* out;
  double value;
  __device__ void operator()(int64_t i) const { out[i] = value; }
};

using PhaseAFn = void (*)(PhaseAParams, const float*, float*);
using PhaseBFn = void (*)(PhaseBParams, const float*, float*);
constexpr PhaseAFn kPhaseA = phaseAKernel<2>;
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

int64_t product(const int64_t* dims, int begin, int end) {
  int64_t p = 1;
  for (int i = begin; i < end; ++i) p *= dims[i];
  return p;
}

int fiberTier(int64_t k) { return k <= 4 ? 4 : k <= 8 ? 8 : k <= 16 ? 16 : 32; }

// Row stride >= x for rows of q contiguous floats such that the rows a warp
// touches start in different banks: an odd multiple of the power of two >= q.
int64_t padRow(int64_t x, int64_t q) {
  if (q >= 32) return x;
  int64_t g = 1;
  while (g < q) g <<= 1;
  int64_t s = (x + g - 1) / g * g;
  if ((s / g) % 2 == 0) s += g;
  return s;
}

// Plans modes [lo, hi) (applied hi-1 first) on tiles of 2^widthLog2 columns.
// False when a mode is wider than kCap or a buffer exceeds maxFloats.
bool buildGroup(int lo, int hi, const int64_t* d, const int64_t* e, int widthLog2, int kCap,
                int64_t maxFloats, const float* const* mats, GroupPlan* g) {
  *g = GroupPlan();
  const int64_t w = int64_t(1) << widthLog2;
  g->steps = hi - lo;
  if (g->steps == 0) {  // a tile is one row of w columns
    g->stageFloats = 8;
    g->loadK = 1;
    g->loadDiv = makeFastDiv(1);
    g->loadStrideP = g->loadStrideK = int(w);
    return true;
  }
  int64_t previousOutStride = 0, stageFloats = 0, bufFloats = 0, matOffset = 0;
  for (int i = 0; i < g->steps; ++i) {
    const int n = hi - 1 - i;
    const int64_t K = d[n], J = e[n];
    if (K > kCap) return false;
    const int64_t P = product(d, lo, n), Q = product(e, n + 1, hi) * w;
    const int64_t inStrideK = i == 0 ? Q : previousOutStride;
    const int64_t inStrideP = i == 0 ? padRow(K * Q, Q) : K * previousOutStride;
    const int64_t outStrideP = n == lo ? J * Q : padRow(J * Q, Q);
    const int64_t inNeed = P * inStrideP, outNeed = P * outStrideP;
    if (inNeed > maxFloats || outNeed > maxFloats || J * 32 > maxFloats) return false;
    if (i == 0) {
      stageFloats = inNeed;
    } else {
      bufFloats = std::max(bufFloats, inNeed);
    }
    bufFloats = std::max(bufFloats, outNeed);
    ModeStep& st = g->step[i];
    st.K = int(K);
    st.J = int(J);
    st.kTier = fiberTier(K);
    st.Q = int(Q);
    st.fibers = int(P * Q);
    st.byQ = makeFastDiv(uint32_t(Q));
    st.inStrideP = int(inStrideP);
    st.inStrideK = int(inStrideK);
    st.outStrideP = int(outStrideP);
    st.outStrideJ = int(Q);
    st.mat = int(matOffset);
    matOffset += J * st.kTier;
    g->mats[i] = mats[n];
    previousOutStride = outStrideP;
  }
  // Multiples of 8 floats: buffers stay 16-byte aligned, and pass B may read a
  // whole group of positions past the last valid one.
  g->matFloats = int(matOffset);
  g->stageFloats = int((stageFloats + 7) / 8 * 8);
  g->bufFloats = int((bufFloats + 7) / 8 * 8);
  g->loadK = g->step[0].K;
  g->loadDiv = makeFastDiv(uint32_t(g->loadK));
  g->loadStrideP = g->step[0].inStrideP;
  g->loadStrideK = g->step[0].inStrideK;
  return true;
}

struct FusedPlan {
  PhaseAParams a;
  PhaseBParams b;
  size_t smemA = 0, smemB = 0;
  int j0max = 8;
  int64_t stagedFloats = 0;
};

size_t smemBytes(int64_t mats, int stages, int64_t stage, int64_t buf) {
  return size_t(mats + stages * stage + 2 * buf) * sizeof(float);
}

bool planFused(int order, const int64_t* d, const int64_t* e, const float* const* mats,
               size_t smemLimit, FusedPlan* plan) {
  if (order < 2 || e[0] > 32) return false;
  const int j0max = e[0] <= 8 ? 8 : e[0] <= 16 ? 16 : 32;
  const int64_t positionsCap = int64_t(kPhaseBThreads) * (kPhaseBAccumulators / j0max);
  // Pass A keeps at most ~100 KiB per block so that two or more blocks share an SM.
  const size_t limitA = std::min<size_t>(smemLimit, 100 * 1024);
  for (int s = 1; s < order; ++s) {
    GroupPlan ga;
    if (!buildGroup(s, order, d, e, 0, kPhaseAFiberCap, int64_t(limitA / 4), mats, &ga)) continue;
    const size_t smemA = smemBytes(ga.matFloats, kPhaseAStages, ga.stageFloats, ga.bufFloats);
    if (smemA > limitA) continue;
    const int64_t sliceIn = product(d, 1, s), rowsOut = product(e, 1, s);
    for (int widthLog2 = 3; widthLog2 >= 0; --widthLog2) {
      const int64_t w = int64_t(1) << widthLog2;
      if (rowsOut * w > positionsCap) continue;
      GroupPlan gb;
      if (!buildGroup(1, s, d, e, widthLog2, kPhaseBFiberCap, int64_t(smemLimit / 4), mats, &gb)) {
        continue;
      }
      const int64_t u0Offset = gb.matFloats;
      const int64_t matFloatsB = u0Offset + d[0] * j0max;
      const size_t smemB = smemBytes(matFloatsB, kPhaseBStages, gb.stageFloats, gb.bufFloats);
      if (smemB > smemLimit) continue;
      const int64_t slabs = product(d, 0, s), rowLength = product(e, s, order);
      plan->a.g = ga;
      plan->a.slabs = slabs;
      plan->a.slabIn = int(product(d, s, order));
      plan->a.slabOut = int(rowLength);
      plan->a.widthLog2 = widthLog2;
      gb.matFloats = int(matFloatsB);
      plan->b.g = gb;
      plan->b.u0 = mats[0];
      plan->b.k0 = int(d[0]);
      plan->b.j0 = int(e[0]);
      plan->b.u0Offset = int(u0Offset);
      plan->b.widthLog2 = widthLog2;
      plan->b.sliceIn = int(sliceIn);
      plan->b.positions = int(rowsOut * w);
      plan->b.rowsOut = rowsOut;
      plan->b.rowsIn = slabs;
      plan->b.rowLength = rowLength;
      plan->b.colBlocks = (rowLength + w - 1) / w;
      plan->smemA = smemA;
      plan->smemB = smemB;
      plan->j0max = j0max;
      plan->stagedFloats = plan->b.colBlocks * slabs * w;
      return true;
    }
  }
  return false;
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
                                   const float* in, const float* const* mats, float* out) {
  FusedPlan plan;
  if (planFused(order, inDims, outDims, mats, size_t(sharedMemoryOptin_), &plan)) {
    float* staged = scratchFloats(kScratchStaged, plan.stagedFloats);
    const int64_t w = int64_t(1) << plan.b.widthLog2;
    if (plan.b.rowLength % w != 0) {  // the padded columns of the last group stay defined
      const int64_t lastGroup = (plan.b.colBlocks - 1) * plan.b.rowsIn * w;
      TERA_CUDA_CHECK(cudaMemsetAsync(staged + lastGroup, 0,
                                      size_t(plan.b.rowsIn * w) * sizeof(float), stream_));
    }
    int perSm = 0;
    TERA_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kPhaseA, kPhaseAThreads, plan.smemA));
    const int64_t gridA =
        std::min<int64_t>(plan.a.slabs, int64_t(std::max(perSm, 1)) * multiprocessors_);
    kPhaseA<<<int(gridA), kPhaseAThreads, plan.smemA, stream_>>>(plan.a, in, staged);
    checkLaunch("tucker pass A");
    const PhaseBFn phaseB = phaseBFor(plan.j0max);
    TERA_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, phaseB, kPhaseBThreads, plan.smemB));
    const int64_t gridB =
        std::min<int64_t>(plan.b.colBlocks, int64_t(std::max(perSm, 1)) * multiprocessors_);
    phaseB<<<int(gridB), kPhaseBThreads, plan.smemB, stream_>>>(plan.b, staged, out);
    checkLaunch("tucker pass B");
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
  if (scale) {
    float* scaled = scratchFloats(kScratchMats, rows * K);
    PrepareMatsOp op;
    op.count = 1;
    op.src[0] = matrix;
    op.scale[0] = scale;
    op.multiplier[0] = 1.0f;
    op.dst[0] = scaled;
    op.rows[0] = rows;
    op.cols[0] = K;
    op.offset[1] = rows * K;
    launchForEach(stream_, rows * K, op, "PrepareMatsOp");
    u = scaled;
  }
  modeProductGemm(P, K, Q, rows, u, x, y);
}

void CudaBackend::tuckerReconstruct(const TuckerShape& shape, const float* core,
                                    const float* const* factors, const float* const* scales,
                                    float alpha, float* out) {
  const int N = shape.order;
  if (N < 1 || N > kMaxOrder) throw Error("tuckerReconstruct: bad Tucker order");
  PrepareMatsOp op;
  op.count = N;
  int64_t total = 0;
  for (int n = 0; n < N; ++n) {
    op.offset[n] = total;
    total += shape.modes[n] * shape.ranks[n];
  }
  op.offset[N] = total;
  float* buffer = scratchFloats(kScratchMats, total);
  const float* mats[kMaxOrder];
  for (int n = 0; n < N; ++n) {
    op.src[n] = factors[n];
    op.scale[n] = scales ? scales[n] : nullptr;
    op.multiplier[n] = n == 0 ? alpha : 1.0f;
    op.dst[n] = buffer + op.offset[n];
    op.rows[n] = shape.modes[n];
    op.cols[n] = shape.ranks[n];
    mats[n] = op.dst[n];
  }
  launchForEach(stream_, total, op, "PrepareMatsOp");
  multiModeProduct(N, shape.ranks, shape.modes, core, mats, out);
}

void CudaBackend::tuckerScaleGrad(const TuckerShape& shape, float* gradX, const float* core,
                                  const float* const* factors, const float* const* scales,
                                  float* const* gradScales, bool overwriteGradX) {
  const int N = shape.order;
  if (N < 1 || N > kMaxOrder) throw Error("tuckerScaleGrad: bad Tucker order");
  const int64_t* R = shape.ranks;
  // Z = gradX x_1 A_1^T ... x_N A_N^T, then H = Z * G.
  PrepareMatsOp op;
  op.count = N;
  op.transpose = true;
  int64_t total = 0;
  for (int n = 0; n < N; ++n) {
    op.offset[n] = total;
    total += shape.modes[n] * R[n];
  }
  op.offset[N] = total;
  float* buffer = scratchFloats(kScratchMats, total);
  const float* mats[kMaxOrder];
  for (int n = 0; n < N; ++n) {
    op.src[n] = factors[n];
    op.multiplier[n] = 1.0f;
    op.dst[n] = buffer + op.offset[n];
    op.rows[n] = shape.modes[n];
    op.cols[n] = R[n];
    mats[n] = op.dst[n];
  }
  launchForEach(stream_, total, op, "PrepareMatsOp");
  const int64_t coreSize = shape.coreSize();
  // With overwriteGradX and modes == ranks, H replaces gradX (both passes of the
  // fused product, and the GEMM chain from its second step, no longer read it).
  const bool inPlace = overwriteGradX && N >= 2 && std::equal(shape.modes, shape.modes + N, R);
  float* h = inPlace ? gradX : scratchFloats(kScratchCore, coreSize);
  multiModeProduct(N, shape.modes, R, gradX, mats, h);
  multiply(h, h, core, coreSize);

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
    const int grid = gridFor(lead[n], 256);
    if (n == N - 1) {
      contractLastKernel<float>
          <<<grid, 256, 0, stream_>>>(h, lead[n], R[n], scaleOf(n), work + suffixOffset[n]);
    } else {
      contractLastKernel<double><<<grid, 256, 0, stream_>>>(
          work + suffixOffset[n + 1], lead[n], R[n], scaleOf(n), work + suffixOffset[n]);
    }
    checkLaunch("contractLast");
  }
  launchForEach(stream_, 1, FillDoubleOp{work + weightOffset[0], 1.0}, "FillDoubleOp");
  for (int n = 0; n < N; ++n) {
    const double* weight = work + weightOffset[n];
    const int grid = int(std::min<int64_t>(chunks[n], 1 << 16));
    if (n == N - 1) {
      weightedColumnPartialKernel<float>
          <<<grid, kColumnThreads, 0, stream_>>>(weight, h, lead[n], R[n], chunkRows[n], partial);
    } else {
      weightedColumnPartialKernel<double><<<grid, kColumnThreads, 0, stream_>>>(
          weight, work + suffixOffset[n + 1], lead[n], R[n], chunkRows[n], partial);
    }
    checkLaunch("weightedColumnPartial");
    launchForEach(stream_, R[n], ChunkFinalOp{gradScales[n], partial, R[n], chunks[n]},
                  "ChunkFinalOp");
    if (n + 1 < N) {
      launchForEach(stream_, lead[n + 1],
                    ExpandWeightsOp{weight, scaleOf(n), work + weightOffset[n + 1], R[n]},
                    "ExpandWeightsOp");
    }
  }
}

}  // namespace cuda
}  // namespace tera
