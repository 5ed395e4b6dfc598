// The CUDA device built-ins and the part of the CUDA runtime API that the
// backend uses, implemented on the host. With this header in place of
// <cuda_runtime.h>, the backend's .cu files compile unchanged with a plain C++20
// compiler: kernels become ordinary functions that emu::launch runs on
// emulated thread blocks, device memory is host memory, and the stream runs
// each call to completion. Only the test executables use it (CMake targets
// tera_emulation_*); see device_runtime.cc for the execution model and the
// faults it reports, and emulated_cublas.cc for the cuBLAS stand-in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <source_location>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// --- Qualifiers -------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __launch_bounds__(...)
#define __grid_constant__
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace tera {
namespace emu {

// The built-in variables of the emulated thread that is running.
struct ThreadIndex {
  dim3 thread, block, blockSize, gridSize;  // threadIdx, blockIdx, blockDim, gridDim
};
const ThreadIndex& current();

// __syncthreads; `site` identifies the barrier (a negative control can drop one).
void syncThreads(const std::source_location& site);

// Shared memory of the running block, poisoned (all bytes 0xff: NaN as float or
// double) before the block starts. Static arrays are matched by declaration order.
void* sharedArray(size_t bytes);
void* dynamicShared();
template <typename T>
T* sharedArray(size_t count) {
  return static_cast<T*>(sharedArray(count * sizeof(T)));
}
template <typename T>
T* dynamicShared() {
  return static_cast<T*>(dynamicShared());
}

// cp.async with its group semantics (per thread): the copy may land at any time
// between issue and the wait that covers its group, so the destination reads as
// NaN from issue until then.
void asyncCopy(float* sharedDst, const float* globalSrc);
void asyncCommit();
void asyncWait(int pendingGroups);

// A vector access needs its natural alignment on the GPU (misaligned address).
void checkAligned(const void* address, size_t alignment, const char* what);

// Reports a fault of the emulated device (message, kernel, block, thread) and
// ends the process with exit status kFaultExitStatus.
[[noreturn]] void fault(const std::string& message);
constexpr int kFaultExitStatus = 86;

// Runs `thread` once per thread of every block of the grid (see device_runtime.cc).
// Returns cudaSuccess or the launch error, as cudaGetLastError will report it.
int runGrid(const char* name, const void* kernel, dim3 grid, dim3 block, size_t dynamicSharedBytes,
            const std::function<void()>& thread);

// kernel<<<grid, block, dynamicSharedBytes>>>(args...): the arguments are converted
// to the kernel's parameter types once, as the launch does.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block,
            size_t dynamicSharedBytes, Args&&... args) {
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  runGrid(name, reinterpret_cast<const void*>(kernel), grid, block, dynamicSharedBytes,
          [&] { std::apply(kernel, params); });
}

// True when [pointer, pointer + bytes) lies inside one cudaMalloc allocation.
bool isDeviceRange(const void* pointer, size_t bytes);

// --- Reports for the test harness ---------------------------------------------------
struct BarrierSite {
  std::string where;  // file:line
  int64_t calls = 0;  // __syncthreads executed there by all threads
};
// Every __syncthreads site reached so far, in order of first use.
std::vector<BarrierSite> barrierSites();

}  // namespace emu
}  // namespace tera

#define threadIdx (::tera::emu::current().thread)
#define blockIdx (::tera::emu::current().block)
#define blockDim (::tera::emu::current().blockSize)
#define gridDim (::tera::emu::current().gridSize)

inline void __syncthreads(const std::source_location& site = std::source_location::current()) {
  ::tera::emu::syncThreads(site);
}

// atomicMin on 64-bit unsigned integers: returns the old value.
unsigned long long atomicMin(unsigned long long* address, unsigned long long value);

// --- Runtime API (the subset the backend calls) -----------------------------------------
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
};

enum cudaMemcpyKind {
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
};

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

constexpr unsigned cudaStreamNonBlocking = 1;
struct CUstream_st;
using cudaStream_t = CUstream_st*;

struct cudaDeviceProp {
  char name[256];
  int major, minor;
  int multiProcessorCount;
  size_t sharedMemPerBlockOptin;
  size_t sharedMemPerMultiprocessor;
  int maxThreadsPerMultiProcessor;
  size_t totalGlobalMem;
};

struct cudaFuncAttributes {
  int maxDynamicSharedSizeBytes;
};

const char* cudaGetErrorName(cudaError_t error);
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetLastError();
cudaError_t cudaRuntimeGetVersion(int* version);
cudaError_t cudaDriverGetVersion(int* version);
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaMalloc(void** pointer, size_t bytes);
cudaError_t cudaFree(void* pointer);
cudaError_t cudaMemGetInfo(size_t* freeBytes, size_t* totalBytes);
cudaError_t cudaMemsetAsync(void* pointer, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void* kernel);
cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attribute, int value);
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* kernel,
                                                          int threads, size_t dynamicSharedBytes);

template <typename... Params>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, void (*kernel)(Params...)) {
  return cudaFuncGetAttributes(attributes, reinterpret_cast<const void*>(kernel));
}
template <typename... Params>
cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attribute,
                                 int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attribute, value);
}
