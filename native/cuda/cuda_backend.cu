// The CUDA backend: device discovery and the reasons it can be unusable, the
// backend object (one stream, one cuBLAS handle, grow-only scratch buffers),
// memory transfers and GEMM through cuBLAS. Row-major GEMMs are issued as the
// transposed column-major product: C^T = op(B)^T op(A)^T.
#include <algorithm>
#include <atomic>
#include <climits>
#include <mutex>

#include "cuda/cuda_backend.h"
#include "cuda/elementwise_kernels.cuh"
#include "cuda/launch.cuh"
#include "cuda/test_hooks.h"

#ifndef TERA_CUDA_ARCHS
#define TERA_CUDA_ARCHS "unknown"
#endif

namespace tera {
namespace cuda {
namespace {

// An error seen where we must not throw (release); reported by the next check.
std::mutex deferredMutex;
std::string deferredError;

std::string describe(cudaError_t status) {
  return std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
}

std::string versionText(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

__global__ void probeKernel(int* flag) {
  if (flag) *flag = 1;
}

}  // namespace

void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so later calls can proceed
    throw Error(std::string(call) + " failed: " + describe(status));
  }
  std::lock_guard<std::mutex> lock(deferredMutex);
  if (!deferredError.empty()) {
    std::string message;
    message.swap(deferredError);
    throw Error("an earlier CUDA call failed: " + message);
  }
}

void checkLaunch(const char* kernel) {
  check(cudaGetLastError(), (std::string("launch of ") + kernel).c_str());
}

namespace {
// Upper bound on every grid: tests lower it so that small sizes run the
// kernels' grid-stride loops (several rows, slabs or chunks per block).
std::atomic<int> gridLimit{INT_MAX};
}  // namespace

int gridFor(int64_t count, int threads, int maxBlocks) {
  const int64_t blocks = (count + threads - 1) / threads;
  const int64_t limit = std::min(maxBlocks, gridLimit.load(std::memory_order_relaxed));
  return int(blocks < 1 ? 1 : blocks > limit ? limit : blocks);
}

// --- Construction --------------------------------------------------------------

CudaBackend::CudaBackend(const CublasApi* cublas, int device) : cublas_(cublas) {
  TERA_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp prop;
  TERA_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  multiprocessors_ = prop.multiProcessorCount;
  sharedMemoryOptin_ = int(prop.sharedMemPerBlockOptin);
  planSharedMemory_ = sharedMemoryOptin_;
  TERA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  cublasCall(cublas_->create(&handle_), "cublasCreate_v2");
  cublasCall(cublas_->setStream(handle_, stream_), "cublasSetStream_v2");
  configureTuckerKernels();
}

// The backend is a process-lifetime singleton and is never destroyed (the CUDA
// runtime may already be torn down at exit); this releases what it can.
CudaBackend::~CudaBackend() {
  for (void*& p : scratch_) {
    if (p) cudaFree(p);
    p = nullptr;
  }
  if (handle_) cublas_->destroy(handle_);
  if (stream_) cudaStreamDestroy(stream_);
}

int CudaBackend::capSharedMemory(int bytes) {
  planSharedMemory_ = bytes > 0 && bytes < sharedMemoryOptin_ ? bytes : sharedMemoryOptin_;
  return planSharedMemory_;
}

void CudaBackend::cublasCall(int status, const char* call) {
  if (status != kCublasStatusSuccess) {
    throw Error(std::string(call) + " failed: " + cublasStatusName(status) + " (" +
                std::to_string(status) + ")");
  }
}

// --- Memory ----------------------------------------------------------------------

float* CudaBackend::allocate(int64_t count) {
  if (count < 0) throw Error("allocate: negative element count " + std::to_string(count));
  const size_t bytes = size_t(count < 1 ? 1 : count) * sizeof(float);
  void* data = nullptr;
  const cudaError_t status = cudaMalloc(&data, bytes);
  if (status != cudaSuccess) {
    cudaGetLastError();
    size_t freeBytes = 0, totalBytes = 0;
    cudaMemGetInfo(&freeBytes, &totalBytes);
    cudaGetLastError();
    throw Error("CUDA out of memory: cudaMalloc of " + std::to_string(bytes) + " bytes failed (" +
                describe(status) + "; " + std::to_string(freeBytes) + " of " +
                std::to_string(totalBytes) + " bytes free)");
  }
  const cudaError_t zeroed = cudaMemsetAsync(data, 0, bytes, stream_);
  if (zeroed != cudaSuccess) {
    cudaFree(data);
    check(zeroed, "cudaMemsetAsync");
  }
  return static_cast<float*>(data);
}

void CudaBackend::release(float* data) {
  if (!data) return;
  // Work queued on our stream may still use the memory.
  cudaError_t status = cudaStreamSynchronize(stream_);
  if (status == cudaSuccess) status = cudaFree(data);
  if (status != cudaSuccess) {
    cudaGetLastError();
    std::lock_guard<std::mutex> lock(deferredMutex);
    if (deferredError.empty()) deferredError = "cudaFree: " + describe(status);
  }
}

void CudaBackend::upload(float* dst, const float* host, int64_t count) {
  if (count <= 0) return;
  TERA_CUDA_CHECK(
      cudaMemcpyAsync(dst, host, size_t(count) * sizeof(float), cudaMemcpyHostToDevice, stream_));
  TERA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::download(float* host, const float* src, int64_t count) {
  if (count <= 0) return;
  TERA_CUDA_CHECK(
      cudaMemcpyAsync(host, src, size_t(count) * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  TERA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy(float* dst, const float* src, int64_t count) {
  if (count <= 0) return;
  TERA_CUDA_CHECK(
      cudaMemcpyAsync(dst, src, size_t(count) * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::synchronize() { TERA_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void* CudaBackend::scratch(ScratchSlot slot, size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (scratchBytes_[slot] >= bytes) return scratch_[slot];
  if (scratch_[slot]) {
    TERA_CUDA_CHECK(cudaStreamSynchronize(stream_));  // earlier kernels may still read it
    TERA_CUDA_CHECK(cudaFree(scratch_[slot]));
    scratch_[slot] = nullptr;
    scratchBytes_[slot] = 0;
  }
  const size_t rounded = (bytes + (size_t(1) << 20) - 1) >> 20 << 20;
  const cudaError_t status = cudaMalloc(&scratch_[slot], rounded);
  if (status != cudaSuccess) {
    cudaGetLastError();
    scratch_[slot] = nullptr;
    throw Error("CUDA out of memory: cudaMalloc of " + std::to_string(rounded) +
                " bytes of scratch failed (" + describe(status) + ")");
  }
  scratchBytes_[slot] = rounded;
  return scratch_[slot];
}

double CudaBackend::fetchDouble(const double* device) {
  double value = 0;
  TERA_CUDA_CHECK(cudaMemcpyAsync(&value, device, sizeof value, cudaMemcpyDeviceToHost, stream_));
  TERA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return value;
}

int CudaBackend::blocksPerMultiprocessor(const void* kernel, int threads, size_t sharedBytes) {
  const auto key = std::make_pair(kernel, sharedBytes * 4096 + size_t(threads));
  const auto found = occupancy_.find(key);
  if (found != occupancy_.end()) return found->second;
  int blocks = 0;
  TERA_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, sharedBytes));
  occupancy_[key] = blocks < 1 ? 1 : blocks;
  return occupancy_[key];
}

// --- GEMM ----------------------------------------------------------------------------

namespace {
int blasDim(int64_t value, const char* what) {
  if (value > INT_MAX) {
    throw Error(std::string("cuBLAS: ") + what + " = " + std::to_string(value) +
                " exceeds cuBLAS's 32-bit dimension limit");
  }
  return int(value);
}
}  // namespace

void CudaBackend::gemm(bool transA, bool transB, int64_t m, int64_t n, int64_t k, float alpha,
                       const float* a, const float* b, float beta, float* c) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // BLAS semantics: C = beta * C
    launchForEach(stream_, m * n, ScaleOp{c, beta}, "ScaleOp");
    return;
  }
  const int M = blasDim(m, "m"), N = blasDim(n, "n"), K = blasDim(k, "k");
  cublasCall(
      cublas_->sgemm(handle_, transB ? kCublasOpT : kCublasOpN, transA ? kCublasOpT : kCublasOpN, N,
                     M, K, &alpha, b, transB ? K : N, a, transA ? M : K, &beta, c, N),
      "cublasSgemm_v2");
}

void CudaBackend::modeProductGemm(int64_t P, int64_t K, int64_t Q, int64_t J, const float* u,
                                  const float* in, float* out) {
  if (Q == 1) {  // out[P, J] = in[P, K] U^T
    gemm(false, true, P, J, K, 1.0f, in, u, 0.0f, out);
    return;
  }
  if (P == 1) {  // out[J, Q] = U in[K, Q]
    gemm(false, false, J, Q, K, 1.0f, u, in, 0.0f, out);
    return;
  }
  // Column-major per batch p: out_p^T (Q x J) = in_p^T (Q x K) U^T (K x J).
  const int q = blasDim(Q, "mode product width"), j = blasDim(J, "mode product rows"),
            kk = blasDim(K, "mode product contraction");
  const float one = 1.0f, zero = 0.0f;
  for (int64_t p0 = 0; p0 < P; p0 += INT_MAX) {
    const int batch = int(P - p0 < INT_MAX ? P - p0 : INT_MAX);
    cublasCall(cublas_->sgemmStridedBatched(handle_, kCublasOpN, kCublasOpN, q, j, kk, &one,
                                            in + p0 * K * Q, q, K * Q, u, kk, 0, &zero,
                                            out + p0 * J * Q, q, J * Q, batch),
               "cublasSgemmStridedBatched");
  }
}

// --- Discovery -------------------------------------------------------------------------

namespace {

struct InitState {
  CudaStatus status;
  CudaBackend* backend = nullptr;
};

InitState initialize() {
  InitState state;
  CudaStatus& s = state.status;
  s.built = true;
  s.archs = TERA_CUDA_ARCHS;
  cudaRuntimeGetVersion(&s.runtimeVersion);
  const cudaError_t driverStatus = cudaDriverGetVersion(&s.driverVersion);
  if (driverStatus != cudaSuccess) s.driverVersion = 0;
  int count = 0;
  const cudaError_t countStatus = cudaGetDeviceCount(&count);
  if (countStatus != cudaSuccess) {
    cudaGetLastError();
    std::string why = "cudaGetDeviceCount failed (" + describe(countStatus) + "): ";
    if (s.driverVersion == 0) {
      why += "no NVIDIA driver was found";
    } else if (s.driverVersion < s.runtimeVersion) {
      why += "the driver supports CUDA " + versionText(s.driverVersion) +
             " but this binary's runtime is CUDA " + versionText(s.runtimeVersion) +
             "; update the NVIDIA driver";
    } else {
      why += "the driver (CUDA " + versionText(s.driverVersion) + ") cannot be used";
    }
    s.reason = why;
    return state;
  }
  if (count == 0) {
    s.reason = "no CUDA device found (the driver reports 0 devices)";
    return state;
  }
  cudaDeviceProp prop;
  const cudaError_t propStatus = cudaGetDeviceProperties(&prop, 0);
  if (propStatus != cudaSuccess) {
    cudaGetLastError();
    s.reason = "cudaGetDeviceProperties failed: " + describe(propStatus);
    return state;
  }
  s.deviceName = prop.name;
  s.computeCapability = prop.major * 10 + prop.minor;
  s.totalMemory = int64_t(prop.totalGlobalMem);
  cudaFuncAttributes attributes;
  const cudaError_t imageStatus = cudaFuncGetAttributes(&attributes, probeKernel);
  if (imageStatus != cudaSuccess) {
    cudaGetLastError();
    s.reason = "this binary has no kernels for " + s.deviceName + " (compute capability " +
               std::to_string(prop.major) + "." + std::to_string(prop.minor) + "; built for " +
               s.archs + "): " + describe(imageStatus);
    return state;
  }
  std::string cublasError;
  const CublasApi* cublas = loadCublas(&cublasError);
  if (!cublas) {
    s.reason = cublasError;
    return state;
  }
  s.cublasLibrary = cublas->library;
  try {
    state.backend = new CudaBackend(cublas, 0);  // process lifetime, never deleted
  } catch (const std::exception& e) {
    s.reason = std::string("CUDA backend initialisation failed: ") + e.what();
    return state;
  }
  s.available = true;
  return state;
}

const InitState& initState() {
  static const InitState state = initialize();
  return state;
}

}  // namespace
}  // namespace cuda

CudaStatus cudaStatus() { return cuda::initState().status; }

namespace cuda {

int capGridForTesting(int blocks) {
  gridLimit.store(blocks > 0 ? blocks : INT_MAX, std::memory_order_relaxed);
  return blocks > 0 ? blocks : INT_MAX;
}

int capSharedMemoryForTesting(int bytes) {
  CudaBackend* backend = initState().backend;
  return backend ? backend->capSharedMemory(bytes) : 0;
}

bool deviceMemory(int64_t* freeBytes, int64_t* totalBytes) {
  if (!initState().backend) return false;
  size_t available = 0, total = 0;
  if (cudaMemGetInfo(&available, &total) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  *freeBytes = int64_t(available);
  *totalBytes = int64_t(total);
  return true;
}

}  // namespace cuda

Backend* cudaBackend(std::string* reason) {
  const cuda::InitState& state = cuda::initState();
  if (!state.backend && reason) *reason = state.status.reason;
  return state.backend;
}

}  // namespace tera
