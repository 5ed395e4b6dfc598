// CPU Tucker kernels: the planned multi-mode product that reconstruction, the
// core-space projection and the factored path's Kronecker row products share;
// the scaling-vector gradients by peeling one mode at a time; the single mode
// product. The microkernels are in tucker_tiles.h.
#pragma once

#include <cstdint>

#include "core/shape.h"

namespace tera {
namespace cpu {

// out = alpha G x_1 (A_1 diag(l_1)) ... x_N (A_N diag(l_N)), plus base when
// base is not null (W0 + alpha dW in the same pass that writes the result).
void tuckerReconstruct(const TuckerShape& shape, const float* core, const float* const* factors,
                       const float* const* scales, float alpha, float* out, const float* base);

void tuckerScaleGrad(const TuckerShape& shape, float* gradX, const float* core,
                     const float* const* factors, const float* const* scales,
                     float* const* gradScales, bool overwriteGradX);

// dl_n from a core-space gradient Z (shape ranks[0..order)): the gradients of
// sum_r Z[r] G[r] prod_n l_n[r_n] with respect to each l_n.
void tuckerCoreGrad(int order, const int64_t* ranks, const float* z, const float* core,
                    const float* const* scales, float* const* gradScales);

void modeProduct(const int64_t* shape, int order, int mode, const float* x, const float* matrix,
                 int64_t rows, const float* scale, float* y);

// Each of `rows` rows times K = B_1 (x) ... (x) B_Q with B_n = A_n diag(s_n),
// A_n [modes[n], ranks[n]]: y = alpha x K^T (expand: x [rows, prod ranks], y
// [rows, prod modes]) or, with `contract`, y = alpha x K (the other way round).
void kroneckerRows(int64_t rows, const TuckerShape& shape, const float* const* factors,
                   const float* const* scales, float alpha, bool contract, const float* x,
                   float* y);

// y[t, r] = x[t, r] * lambda[r], lambda = alpha s_1 (x) ... (x) s_Q (as a
// product in double rounded once); y may be x.
void kroneckerScale(int64_t rows, int order, const int64_t* ranks, const float* const* scales,
                    float alpha, const float* x, float* y);

// The gradients, with respect to each s_n, of alpha sum_{t,r} a[t, r] b[t, r] lambda[r]
// (lambda as in kroneckerScale without alpha): kroneckerScale's scale gradient.
void kroneckerScaleGrad(int64_t rows, int order, const int64_t* ranks, const float* a,
                        const float* b, const float* const* scales, float alpha,
                        float* const* gradScales);

}  // namespace cpu
}  // namespace tera
