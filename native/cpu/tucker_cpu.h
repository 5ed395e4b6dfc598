// CPU Tucker kernels: the mode-product tile (AVX2+FMA with a scalar twin chosen
// at run time), the cache-blocked multi-mode product that reconstruction and
// core-space projection share, and the scaling-vector gradient.
#pragma once

#include <cstdint>

#include "core/shape.h"

namespace tera {
namespace cpu {

// out[p, j, q] = sum_k u[j, k] * in[p, k, q] for q < width, where row (p, k) of
// `in` starts at in + (p * K + k) * inStride and row (p, j) of `out` at
// out + (p * J + j) * outStride. u is [J, K] row-major.
void modeProductTile(const float* in, int64_t inStride, float* out, int64_t outStride, int64_t P,
                     int64_t K, int64_t J, int64_t width, const float* u);

// Y = X x_1 M_1 x_2 ... x_N M_N with M_n of shape [outDims[n], inDims[n]].
// Trailing modes are applied to cache-sized slabs, then leading modes to
// cache-sized column blocks, so memory is crossed about twice instead of N times.
// `in` may equal `out` when inDims == outDims.
void multiModeProduct(int order, const int64_t* inDims, const int64_t* outDims, const float* in,
                      const float* const* mats, float* out);

void tuckerReconstruct(const TuckerShape& shape, const float* core, const float* const* factors,
                       const float* const* scales, float alpha, float* out);

void tuckerScaleGrad(const TuckerShape& shape, float* gradX, const float* core,
                     const float* const* factors, const float* const* scales,
                     float* const* gradScales, bool overwriteGradX);

void modeProduct(const int64_t* shape, int order, int mode, const float* x, const float* matrix,
                 int64_t rows, const float* scale, float* y);

}  // namespace cpu
}  // namespace tera
