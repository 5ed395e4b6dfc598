#include "cpu/tucker_cpu.h"

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "core/errors.h"
#include "cpu/thread_pool.h"

namespace tera {
namespace cpu {
namespace {

// Floats in one cache-resident working buffer; each thread ping-pongs between
// two, which together stay inside a 256-512 KiB L2.
constexpr int64_t kSlabBudget = 32 * 1024;
// Phase B copies column blocks in and out of a row-major matrix: narrower blocks
// than this waste most of each cache line and TLB entry they touch (measured).
constexpr int64_t kMinBlockWidth = 64;

int64_t product(const int64_t* dims, int begin, int end) {
  int64_t p = 1;
  for (int i = begin; i < end; ++i) p *= dims[i];
  return p;
}

bool cpuHasAvx2Fma() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}

// --- Scalar twin: the portable path and the tails of the vector path ----------

void tileRowsScalar(const float* in, int64_t inStride, float* out, int64_t outStride, int64_t K,
                    int64_t J, const float* u, int64_t qBegin, int64_t width) {
  for (int64_t j = 0; j < J; ++j) {
    float* row = out + j * outStride;
    for (int64_t q = qBegin; q < width; ++q) row[q] = 0.0f;
    for (int64_t k = 0; k < K; ++k) {
      const float w = u[j * K + k];
      const float* src = in + k * inStride;
      for (int64_t q = qBegin; q < width; ++q) row[q] += w * src[q];
    }
  }
}

// --- AVX2 + FMA ---------------------------------------------------------------

// JB output rows x 16 (or 8) columns held in registers across the whole K loop.
template <int JB>
__attribute__((target("avx2,fma"))) int64_t tileRowsAvx2(const float* in, int64_t inStride,
                                                         float* out, int64_t outStride, int64_t K,
                                                         const float* u, int64_t width) {
  int64_t q = 0;
  for (; q + 16 <= width; q += 16) {
    __m256 lo[JB], hi[JB];
    for (int j = 0; j < JB; ++j) lo[j] = hi[j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
      const __m256 x0 = _mm256_loadu_ps(in + k * inStride + q);
      const __m256 x1 = _mm256_loadu_ps(in + k * inStride + q + 8);
      for (int j = 0; j < JB; ++j) {
        const __m256 w = _mm256_broadcast_ss(u + j * K + k);
        lo[j] = _mm256_fmadd_ps(w, x0, lo[j]);
        hi[j] = _mm256_fmadd_ps(w, x1, hi[j]);
      }
    }
    for (int j = 0; j < JB; ++j) {
      _mm256_storeu_ps(out + j * outStride + q, lo[j]);
      _mm256_storeu_ps(out + j * outStride + q + 8, hi[j]);
    }
  }
  for (; q + 8 <= width; q += 8) {
    __m256 acc[JB];
    for (int j = 0; j < JB; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
      const __m256 x = _mm256_loadu_ps(in + k * inStride + q);
      for (int j = 0; j < JB; ++j) {
        acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(u + j * K + k), x, acc[j]);
      }
    }
    for (int j = 0; j < JB; ++j) _mm256_storeu_ps(out + j * outStride + q, acc[j]);
  }
  return q;
}

// The contiguous last-mode case (width 1): out[p, :] = U in[p, :], vectorised over
// j with U transposed and zero-padded (ut is [K, jPadded], jPadded a multiple of
// 8 * JV). PB rows x JV vectors of accumulators stay in registers.
template <int PB, int JV>
__attribute__((target("avx2,fma"))) void lastModeRowsAvx2(const float* in, float* out, int64_t K,
                                                          int64_t J, const float* ut,
                                                          int64_t jPadded) {
  for (int64_t j0 = 0; j0 < jPadded; j0 += 8 * JV) {
    __m256 acc[PB][JV];
    for (int p = 0; p < PB; ++p) {
      for (int v = 0; v < JV; ++v) acc[p][v] = _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < K; ++k) {
      __m256 w[JV];
      for (int v = 0; v < JV; ++v) w[v] = _mm256_loadu_ps(ut + k * jPadded + j0 + 8 * v);
      for (int p = 0; p < PB; ++p) {
        const __m256 x = _mm256_broadcast_ss(in + p * K + k);
        for (int v = 0; v < JV; ++v) acc[p][v] = _mm256_fmadd_ps(x, w[v], acc[p][v]);
      }
    }
    for (int p = 0; p < PB; ++p) {
      for (int v = 0; v < JV; ++v) {
        const int64_t j = j0 + 8 * v;
        const int64_t valid = std::min<int64_t>(8, J - j);
        if (valid == 8) {
          _mm256_storeu_ps(out + p * J + j, acc[p][v]);
        } else if (valid > 0) {
          alignas(32) float lanes[8];
          _mm256_store_ps(lanes, acc[p][v]);
          std::copy(lanes, lanes + valid, out + p * J + j);
        }
      }
    }
  }
}

template <int JV>
void lastModeAvx2(const float* in, float* out, int64_t P, int64_t K, int64_t J, const float* u) {
  thread_local std::vector<float> ut;
  const int64_t jPadded = (J + 8 * JV - 1) / (8 * JV) * (8 * JV);
  ut.assign(static_cast<size_t>(K * jPadded), 0.0f);
  for (int64_t j = 0; j < J; ++j) {
    for (int64_t k = 0; k < K; ++k) ut[size_t(k * jPadded + j)] = u[j * K + k];
  }
  constexpr int kRows = 4;  // 4 x JV accumulators, JV loads, 1 broadcast
  int64_t p = 0;
  for (; p + kRows <= P; p += kRows) {
    lastModeRowsAvx2<kRows, JV>(in + p * K, out + p * J, K, J, ut.data(), jPadded);
  }
  for (; p < P; ++p) lastModeRowsAvx2<1, JV>(in + p * K, out + p * J, K, J, ut.data(), jPadded);
}

void tileAvx2(const float* in, int64_t inStride, float* out, int64_t outStride, int64_t K,
              int64_t J, const float* u, int64_t width) {
  constexpr int kRows = 6;  // 12 accumulators + 2 inputs + 1 broadcast = 15 of 16 registers
  int64_t j = 0;
  int64_t done = 0;
  for (; j + kRows <= J; j += kRows) {
    done = tileRowsAvx2<kRows>(in, inStride, out + j * outStride, outStride, K, u + j * K, width);
  }
  const float* uTail = u + j * K;
  float* outTail = out + j * outStride;
  switch (J - j) {
    case 5:
      done = tileRowsAvx2<5>(in, inStride, outTail, outStride, K, uTail, width);
      break;
    case 4:
      done = tileRowsAvx2<4>(in, inStride, outTail, outStride, K, uTail, width);
      break;
    case 3:
      done = tileRowsAvx2<3>(in, inStride, outTail, outStride, K, uTail, width);
      break;
    case 2:
      done = tileRowsAvx2<2>(in, inStride, outTail, outStride, K, uTail, width);
      break;
    case 1:
      done = tileRowsAvx2<1>(in, inStride, outTail, outStride, K, uTail, width);
      break;
    default:
      break;
  }
  if (done < width) tileRowsScalar(in, inStride, out, outStride, K, J, u, done, width);
}

// Applies modes hi-1 down to lo of a compact tensor with dims cur[lo..hi)
// followed by `batch` columns; the last step writes to `dst`.
void applyModesCompact(int lo, int hi, int64_t* cur, const int64_t* outDims, int64_t batch,
                       const float* const* mats, const float* src, float* dst, float* bufA,
                       float* bufB) {
  const float* from = src;
  for (int n = hi - 1; n >= lo; --n) {
    const int64_t P = product(cur, lo, n);
    const int64_t Q = product(cur, n + 1, hi) * batch;
    float* to = n == lo ? dst : (from == bufA ? bufB : bufA);
    modeProductTile(from, Q, to, Q, P, cur[n], outDims[n], Q, mats[n]);
    cur[n] = outDims[n];
    from = to;
  }
}

// A buffer reused across calls (kernels run one at a time per backend), so large
// projections do not pay for fresh pages on every call. It only grows.
float* workspace(int64_t count) {
  static std::vector<float> buffer;
  if (buffer.size() < size_t(count)) {
    buffer = std::vector<float>();
    buffer.resize(size_t(count));
  }
  return buffer.data();
}

// weights (x) scale, where a null scale means ones.
std::vector<double> outerWithScale(const std::vector<double>& weights, const float* scale,
                                   int64_t rank) {
  std::vector<double> grown(weights.size() * size_t(rank));
  for (size_t a = 0; a < weights.size(); ++a) {
    for (int64_t r = 0; r < rank; ++r) {
      grown[a * size_t(rank) + size_t(r)] = weights[a] * (scale ? double(scale[r]) : 1.0);
    }
  }
  return grown;
}

// For T of shape [lead, rank]: grad[r] = sum_a weights[a] T[a, r] and
// contracted[a] = sum_r T[a, r] scale[r], accumulated in double.
template <typename T>
void peelLastMode(const T* t, int64_t lead, int64_t rank, const float* scale, const double* weights,
                  double* contracted, float* grad) {
  std::vector<double> s(static_cast<size_t>(rank));
  for (int64_t r = 0; r < rank; ++r) s[size_t(r)] = scale ? double(scale[r]) : 1.0;
  const int threads = numThreads();
  std::vector<double> partial(static_cast<size_t>(threads * rank), 0.0);
  parallelFor(lead, [&](int64_t begin, int64_t end, int worker) {
    double* acc = partial.data() + worker * rank;
    for (int64_t a = begin; a < end; ++a) {
      const T* row = t + a * rank;
      const double w = weights[a];
      double dot = 0;
      for (int64_t r = 0; r < rank; ++r) {
        const double v = double(row[r]);
        dot += v * s[size_t(r)];
        acc[r] += w * v;
      }
      contracted[a] = dot;
    }
  });
  for (int64_t r = 0; r < rank; ++r) {
    double total = 0;
    for (int t = 0; t < threads; ++t) total += partial[size_t(t * rank + r)];
    grad[r] = float(total);
  }
}

}  // namespace

void modeProductTile(const float* in, int64_t inStride, float* out, int64_t outStride, int64_t P,
                     int64_t K, int64_t J, int64_t width, const float* u) {
  if (!cpuHasAvx2Fma()) {
    for (int64_t p = 0; p < P; ++p) {
      tileRowsScalar(in + p * K * inStride, inStride, out + p * J * outStride, outStride, K, J, u,
                     0, width);
    }
    return;
  }
  if (width == 1 && inStride == 1 && outStride == 1) {
    if (J > 8) {
      lastModeAvx2<2>(in, out, P, K, J, u);
    } else {
      lastModeAvx2<1>(in, out, P, K, J, u);
    }
    return;
  }
  for (int64_t p = 0; p < P; ++p) {
    tileAvx2(in + p * K * inStride, inStride, out + p * J * outStride, outStride, K, J, u, width);
  }
}

void multiModeProduct(int order, const int64_t* inDims, const int64_t* outDims, const float* in,
                      const float* const* mats, float* out) {
  int64_t widest[kMaxOrder] = {};
  for (int n = 0; n < order; ++n) widest[n] = std::max(inDims[n], outDims[n]);

  // Trailing modes [split, order) form slabs that fit the cache budget.
  int split = order - 1;
  int64_t slabWidest = widest[order - 1];
  while (split > 0 && slabWidest * widest[split - 1] <= kSlabBudget) slabWidest *= widest[--split];

  const int64_t leadIn = product(inDims, 0, split), leadOut = product(outDims, 0, split);
  const int64_t slabIn = product(inDims, split, order), slabOut = product(outDims, split, order);

  // Phase A's result [leadIn, slabOut] is staged in `out` when it fits there.
  std::vector<float> stagingBuffer;
  float* staged = out;
  if (split > 0 && leadIn > leadOut) {
    stagingBuffer.resize(static_cast<size_t>(leadIn * slabOut));
    staged = stagingBuffer.data();
  }

  // In place, a slab of one mode would be read and written by the same step:
  // copy it aside first (slabs of several modes go through scratch anyway).
  const bool copySlab = in == out && split == order - 1;
  parallelFor(leadIn, [&](int64_t begin, int64_t end, int) {
    std::vector<float> scratch(static_cast<size_t>(3 * slabWidest));
    float* bufA = scratch.data();
    float* bufB = bufA + slabWidest;
    float* copied = bufB + slabWidest;
    for (int64_t slab = begin; slab < end; ++slab) {
      int64_t cur[kMaxOrder];
      std::copy(inDims, inDims + order, cur);
      const float* src = in + slab * slabIn;
      if (copySlab) src = std::copy(src, src + slabIn, copied) - slabIn;
      applyModesCompact(split, order, cur, outDims, 1, mats, src, staged + slab * slabOut, bufA,
                        bufB);
    }
  });
  if (split == 0) return;

  // Phase B: leading modes on column blocks of the staged [leadIn, slabOut] matrix.
  const int64_t leadWidest = product(widest, 0, split);
  int64_t blockWidth = std::max(kMinBlockWidth, kSlabBudget / leadWidest / 8 * 8);
  blockWidth = std::min(blockWidth, slabOut);
  const int64_t blocks = (slabOut + blockWidth - 1) / blockWidth;
  parallelFor(blocks, [&](int64_t begin, int64_t end, int) {
    std::vector<float> scratch(static_cast<size_t>(3 * leadWidest * blockWidth));
    float* gathered = scratch.data();
    float* bufA = gathered + leadWidest * blockWidth;
    float* bufB = bufA + leadWidest * blockWidth;
    for (int64_t block = begin; block < end; ++block) {
      const int64_t q0 = block * blockWidth;
      const int64_t width = std::min(blockWidth, slabOut - q0);
      for (int64_t r = 0; r < leadIn; ++r) {
        std::copy(staged + r * slabOut + q0, staged + r * slabOut + q0 + width,
                  gathered + r * width);
      }
      int64_t cur[kMaxOrder];
      std::copy(inDims, inDims + split, cur);
      // The last step lands in whichever buffer does not hold its input.
      float* result = split % 2 == 1 ? bufA : bufB;
      applyModesCompact(0, split, cur, outDims, width, mats, gathered, result, bufA, bufB);
      for (int64_t r = 0; r < leadOut; ++r) {
        std::copy(result + r * width, result + (r + 1) * width, out + r * slabOut + q0);
      }
    }
  });
}

void tuckerReconstruct(const TuckerShape& shape, const float* core, const float* const* factors,
                       const float* const* scales, float alpha, float* out) {
  std::vector<std::vector<float>> scaled(static_cast<size_t>(shape.order));
  const float* mats[kMaxOrder];
  for (int n = 0; n < shape.order; ++n) {
    const int64_t I = shape.modes[n], R = shape.ranks[n];
    std::vector<float>& u = scaled[size_t(n)];
    u.resize(static_cast<size_t>(I * R));
    const float modeAlpha = n == 0 ? alpha : 1.0f;
    for (int64_t i = 0; i < I; ++i) {
      for (int64_t r = 0; r < R; ++r) {
        const float s = scales[n] ? scales[n][r] : 1.0f;
        u[size_t(i * R + r)] = factors[n][i * R + r] * s * modeAlpha;
      }
    }
    mats[n] = u.data();
  }
  multiModeProduct(shape.order, shape.ranks, shape.modes, core, mats, out);
}

void tuckerScaleGrad(const TuckerShape& shape, float* gradX, const float* core,
                     const float* const* factors, const float* const* scales,
                     float* const* gradScales, bool overwriteGradX) {
  const int N = shape.order;
  const int64_t* R = shape.ranks;
  // Z = gradX x_1 A_1^T ... x_N A_N^T, then H = Z * G in place.
  std::vector<std::vector<float>> transposed(static_cast<size_t>(N));
  const float* mats[kMaxOrder];
  for (int n = 0; n < N; ++n) {
    const int64_t I = shape.modes[n];
    std::vector<float>& t = transposed[size_t(n)];
    t.resize(static_cast<size_t>(I * R[n]));
    for (int64_t i = 0; i < I; ++i) {
      for (int64_t r = 0; r < R[n]; ++r) t[size_t(r * I + i)] = factors[n][i * R[n] + r];
    }
    mats[n] = t.data();
  }
  const int64_t coreSize = shape.coreSize();
  const bool inPlace = overwriteGradX && std::equal(shape.modes, shape.modes + N, R);
  float* h = inPlace ? gradX : workspace(coreSize);
  multiModeProduct(N, shape.modes, shape.ranks, gradX, mats, h);
  parallelFor(coreSize, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) h[i] *= core[i];
  });

  // Peel the last remaining mode n off T (T starts as H): in one pass,
  // dl_n[r] = sum_a W_n[a] T[a, r] with W_n = l_0 (x) ... (x) l_{n-1}, and the
  // next T[a] = sum_r T[a, r] l_n[r]. Each pass is R_n times smaller than the last.
  std::vector<double> current, next;
  for (int n = N - 1; n >= 0; --n) {
    const int64_t lead = product(R, 0, n);
    std::vector<double> weights(1, 1.0);
    for (int m = 0; m < n; ++m) weights = outerWithScale(weights, scales[m], R[m]);
    next.assign(static_cast<size_t>(lead), 0.0);
    if (n == N - 1) {
      peelLastMode(h, lead, R[n], scales[n], weights.data(), next.data(), gradScales[n]);
    } else {
      peelLastMode(current.data(), lead, R[n], scales[n], weights.data(), next.data(),
                   gradScales[n]);
    }
    current.swap(next);
  }
}

void modeProduct(const int64_t* shape, int order, int mode, const float* x, const float* matrix,
                 int64_t rows, const float* scale, float* y) {
  const int64_t P = product(shape, 0, mode), K = shape[mode], Q = product(shape, mode + 1, order);
  std::vector<float> u(static_cast<size_t>(rows * K));
  for (int64_t j = 0; j < rows; ++j) {
    for (int64_t k = 0; k < K; ++k)
      u[size_t(j * K + k)] = matrix[j * K + k] * (scale ? scale[k] : 1.0f);
  }
  // Work items are (p, column chunk); chunks split Q when P alone cannot feed the threads.
  const int64_t wantItems = 4 * int64_t(numThreads());
  int64_t chunk = Q;
  if (P < wantItems && Q > 16) chunk = std::max<int64_t>(16, (Q * P / wantItems + 15) / 16 * 16);
  const int64_t chunks = (Q + chunk - 1) / chunk;
  parallelFor(P * chunks, [&](int64_t begin, int64_t end, int) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t p = item / chunks, q0 = (item % chunks) * chunk;
      const int64_t width = std::min(chunk, Q - q0);
      modeProductTile(x + p * K * Q + q0, Q, y + p * rows * Q + q0, Q, 1, K, rows, width, u.data());
    }
  });
}

}  // namespace cpu
}  // namespace tera
