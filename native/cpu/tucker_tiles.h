// The mode-product microkernels of the CPU Tucker kernels: register-tiled
// AVX2+FMA loops for the small inner dimensions of TeRA's modes (with a scalar
// twin chosen at run time), on tiles whose rows may be split into segments
// spread over a larger matrix, so a tile can be read from and written to its
// place in memory without copies. Modes with two large dimensions go to
// OpenBLAS instead (tucker_cpu.cc decides).
#pragma once

#include <cstdint>
#include <vector>

namespace tera {
namespace cpu {

// Modes whose matrix has both dimensions at least this large are applied by
// OpenBLAS sgemm: its blocking beats the register tiles once K and J are large.
constexpr int64_t kBlasModeSize = 64;

inline bool appliedByBlas(int64_t J, int64_t K) { return J >= kBlasModeSize && K >= kBlasModeSize; }

// A mode's matrix U [J, K] (row-major), prepared once per kernel call and then
// read by every tile: U itself and, unless OpenBLAS applies it, U^T zero-padded
// to a multiple of 16 columns for the contiguous last-mode kernel.
class ModeMatrix {
 public:
  // U[j, k] = source[j * K + k] * (scale ? scale[k] : 1) * alpha, or with
  // `transposed` U[j, k] = source[k * J + j] * (scale ? scale[j] : 1) * alpha.
  ModeMatrix(const float* source, int64_t J, int64_t K, const float* scale, float alpha,
             bool transposed);

  int64_t rows() const { return J_; }
  int64_t cols() const { return K_; }
  const float* data() const { return u_.data(); }
  // U^T as [K, paddedRows()], zero beyond J; empty when OpenBLAS applies U.
  const float* transposed() const { return ut_.data(); }
  bool hasTransposed() const { return !ut_.empty(); }
  int64_t paddedRows() const { return jPadded_; }

 private:
  int64_t J_, K_, jPadded_;
  std::vector<float> u_, ut_;
};

// One side of a tile: row r's segment s starts at base + r * rowStride + s * segmentStride.
struct TileSide {
  int64_t rowStride, segmentStride;
};

// How a tile is read and its results stored.
struct TileAccess {
  // The input rows are scattered over memory (a strided column block): fetch
  // the next rows ahead while the current ones are computed.
  bool prefetch = false;
  // Added to every result: base has out's layout (element out + i <-> base + i).
  const float* base = nullptr;
  // Non-temporal stores where aligned: results that will not be read again
  // before they would have left the cache skip it (and its read-for-ownership).
  bool stream = false;
};

// out[p, j, s, q] = sum_k U[j, k] in[p, k, s, q] for p < P, s < segments, q < width,
// where row (p, k) of `in` is row p * K + k of its TileSide and row (p, j) of
// `out` is row p * J + j of its own. Segments that are contiguous on both sides
// are processed as one wider row.
void applyModeTile(const ModeMatrix& u, const float* in, TileSide inSide, float* out,
                   TileSide outSide, int64_t P, int64_t segments, int64_t width,
                   const TileAccess& access = {});

// Orders this thread's non-temporal stores before what follows (call once a
// thread's tiles are done).
void finishStreaming();

// Whether the vector microkernels run on this CPU (AVX2 and FMA).
bool vectorTilesAvailable();

}  // namespace cpu
}  // namespace tera
