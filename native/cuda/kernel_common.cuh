// Helpers shared by the CUDA kernel bodies. Every body is a function template
// over a thread context (block and thread indices, barrier), so nvcc compiles it
// for the GPU with DeviceCtx while a host build can run the very same code with
// an emulated block (one std::thread per CUDA thread and a std::barrier): that
// is how the index arithmetic was checked on machines without a GPU.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define TERA_DEV __device__ __forceinline__
#define TERA_DEV_NOINLINE __device__ __noinline__
#else
#define TERA_DEV inline
#define TERA_DEV_NOINLINE inline
#endif

namespace tera {
namespace cuda {

#ifdef __CUDACC__
struct DeviceCtx {
  TERA_DEV int tid() const { return int(threadIdx.x); }
  TERA_DEV int threads() const { return int(blockDim.x); }
  TERA_DEV int64_t block() const { return int64_t(blockIdx.x); }
  TERA_DEV int64_t blocks() const { return int64_t(gridDim.x); }
  TERA_DEV int64_t blockY() const { return int64_t(blockIdx.y); }
  TERA_DEV int64_t blocksY() const { return int64_t(gridDim.y); }
  TERA_DEV void sync() const { __syncthreads(); }
};
#endif

// Explicit single-rounding FMA (the CUDA sources are built with --fmad=false).
TERA_DEV float fma32(float a, float b, float c) {
#ifdef __CUDA_ARCH__
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

struct Float4 {
  float x, y, z, w;
};

// 16-byte load; p must be 16-byte aligned.
TERA_DEV Float4 load4(const float* p) {
#ifdef __CUDA_ARCH__
  const float4 v = *reinterpret_cast<const float4*>(p);
  return {v.x, v.y, v.z, v.w};
#else
  Float4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
#endif
}

// 16-byte store; p must be 16-byte aligned.
TERA_DEV void store4(float* p, const Float4& v) {
#ifdef __CUDA_ARCH__
  *reinterpret_cast<float4*>(p) = make_float4(v.x, v.y, v.z, v.w);
#else
  std::memcpy(p, &v, sizeof v);
#endif
}

TERA_DEV uint32_t mulHi32(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __umulhi(a, b);
#else
  return uint32_t((uint64_t(a) * uint64_t(b)) >> 32);
#endif
}

// n / d for 0 <= n < 2^31 by multiply and shift (Granlund-Montgomery, as in
// CUTLASS's FastDivmod); built on the host, used in shared-memory index maps.
struct FastDiv {
  uint32_t d = 1, mul = 0, shr = 0;
};

inline FastDiv makeFastDiv(uint32_t d) {
  FastDiv f;
  f.d = d;
  if (d > 1) {
    uint32_t log2Ceil = 0;
    while ((uint64_t(1) << log2Ceil) < d) ++log2Ceil;
    const uint32_t p = 31 + log2Ceil;
    f.mul = uint32_t(((uint64_t(1) << p) + d - 1) / d);
    f.shr = p - 32;
  }
  return f;
}

TERA_DEV uint32_t fastDiv(const FastDiv& f, uint32_t n) {
  return f.d == 1 ? n : mulHi32(n, f.mul) >> f.shr;
}

// Asynchronous global -> shared copies of one float (cp.async on sm_80 and
// newer, a plain copy before that and in host emulation). Groups are committed
// per thread; asyncWait<N> waits until at most N of this thread's groups are
// still in flight, and a barrier then publishes the data to the whole block.
TERA_DEV void asyncCopy4(float* sharedDst, const float* globalSrc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned address = unsigned(__cvta_generic_to_shared(sharedDst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(address), "l"(globalSrc));
#else
  *sharedDst = *globalSrc;
#endif
}

TERA_DEV void asyncCommit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

template <int N>
TERA_DEV void asyncWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

}  // namespace cuda
}  // namespace tera
