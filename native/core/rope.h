// The rotary-embedding frequencies and angles, shared by the CPU kernel and
// its CUDA twin so that both build the same float32 cos / sin tables as
// Hugging Face: inv_freq_i = 1 / theta^(float32(2i) / rotaryDim) and
// angle = position * inv_freq_i, each rounded to float32. powf, cosf and sinf
// are taken as double functions rounded once to float, which libm and CUDA
// agree on (their float versions differ by an ulp here and there).
#pragma once

#include <cmath>
#include <cstdint>

#ifndef TERA_HOST_DEVICE
#ifdef __CUDACC__
#define TERA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TERA_HOST_DEVICE static inline __attribute__((always_inline))
#endif
#endif

namespace tera {
namespace rope {

TERA_HOST_DEVICE float inverseFrequency(double theta, int64_t rotaryDim, int64_t i) {
  const float exponent = float(2 * i) / float(rotaryDim);
  return 1.0f / float(pow(double(float(theta)), double(exponent)));
}

// cos and sin of the float32 angle position * inverseFrequency.
TERA_HOST_DEVICE void cosSin(float position, float inverseFrequency, float* c, float* s) {
  const double angle = double(position * inverseFrequency);
  *c = float(cos(angle));
  *s = float(sin(angle));
}

}  // namespace rope
}  // namespace tera
