// Helpers shared by the CUDA kernel bodies. Every body is a function template
// over a thread context (block and thread indices, barrier), and every kernel
// declares its shared memory with the macros below, so that the same sources
// compile with nvcc for the GPU and with a plain C++ compiler for the host
// emulation (tests/emulation/device_runtime.h provides the device built-ins
// there, and the tera_emulation_* tests run every kernel on emulated thread
// blocks against the CPU backend).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "cuda/fast_div.h"

#ifdef __CUDACC__
#define TERA_DEV __device__ __forceinline__
#define TERA_DEV_NOINLINE __device__ __noinline__
// A static shared array, and the block's dynamic shared memory.
#define TERA_SHARED_ARRAY(type, name, count) __shared__ type name[count]
#define TERA_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#else
#include "tests/emulation/device_runtime.h"
#define TERA_DEV inline
#define TERA_DEV_NOINLINE inline
#define TERA_SHARED_ARRAY(type, name, count) \
  type* const name = ::tera::emu::sharedArray<type>(count)
#define TERA_DYNAMIC_SHARED(type, name) type* const name = ::tera::emu::dynamicShared<type>()
#endif

namespace tera {
namespace cuda {

struct DeviceCtx {
  TERA_DEV int tid() const { return int(threadIdx.x); }
  TERA_DEV int threads() const { return int(blockDim.x); }
  TERA_DEV int64_t block() const { return int64_t(blockIdx.x); }
  TERA_DEV int64_t blocks() const { return int64_t(gridDim.x); }
  TERA_DEV int64_t blockY() const { return int64_t(blockIdx.y); }
  TERA_DEV int64_t blocksY() const { return int64_t(gridDim.y); }
#ifdef __CUDACC__
  TERA_DEV void sync() const { __syncthreads(); }
#else
  // The emulation names each barrier by its call site in the kernel body.
  void sync(const std::source_location& site = std::source_location::current()) const {
    __syncthreads(site);
  }
#endif
};

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
#ifndef __CUDACC__
  emu::checkAligned(p, 16, "a 16-byte load");
#endif
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
#ifndef __CUDACC__
  emu::checkAligned(p, 16, "a 16-byte store");
#endif
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

// n / d for 0 <= n < 2^31 (see fast_div.h).
TERA_DEV uint32_t fastDiv(const FastDiv& f, uint32_t n) {
  return f.d == 1 ? n : mulHi32(n, f.mul) >> f.shr;
}

// Asynchronous global -> shared copies of one float (cp.async on sm_80 and
// newer, a plain copy before that; the host emulation models the groups).
// Groups are committed per thread; asyncWait<N> waits until at most N of this
// thread's groups are still in flight, and a barrier then publishes the data to
// the whole block.
TERA_DEV void asyncCopy4(float* sharedDst, const float* globalSrc) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned address = unsigned(__cvta_generic_to_shared(sharedDst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(address), "l"(globalSrc));
#elif defined(__CUDA_ARCH__)
  *sharedDst = *globalSrc;
#elif !defined(__CUDACC__)
  emu::asyncCopy(sharedDst, globalSrc);
#endif
}

TERA_DEV void asyncCommit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#elif !defined(__CUDACC__)
  emu::asyncCommit();
#endif
}

template <int N>
TERA_DEV void asyncWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#elif !defined(__CUDACC__)
  emu::asyncWait(N);
#endif
}

}  // namespace cuda
}  // namespace tera
