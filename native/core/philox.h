// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3")
// and the element-to-value maps used by the uniform and normal fills.
//
// Element k of a fill uses the counter (k_lo, k_hi, stream_lo, stream_hi) under the
// key (seed_lo, seed_hi), so every element is computed independently and the
// result cannot depend on thread count or device. The normal map uses only IEEE
// basic operations and explicit fma in double precision (our own log and cos),
// because libm and CUDA's transcendental functions round differently; this keeps
// CPU and GPU fills bit-identical. Both build trees compile this header with FMA
// contraction disabled for the same reason.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define TERA_HOST_DEVICE __host__ __device__ __forceinline__
#else
// Always inlined so a caller compiled for FMA hardware gets fma() as one instruction.
#define TERA_HOST_DEVICE static inline __attribute__((always_inline))
#endif

namespace tera {
namespace philox {

struct Block {
  uint32_t v[4];
};

TERA_HOST_DEVICE void mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  uint64_t product = uint64_t(a) * uint64_t(b);
  *hi = uint32_t(product >> 32);
  *lo = uint32_t(product);
}

TERA_HOST_DEVICE Block philox4x32_10(Block counter, uint32_t key0, uint32_t key1) {
  const uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  const uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  uint32_t* c = counter.v;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c[0], &hi0, &lo0);
    mulhilo(kMul1, c[2], &hi1, &lo1);
    uint32_t next[4] = {hi1 ^ c[1] ^ key0, lo1, hi0 ^ c[3] ^ key1, lo0};
    for (int i = 0; i < 4; ++i) c[i] = next[i];
    key0 += kWeyl0;
    key1 += kWeyl1;
  }
  return counter;
}

TERA_HOST_DEVICE Block elementBlock(uint64_t element, uint64_t seed, uint64_t stream) {
  Block counter = {
      {uint32_t(element), uint32_t(element >> 32), uint32_t(stream), uint32_t(stream >> 32)}};
  return philox4x32_10(counter, uint32_t(seed), uint32_t(seed >> 32));
}

// Uniform in [0, 1): the top 24 bits, exact in float.
TERA_HOST_DEVICE float unitFloat(uint32_t bits) { return float(bits >> 8) * (1.0f / 16777216.0f); }

// ln(u) for u in (0, 1], accurate to ~1e-16 relative, from IEEE operations only.
TERA_HOST_DEVICE double portableLog(double u) {
  int exponent = 0;
  double m = frexp(u, &exponent);  // u = m * 2^exponent, m in [0.5, 1)
  if (m < 0.70710678118654752) {
    m *= 2.0;
    exponent -= 1;
  }
  double s = (m - 1.0) / (m + 1.0);  // |s| <= 0.1716
  double s2 = s * s;
  // 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...), truncated where terms fall below 1e-19.
  // Constant reciprocals: both compilers fold them to the same IEEE doubles.
  const double kOddInverse[] = {1.0 / 1,  1.0 / 3,  1.0 / 5,  1.0 / 7,  1.0 / 9,
                                1.0 / 11, 1.0 / 13, 1.0 / 15, 1.0 / 17, 1.0 / 19,
                                1.0 / 21, 1.0 / 23, 1.0 / 25};
  double series = kOddInverse[12];
  for (int i = 11; i >= 0; --i) series = fma(series, s2, kOddInverse[i]);
  double logM = 2.0 * s * series;
  const double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
  return fma(double(exponent), kLn2Hi, fma(double(exponent), kLn2Lo, logM));
}

// cos(2 pi t) for t = j / 2^24 in [0, 1), from IEEE operations only.
TERA_HOST_DEVICE double portableCos2Pi(double t) {
  double quarter = floor(4.0 * t + 0.5);  // nearest multiple of 1/4
  double reduced = t - 0.25 * quarter;    // exact, in [-1/8, 1/8]
  double x = 6.28318530717958647692 * reduced;
  double x2 = x * x;
  // Nested Taylor series on |x| <= pi/4: cos to x^22, sin to x^23 (error < 1e-19).
  // kCos[i] = 1 / (k (k - 1)) and kSin[i] = 1 / (k (k + 1)) for k = 2 i + 2.
  const double kCos[] = {1.0 / 2,   1.0 / 12,  1.0 / 30,  1.0 / 56,  1.0 / 90, 1.0 / 132,
                         1.0 / 182, 1.0 / 240, 1.0 / 306, 1.0 / 380, 1.0 / 462};
  const double kSin[] = {1.0 / 6,   1.0 / 20,  1.0 / 42,  1.0 / 72,  1.0 / 110, 1.0 / 156,
                         1.0 / 210, 1.0 / 272, 1.0 / 342, 1.0 / 420, 1.0 / 506};
  double cosX = 1.0, sinX = 1.0;
  for (int i = 10; i >= 0; --i) {
    cosX = fma(-x2 * kCos[i], cosX, 1.0);
    sinX = fma(-x2 * kSin[i], sinX, 1.0);
  }
  sinX *= x;
  switch (int(quarter) & 3) {
    case 0:
      return cosX;
    case 1:
      return -sinX;
    case 2:
      return -cosX;
    default:
      return sinX;
  }
}

// Box-Muller from the first two words of the element's block.
TERA_HOST_DEVICE float normalFromBlock(const Block& block, float mean, float stddev) {
  double u1 = (double(block.v[0] >> 8) + 1.0) * (1.0 / 16777216.0);  // (0, 1]
  double u2 = double(block.v[1] >> 8) * (1.0 / 16777216.0);          // [0, 1)
  double z = sqrt(-2.0 * portableLog(u1)) * portableCos2Pi(u2);
  return float(fma(double(stddev), z, double(mean)));
}

TERA_HOST_DEVICE float uniformFromBlock(const Block& block, float low, float high) {
  return float(fma(double(high) - double(low), double(unitFloat(block.v[0])), double(low)));
}

}  // namespace philox
}  // namespace tera
