#include "cpu/tucker_tiles.h"

#include <immintrin.h>

#include <algorithm>

namespace tera {
namespace cpu {
namespace {

// Floats of input rows one q-chunk of a tile may span: the K rows of a chunk stay
// in half of a 32 KiB L1 while every block of output rows reads them.
constexpr int64_t kChunkFloats = 4096;
// How many row groups ahead scattered base rows are fetched.
constexpr int64_t kPrefetchGroups = 4;

// --- Scalar twin: the portable path ---------------------------------------------

void tileScalar(const float* in, int64_t inStride, float* out, int64_t outStride, int64_t K,
                int64_t J, const float* u, int64_t width, const float* base) {
  for (int64_t j = 0; j < J; ++j) {
    float* row = out + j * outStride;
    for (int64_t q = 0; q < width; ++q) {
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += u[j * K + k] * in[k * inStride + q];
      row[q] = base ? base[j * outStride + q] + acc : acc;
    }
  }
}

// --- AVX2 + FMA -------------------------------------------------------------------

alignas(32) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

// Lanes [0, count) of a vector, 0 < count < 8.
__attribute__((target("avx2"))) __m256i firstLanes(int64_t count) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - count));
}

// Stores one full vector of results: base + value when Add (the rounding of
// base + value computed apart), streamed past the cache when Stream (dst is
// then 32-byte aligned).
template <bool Add, bool Stream>
__attribute__((target("avx2,fma"))) inline void storeResult(float* dst, const float* base,
                                                            __m256 value) {
  if (Add) value = _mm256_add_ps(_mm256_loadu_ps(base), value);
  if (Stream) {
    _mm256_stream_ps(dst, value);
  } else {
    _mm256_storeu_ps(dst, value);
  }
}

template <bool Add>
__attribute__((target("avx2,fma"))) inline void storeMasked(float* dst, const float* base,
                                                            __m256i mask, __m256 value) {
  if (Add) value = _mm256_add_ps(_mm256_maskload_ps(base, mask), value);
  _mm256_maskstore_ps(dst, mask, value);
}

// JB output rows x 16 (then 8, then a masked remainder of) columns held in
// registers across the whole K loop. base (when Add) has out's layout.
template <int JB, bool Add, bool Stream>
__attribute__((target("avx2,fma"))) void tileRowsAvx2(const float* in, int64_t inStride, float* out,
                                                      int64_t outStride, int64_t K, const float* u,
                                                      int64_t width, const float* base) {
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
      const int64_t at = j * outStride + q;
      storeResult<Add, Stream>(out + at, base + at, lo[j]);
      storeResult<Add, Stream>(out + at + 8, base + at + 8, hi[j]);
    }
  }
  if (q + 8 <= width) {
    __m256 acc[JB];
    for (int j = 0; j < JB; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
      const __m256 x = _mm256_loadu_ps(in + k * inStride + q);
      for (int j = 0; j < JB; ++j) {
        acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(u + j * K + k), x, acc[j]);
      }
    }
    for (int j = 0; j < JB; ++j) {
      const int64_t at = j * outStride + q;
      storeResult<Add, Stream>(out + at, base + at, acc[j]);
    }
    q += 8;
  }
  if (q < width) {
    const __m256i mask = firstLanes(width - q);
    __m256 acc[JB];
    for (int j = 0; j < JB; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; ++k) {
      const __m256 x = _mm256_maskload_ps(in + k * inStride + q, mask);
      for (int j = 0; j < JB; ++j) {
        acc[j] = _mm256_fmadd_ps(_mm256_broadcast_ss(u + j * K + k), x, acc[j]);
      }
    }
    for (int j = 0; j < JB; ++j) {
      const int64_t at = j * outStride + q;
      storeMasked<Add>(out + at, base + at, mask, acc[j]);
    }
  }
}

template <bool Add, bool Stream>
void tileAvx2(const float* in, int64_t inStride, float* out, int64_t outStride, int64_t K,
              int64_t J, const float* u, int64_t width, const float* base) {
  constexpr int kRows = 6;  // 12 accumulators + 2 inputs + 1 broadcast = 15 of 16 registers
  const int64_t chunk = std::max<int64_t>(16, kChunkFloats / std::max<int64_t>(K, 1) / 16 * 16);
  for (int64_t q0 = 0; q0 < width; q0 += chunk) {
    const int64_t w = std::min(chunk, width - q0);
    const float* src = in + q0;
    int64_t j = 0;
    for (; j + kRows <= J; j += kRows) {
      const int64_t at = j * outStride + q0;
      tileRowsAvx2<kRows, Add, Stream>(src, inStride, out + at, outStride, K, u + j * K, w,
                                       base + at);
    }
    const int64_t at = j * outStride + q0;
    float* dst = out + at;
    const float* add = base + at;
    const float* uTail = u + j * K;
    switch (J - j) {
      case 5:
        tileRowsAvx2<5, Add, Stream>(src, inStride, dst, outStride, K, uTail, w, add);
        break;
      case 4:
        tileRowsAvx2<4, Add, Stream>(src, inStride, dst, outStride, K, uTail, w, add);
        break;
      case 3:
        tileRowsAvx2<3, Add, Stream>(src, inStride, dst, outStride, K, uTail, w, add);
        break;
      case 2:
        tileRowsAvx2<2, Add, Stream>(src, inStride, dst, outStride, K, uTail, w, add);
        break;
      case 1:
        tileRowsAvx2<1, Add, Stream>(src, inStride, dst, outStride, K, uTail, w, add);
        break;
      default:
        break;
    }
  }
}

using TileFn = void (*)(const float*, int64_t, float*, int64_t, int64_t, int64_t, const float*,
                        int64_t, const float*);

TileFn tileAvx2For(bool add, bool stream) {
  if (add) return stream ? tileAvx2<true, true> : tileAvx2<true, false>;
  return stream ? tileAvx2<false, true> : tileAvx2<false, false>;
}

// The contiguous last-mode case (rows of K floats to rows of J floats):
// vectorised over j with U^T (ut is [K, jPadded], zero beyond J). PB rows x JV
// vectors of accumulators stay in registers.
template <int PB, int JV, bool Add, bool Stream>
__attribute__((target("avx2,fma"))) void rowsBlockAvx2(const float* in, float* out, int64_t K,
                                                       int64_t J, const float* ut, int64_t jPadded,
                                                       const float* base) {
  for (int64_t j0 = 0; j0 < J; j0 += 8 * JV) {
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
    for (int v = 0; v < JV; ++v) {
      const int64_t j = j0 + 8 * v;
      const int64_t valid = J - j;
      if (valid >= 8) {
        for (int p = 0; p < PB; ++p) {
          storeResult<Add, Stream>(out + p * J + j, base + p * J + j, acc[p][v]);
        }
      } else if (valid > 0) {
        const __m256i mask = firstLanes(valid);
        for (int p = 0; p < PB; ++p) {
          storeMasked<Add>(out + p * J + j, base + p * J + j, mask, acc[p][v]);
        }
      }
    }
  }
}

template <int JV, bool Add, bool Stream>
void rowsAvx2(const float* in, float* out, int64_t P, int64_t K, int64_t J, const float* ut,
              int64_t jPadded, const float* base) {
  constexpr int kRows = JV == 2 ? 6 : 8;  // accumulators + JV loads + 1 broadcast <= 16 registers
  int64_t p = 0;
  for (; p + kRows <= P; p += kRows) {
    rowsBlockAvx2<kRows, JV, Add, Stream>(in + p * K, out + p * J, K, J, ut, jPadded, base + p * J);
  }
  for (; p + 2 <= P; p += 2) {
    rowsBlockAvx2<2, JV, Add, Stream>(in + p * K, out + p * J, K, J, ut, jPadded, base + p * J);
  }
  if (p < P) {
    rowsBlockAvx2<1, JV, Add, Stream>(in + p * K, out + p * J, K, J, ut, jPadded, base + p * J);
  }
}

using RowsFn = void (*)(const float*, float*, int64_t, int64_t, int64_t, const float*, int64_t,
                        const float*);

RowsFn rowsAvx2For(bool wide, bool add, bool stream) {
  if (wide) {
    if (add) return stream ? rowsAvx2<2, true, true> : rowsAvx2<2, true, false>;
    return stream ? rowsAvx2<2, false, true> : rowsAvx2<2, false, false>;
  }
  if (add) return stream ? rowsAvx2<1, true, true> : rowsAvx2<1, true, false>;
  return stream ? rowsAvx2<1, false, true> : rowsAvx2<1, false, false>;
}

// Every cache line of the K rows (width floats each) of one tile group.
void prefetchRows(const float* in, int64_t stride, int64_t K, int64_t width) {
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t q = 0; q < width; q += 16) {
      _mm_prefetch(reinterpret_cast<const char*>(in + k * stride + q), _MM_HINT_T0);
    }
  }
}

bool aligned32(const float* p) { return reinterpret_cast<uintptr_t>(p) % 32 == 0; }

}  // namespace

bool vectorTilesAvailable() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return supported;
}

ModeMatrix::ModeMatrix(const float* source, int64_t J, int64_t K, const float* scale, float alpha,
                       bool transposed)
    : J_(J), K_(K), jPadded_((J + 15) / 16 * 16), u_(size_t(J * K)) {
  for (int64_t j = 0; j < J; ++j) {
    for (int64_t k = 0; k < K; ++k) {
      const float value = transposed ? source[k * J + j] : source[j * K + k];
      const float s = scale ? scale[transposed ? j : k] : 1.0f;
      u_[size_t(j * K + k)] = value * s * alpha;
    }
  }
  if (appliedByBlas(J, K)) return;
  ut_.assign(size_t(K * jPadded_), 0.0f);
  for (int64_t j = 0; j < J; ++j) {
    for (int64_t k = 0; k < K; ++k) ut_[size_t(k * jPadded_ + j)] = u_[size_t(j * K + k)];
  }
}

void applyModeTile(const ModeMatrix& u, const float* in, TileSide inSide, float* out,
                   TileSide outSide, int64_t P, int64_t segments, int64_t width,
                   const TileAccess& access) {
  const int64_t K = u.cols(), J = u.rows();
  if (segments > 1 && inSide.segmentStride == width && outSide.segmentStride == width) {
    width *= segments;
    segments = 1;
  }
  const float* base = access.base;
  const bool add = base != nullptr;
  const bool vector = vectorTilesAvailable();
  if (vector && u.hasTransposed() && segments == 1 && width == 1 && inSide.rowStride == 1 &&
      outSide.rowStride == 1) {
    const bool stream = access.stream && aligned32(out) && J % 8 == 0;
    rowsAvx2For(J > 8, add, stream)(in, out, P, K, J, u.transposed(), u.paddedRows(),
                                    add ? base : out);
    return;
  }
  // Streaming needs every full vector 32-byte aligned: rows and segments on 8-float steps.
  const bool stream = access.stream && aligned32(out) && outSide.rowStride % 8 == 0 &&
                      (segments == 1 || outSide.segmentStride % 8 == 0);
  const TileFn tile = tileAvx2For(add, stream);
  for (int64_t p = 0; p < P; ++p) {
    for (int64_t s = 0; s < segments; ++s) {
      const float* src = in + p * K * inSide.rowStride + s * inSide.segmentStride;
      const int64_t at = p * J * outSide.rowStride + s * outSide.segmentStride;
      if (access.prefetch && p + 1 < P) {
        prefetchRows(src + K * inSide.rowStride, inSide.rowStride, K, width);
      }
      // The base rows of a later output group are as scattered as its rows.
      if (add) {
        const int64_t ahead = p * segments + s + kPrefetchGroups;
        if (ahead < P * segments) {
          const int64_t pa = ahead / segments, sa = ahead % segments;
          prefetchRows(base + pa * J * outSide.rowStride + sa * outSide.segmentStride,
                       outSide.rowStride, J, width);
        }
      }
      if (vector) {
        // Without a base, the kernel is handed out itself as a base it never reads.
        tile(src, inSide.rowStride, out + at, outSide.rowStride, K, J, u.data(), width,
             add ? base + at : out + at);
      } else {
        tileScalar(src, inSide.rowStride, out + at, outSide.rowStride, K, J, u.data(), width,
                   add ? base + at : nullptr);
      }
    }
  }
}

void finishStreaming() { _mm_sfence(); }

}  // namespace cpu
}  // namespace tera
