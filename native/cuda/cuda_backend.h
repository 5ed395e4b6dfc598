// The CUDA backend's class, shared by the .cu files that implement it:
// cuda_backend.cu (device setup, memory, GEMM), cuda_tucker.cu (mode products,
// Tucker reconstruction, scale gradients, the factored path's Kronecker
// kernels), cuda_transformer.cu (embeddings, norms, softmax, rotary
// embeddings, permutes, block copies, batched GEMM) and cuda_elementwise.cu
// (the rest).
// Everything runs on one stream; every CUDA and cuBLAS error becomes a
// tera::Error naming the call. Without nvcc the host emulation's runtime
// (tests/emulation/device_runtime.h) stands in for the CUDA runtime.
#pragma once

#ifdef __CUDACC__
#include <cuda_runtime.h>
#else
#include "tests/emulation/device_runtime.h"
#endif

#include <cstdint>
#include <map>
#include <string>
#include <utility>

#include "core/backend.h"
#include "core/errors.h"
#include "cuda/cublas_loader.h"

namespace tera {
namespace cuda {

// Throws tera::Error("<call> failed: <name>: <text>") unless status is cudaSuccess.
void check(cudaError_t status, const char* call);
// Checks a kernel launch (cudaGetLastError).
void checkLaunch(const char* kernel);

#define TERA_CUDA_CHECK(call) ::tera::cuda::check((call), #call)

// Grid size for a grid-stride loop over `count` items: ceil(count / threads)
// blocks, at least 1, at most maxBlocks (and the testing cap, test_hooks.h).
int gridFor(int64_t count, int threads, int maxBlocks = 1 << 16);

enum ScratchSlot {
  kScratchMats,    // prepared factor matrices
  kScratchStaged,  // pass-A result of the fused multi-mode product
  kScratchPing,    // intermediates of the GEMM multi-mode product
  kScratchPong,
  kScratchCore,        // core-sized float work (the projected gradient H)
  kScratchDoubles,     // suffix contractions, weights, partial sums
  kScratchColumnDots,  // kroneckerScaleGrad's column sums (read by the peeling)
  kScratchResult,      // reduction results and flags
  kScratchCount
};

class CudaBackend final : public Backend {
 public:
  CudaBackend(const CublasApi* cublas, int device);
  ~CudaBackend() override;

  Device device() const override { return Device::Cuda; }
  std::string name() const override { return "cuda"; }

  float* allocate(int64_t count) override;
  void release(float* data) override;
  void upload(float* dst, const float* host, int64_t count) override;
  void download(float* host, const float* src, int64_t count) override;
  void copy(float* dst, const float* src, int64_t count) override;
  void synchronize() override;

  void gemm(bool transA, bool transB, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
            const float* b, float beta, float* c) override;
  void gemmStridedBatched(bool transA, bool transB, int64_t m, int64_t n, int64_t k, float alpha,
                          const float* a, int64_t strideA, const float* b, int64_t strideB,
                          float beta, float* c, int64_t strideC, int64_t batch) override;
  void modeProduct(const int64_t* shape, int order, int mode, const float* x, const float* matrix,
                   int64_t rows, const float* scale, float* y) override;
  void tuckerReconstruct(const TuckerShape& shape, const float* core, const float* const* factors,
                         const float* const* scales, float alpha, float* out,
                         const float* base) override;
  void tuckerScaleGrad(const TuckerShape& shape, float* gradX, const float* core,
                       const float* const* factors, const float* const* scales,
                       float* const* gradScales, bool overwriteGradX) override;
  void tuckerCoreGrad(int order, const int64_t* ranks, const float* z, const float* core,
                      const float* const* scales, float* const* gradScales) override;
  void kroneckerRows(int64_t rows, const TuckerShape& shape, const float* const* factors,
                     const float* const* scales, float alpha, bool contract, const float* x,
                     float* y) override;
  void kroneckerScale(int64_t rows, int order, const int64_t* ranks, const float* const* scales,
                      float alpha, const float* x, float* y) override;
  void kroneckerScaleGrad(int64_t rows, int order, const int64_t* ranks, const float* a,
                          const float* b, const float* const* scales, float alpha,
                          float* const* gradScales) override;
  void randomFill(float* out, int64_t count, Distribution distribution, uint64_t seed,
                  uint64_t stream, float a, float b) override;
  void fill(float* out, int64_t count, float value) override;
  void axpby(float* y, const float* x, int64_t count, float a, float b) override;
  void multiply(float* out, const float* x, const float* y, int64_t count) override;
  void scaleMatrix(float* out, const float* x, const float* v, int64_t rows, int64_t cols,
                   bool perColumn) override;
  void addRowVector(float* x, const float* v, int64_t rows, int64_t cols) override;
  void sumAxis(float* out, const float* x, int64_t rows, int64_t cols, bool overColumns,
               float beta) override;
  void activationForward(Activation activation, float* y, const float* x, int64_t count) override;
  void activationBackward(Activation activation, float* dx, const float* x, const float* dy,
                          int64_t count, float beta) override;
  double sum(const float* x, int64_t count) override;
  double dot(const float* x, const float* y, int64_t count) override;
  double softmaxCrossEntropy(const float* logits, const float* labels, int64_t rows,
                             int64_t classes, int64_t ignoreIndex, float* grad,
                             float scale) override;
  void argmaxRows(float* out, const float* x, int64_t rows, int64_t cols) override;
  void adamwStep(float* param, const float* grad, float* m, float* v, int64_t count,
                 const AdamWSettings& settings) override;
  void sgdStep(float* param, const float* grad, float* momentum, int64_t count,
               const SgdSettings& settings) override;
  // Transformer kernels (cuda_transformer.cu).
  void embeddingForward(float* out, const float* weight, const float* ids, int64_t count,
                        int64_t vocab, int64_t dim) override;
  void embeddingBackward(float* dweight, const float* dy, const float* ids, int64_t count,
                         int64_t vocab, int64_t dim) override;
  void normForward(Norm norm, float* y, float* stats, const float* x, const float* weight,
                   const float* bias, int64_t rows, int64_t cols, float eps) override;
  void normBackward(Norm norm, float* dx, float* dweight, float* dbias, const float* dy,
                    const float* x, const float* weight, const float* stats, int64_t rows,
                    int64_t cols) override;
  void softmaxRows(float* y, const float* x, int64_t rows, int64_t cols,
                   const AttentionMask* mask) override;
  void softmaxBackward(float* dx, const float* y, const float* dy, int64_t rows,
                       int64_t cols) override;
  void rope(float* y, const float* x, const float* positions, const RopeShape& shape,
            bool inverse) override;
  void permute(float* y, const float* x, const int64_t* shape, const int* dims, int rank) override;
  void copyBlocks(float* dst, int64_t dstStride, const float* src, int64_t srcStride, int64_t rows,
                  int64_t cols) override;

  // --- Shared by the implementation files ---
  cudaStream_t stream() const { return stream_; }
  int multiprocessors() const { return multiprocessors_; }
  // Shared memory per block that the fused Tucker planner may use.
  int sharedMemoryLimit() const { return planSharedMemory_; }
  // Caps it (tests walk every plan with small shapes); 0 restores the device's limit.
  int capSharedMemory(int bytes);
  // Grow-only device scratch; contents are not preserved when it grows.
  void* scratch(ScratchSlot slot, size_t bytes);
  float* scratchFloats(ScratchSlot slot, int64_t count) {
    return static_cast<float*>(scratch(slot, size_t(count) * sizeof(float)));
  }
  double* scratchDoubles(ScratchSlot slot, int64_t count) {
    return static_cast<double*>(scratch(slot, size_t(count) * sizeof(double)));
  }
  // out[P, J, Q] = U[J, K] in[P, K, Q] by cuBLAS (one GEMM or a strided batch).
  void modeProductGemm(int64_t P, int64_t K, int64_t Q, int64_t J, const float* u, const float* in,
                       float* out);
  // Stages M_n = A_n diag(s_n) for n < count in kScratchMats (A_n = src[n] of
  // shape [rows[n], cols[n]]; s_n = scales[n], none where that or scales is null),
  // as [rows, cols] or transposed ([cols, rows]); alpha is folded into M_0.
  // mats[n] receives M_n's device pointer.
  void prepareMats(int count, const int64_t* rows, const int64_t* cols, const float* const* src,
                   const float* const* scales, float alpha, bool transpose, const float** mats);
  // Y = X x_1 M_1 ... x_N M_N, M_n of shape [outDims[n], inDims[n]] (device
  // pointers); fused two-pass kernels when the shape allows, else GEMMs.
  // out may equal in when order >= 2 (in is only read by the first pass).
  // With base, out = base + Y (base distinct from out).
  void multiModeProduct(int order, const int64_t* inDims, const int64_t* outDims, const float* in,
                        const float* const* mats, float* out, const float* base = nullptr);
  // Every dl_n from H (prod R floats or doubles), by suffix contractions and
  // prefix weights, never dividing by l.
  template <typename T>
  void peelGradients(const T* h, int order, const int64_t* R, const float* const* scales,
                     float* const* gradScales);
  // Raises the dynamic shared memory limits of the fused kernels (constructor).
  void configureTuckerKernels();
  // Throws indexErrorMessage(...) for the first entry of indices [count] that is
  // not an integer in [0, limit) and not `skip` (synchronises).
  void checkIndices(const char* kernel, const char* what, const char* unit, const char* kind,
                    const float* indices, int64_t count, int64_t limit, int64_t skip);
  // Downloads one double from device memory (synchronises).
  double fetchDouble(const double* device);
  // Resident blocks per multiprocessor for a kernel and launch shape (cached).
  int blocksPerMultiprocessor(const void* kernel, int threads, size_t sharedBytes);

 private:
  void cublasCall(int status, const char* call);

  const CublasApi* cublas_;
  CublasHandle handle_ = nullptr;
  cudaStream_t stream_ = nullptr;
  int multiprocessors_ = 1;
  int sharedMemoryOptin_ = 48 * 1024;
  int planSharedMemory_ = 48 * 1024;
  std::map<std::pair<const void*, size_t>, int> occupancy_;
  void* scratch_[kScratchCount] = {};
  size_t scratchBytes_[kScratchCount] = {};
};

}  // namespace cuda
}  // namespace tera
