#include "cpu/tucker_cpu.h"

#include <cblas.h>
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <functional>
#include <memory>
#include <numeric>
#include <vector>

#include "core/errors.h"
#include "cpu/thread_pool.h"
#include "cpu/tucker_tiles.h"

namespace tera {
namespace cpu {
namespace {

// Floats in one cache-resident buffer of a slab pass (two per thread).
constexpr int64_t kSlabBudget = 32 * 1024;
// Floats in one buffer of a column pass (rows x columns, two per thread).
constexpr int64_t kColumnBudget = 64 * 1024;
// Narrowest column block: one 64-byte cache line of a row.
constexpr int64_t kMinColumnWidth = 16;
// Largest table of prefix weights kept for the peeling (doubles).
constexpr int64_t kWeightTable = 1 << 14;
// Pass outputs at least this large (floats) are stored past the cache: they are
// read again only by the next pass or GEMM, long after they would have left it.
constexpr int64_t kStreamFloats = int64_t(4) << 20;

int64_t product(const int64_t* dims, int begin, int end) {
  int64_t p = 1;
  for (int i = begin; i < end; ++i) p *= dims[i];
  return p;
}

// Per-thread scratch that only grows: after the first call a kernel pays no page
// faults for its cache buffers.
float* threadScratch(int64_t count) {
  thread_local std::vector<float> buffer;
  if (int64_t(buffer.size()) < count) {
    buffer = std::vector<float>();
    buffer.resize(size_t(count));
  }
  return buffer.data();
}

// A grow-only buffer on 2 MiB-aligned memory advised for transparent huge
// pages: column passes touch one cache line per row across the whole buffer,
// and with 4 KiB pages every one of those lines would cost a TLB miss.
class HugePageBuffer {
 public:
  ~HugePageBuffer() { std::free(data_); }
  float* get(int64_t count) {
    if (count <= capacity_) return data_;
    constexpr size_t kHugePage = size_t(2) << 20;
    const size_t bytes = (size_t(count) * sizeof(float) + kHugePage - 1) / kHugePage * kHugePage;
    void* fresh = std::aligned_alloc(kHugePage, bytes);
    if (!fresh) throw Error("out of host memory allocating " + std::to_string(bytes) + " bytes");
#ifdef MADV_HUGEPAGE
    madvise(fresh, bytes, MADV_HUGEPAGE);
#endif
    std::free(data_);
    data_ = static_cast<float*>(fresh);
    capacity_ = int64_t(bytes / sizeof(float));
    return data_;
  }

 private:
  float* data_ = nullptr;
  int64_t capacity_ = 0;
};

// Intermediates between passes that fit in no caller buffer (ranks below modes,
// order-2 products through OpenBLAS, a projection that keeps its input).
// Kernels run one at a time per backend; these only grow.
float* sharedScratch(int slot, int64_t count) {
  static HugePageBuffer buffers[2];
  return buffers[slot].get(count);
}

// OpenBLAS 0.3's interface/gemm.c: no threads for m n k <= SMP_THRESHOLD_MIN (65536) *
// GEMM_MULTITHREAD_THRESHOLD (4, the default build setting).
constexpr int64_t kBlasSingleThreadMnk = 65536 * 4;

int blasDim(int64_t value) {
  if (value > INT_MAX) {
    throw Error("Tucker kernel: a mode product of size " + std::to_string(value) +
                " exceeds the BLAS 32-bit index limit");
  }
  return int(value);
}

// out[p] = U in[p] for p < P, in[p] [K, Q], out[p] [J, Q]; Q = 1 is one GEMM.
void blasModeProduct(const ModeMatrix& u, const float* in, float* out, int64_t P, int64_t Q) {
  const int K = blasDim(u.cols()), J = blasDim(u.rows());
  if (Q == 1) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasDim(P), J, K, 1.0f, in, K, u.data(), K,
                0.0f, out, J);
    return;
  }
  const int q = blasDim(Q);
  const auto gemm = [&](int64_t p) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, J, q, K, 1.0f, u.data(), K,
                in + p * K * Q, q, 0.0f, out + p * J * Q, q);
  };
  // OpenBLAS runs a GEMM of at most kBlasSingleThreadMnk multiply-adds on the calling thread
  // only, so a sequence of them would use one core: spread such GEMMs over the pool instead
  // (each p is independent, so the result does not depend on the thread count).
  if (int64_t(J) * q * K <= kBlasSingleThreadMnk && P > 1) {
    parallelFor(P, [&](int64_t begin, int64_t end, int) {
      for (int64_t p = begin; p < end; ++p) gemm(p);
    });
    return;
  }
  for (int64_t p = 0; p < P; ++p) gemm(p);
}

// What the last pass of a multi-mode product does with each finished tile:
// store it (adding `base` when given), or hand it to `consume` instead.
struct Epilogue {
  const float* base = nullptr;
  // Called once with the number of tiles, then per tile: `rows` rows of `cols`
  // floats at tile + i * cols hold the output's flat elements
  // [offset + i * stride, offset + i * stride + cols).
  std::function<void(int64_t tiles)> prepare;
  std::function<void(int64_t tileIndex, const float* tile, int64_t offset, int64_t stride,
                     int64_t rows, int64_t cols)>
      consume;
  // Tile columns are a multiple of this (whole rows of the last mode for consume).
  int64_t granule = 1;
};

// Modes [lo, hi) applied by one pass over memory: cache-sized tiles (slabs of
// whole trailing groups, or column blocks of leading ones), or one large mode
// by OpenBLAS.
struct Pass {
  int lo, hi;
  bool blas;
};

// Where a tile's rows live: row r at base + r * rowStride.
struct Placement {
  float* base;
  int64_t rowStride;
};

class MultiModeProduct {
 public:
  // mats[n] == nullptr leaves mode n as it is (inDims[n] == outDims[n]).
  MultiModeProduct(int order, const int64_t* inDims, const int64_t* outDims,
                   const ModeMatrix* const* mats)
      : order_(order), mats_(mats, mats + order) {
    std::copy(inDims, inDims + order, in_);
    std::copy(outDims, outDims + order, out_);
    for (int n = 0; n < order; ++n) widest_[n] = std::max(inDims[n], outDims[n]);
    plan();
  }

  // Runs in -> out. `out` may equal `in` (then in is overwritten) and may be null
  // when the epilogue consumes the result; `capacity` floats at out may hold
  // intermediates.
  void run(const float* in, float* out, int64_t capacity, const Epilogue& epilogue) {
    int64_t cur[kMaxOrder];
    std::copy(in_, in_ + order_, cur);
    const float* src = in;
    int srcSlot = -1;  // the shared scratch slot src lives in, if any
    for (size_t i = 0; i < passes_.size(); ++i) {
      const bool last = i + 1 == passes_.size();
      const Pass& pass = passes_[i];
      int64_t after[kMaxOrder];
      std::copy(cur, cur + order_, after);
      std::copy(out_ + pass.lo, out_ + pass.hi, after + pass.lo);
      float* dst = out;
      int dstSlot = -1;
      const int64_t size = product(after, 0, order_);
      // A consumed result from OpenBLAS still needs memory to land in.
      const bool needsBuffer =
          last ? !out && pass.blas
               : !(out && size <= capacity && laterPassesInPlace(i + 1, after, capacity) &&
                   (src != out || inPlaceCapable(pass, cur)));
      if (needsBuffer) {
        dstSlot = srcSlot == 0 ? 1 : 0;
        dst = sharedScratch(dstSlot, size);
      }
      runPass(pass, cur, src, dst, last ? &epilogue : nullptr);
      std::copy(after, after + order_, cur);
      src = dst;
      srcSlot = dstSlot;
    }
  }

 private:
  bool active(int n) const { return mats_[size_t(n)] != nullptr; }
  bool large(int n) const {
    return active(n) && appliedByBlas(mats_[size_t(n)]->rows(), mats_[size_t(n)]->cols());
  }

  // Groups found from the last mode: large modes on their own, the rest in the
  // fewest groups whose tiles fit the cache budgets (groups without an active
  // mode dropped). Slab passes stream contiguous rows; the others touch one
  // cache line per row, so the groups run in whichever order (last group first,
  // or first group first) gives those passes less data to move. On a tie the
  // trailing group's slabs go last: the result (and a base the epilogue reads,
  // or the core the peeling reads) is then accessed in contiguous rows.
  void plan() {
    int hi = order_;
    while (hi > 0) {
      const int n = hi - 1;
      if (large(n)) {
        passes_.push_back({n, hi, true});
        hi = n;
        continue;
      }
      int floor = n;
      while (floor > 0 && !large(floor - 1)) --floor;
      const bool slab = product(widest_, hi, order_) == 1;
      const int64_t budget = slab ? kSlabBudget : kColumnBudget / kMinColumnWidth;
      int lo = n;
      int64_t rows = widest_[n];
      while (lo > floor && rows * widest_[lo - 1] <= budget) rows *= widest_[--lo];
      bool any = false;
      for (int m = lo; m < hi; ++m) any = any || active(m);
      if (any) passes_.push_back({lo, hi, false});
      hi = lo;
    }
    if (passes_.empty()) throw Error("internal: a multi-mode product without a mode to apply");
    const double lastFirst = scatteredVolume();
    std::reverse(passes_.begin(), passes_.end());
    if (lastFirst < scatteredVolume()) std::reverse(passes_.begin(), passes_.end());
  }

  // Floats read and written by the passes that are not slab passes, in the current order.
  double scatteredVolume() const {
    int64_t cur[kMaxOrder];
    std::copy(in_, in_ + order_, cur);
    double volume = 0;
    for (const Pass& pass : passes_) {
      const bool slab = product(widest_, pass.hi, order_) == 1;
      const double before = double(product(cur, 0, order_));
      std::copy(out_ + pass.lo, out_ + pass.hi, cur + pass.lo);
      if (!slab) volume += before + double(product(cur, 0, order_));
    }
    return volume;
  }

  // A pass can read and write the same buffer when its tiles' input and output
  // regions coincide (as many rows in as out) or when one leading index leaves
  // tiles as disjoint column blocks.
  bool inPlaceCapable(const Pass& pass, const int64_t* cur) const {
    if (pass.blas) return false;
    return product(cur, 0, pass.lo) == 1 ||
           product(cur, pass.lo, pass.hi) == product(out_, pass.lo, pass.hi);
  }

  // Whether passes [first, end) can all run in the output buffer, every
  // intermediate fitting its capacity.
  bool laterPassesInPlace(size_t first, const int64_t* dims, int64_t capacity) const {
    int64_t cur[kMaxOrder];
    std::copy(dims, dims + order_, cur);
    for (size_t i = first; i < passes_.size(); ++i) {
      if (!inPlaceCapable(passes_[i], cur)) return false;
      std::copy(out_ + passes_[i].lo, out_ + passes_[i].hi, cur + passes_[i].lo);
      if (i + 1 < passes_.size() && product(cur, 0, order_) > capacity) return false;
    }
    return true;
  }

  void runPass(const Pass& pass, const int64_t* cur, const float* src, float* dst,
               const Epilogue* epilogue) {
    const int64_t lead = product(cur, 0, pass.lo);
    const int64_t rowsIn = product(cur, pass.lo, pass.hi);
    const int64_t rowsOut = product(out_, pass.lo, pass.hi);
    const int64_t Q = product(cur, pass.hi, order_);
    if (pass.blas) {
      blasModeProduct(*mats_[size_t(pass.lo)], src, dst, lead, Q);
      if (epilogue) finishWhole(*epilogue, dst, lead * rowsOut * Q);
      return;
    }
    std::vector<int> steps;
    for (int n = pass.hi - 1; n >= pass.lo; --n) {
      if (active(n)) steps.push_back(n);
    }
    const int64_t widestRows = product(widest_, pass.lo, pass.hi);
    const bool slab = Q == 1;
    const bool consumes = epilogue && epilogue->consume;
    // One step reading and writing the same rows needs its input copied aside.
    const bool inPlaceSingle = src == dst && steps.size() == 1 && !consumes;
    int64_t batch = 1, width = 1, blocks = 1;
    if (slab) {
      const int64_t fit = std::max<int64_t>(1, kSlabBudget / widestRows);
      const int64_t spread = std::max<int64_t>(1, lead / (4 * int64_t(numThreads())));
      batch = std::min(fit, spread);
    } else {
      const int64_t granule = consumes ? epilogue->granule : 1;
      int64_t unit = granule > 1 ? granule : kMinColumnWidth;
      if (granule > 1 && std::lcm(granule, kMinColumnWidth) <= 256) {
        unit = std::lcm(granule, kMinColumnWidth);
      }
      width = std::min(Q, std::max(unit, kColumnBudget / widestRows / unit * unit));
      blocks = (Q + width - 1) / width;
    }
    const int64_t tiles = slab ? (lead + batch - 1) / batch : lead * blocks;
    if (consumes && epilogue->prepare) epilogue->prepare(tiles);
    const int64_t bufferFloats = batch * widestRows * width;
    const bool stream = !consumes && lead * rowsOut * Q >= kStreamFloats;
    parallelFor(tiles, [&](int64_t begin, int64_t end, int) {
      float* scratch = threadScratch(3 * bufferFloats);
      float* buffers[2] = {scratch, scratch + bufferFloats};
      float* gathered = scratch + 2 * bufferFloats;
      for (int64_t tile = begin; tile < end; ++tile) {
        int64_t count = 1, q0 = 0, w = width, inOffset, outOffset, rowStride;
        if (slab) {
          const int64_t p0 = tile * batch;
          count = std::min(batch, lead - p0);
          inOffset = p0 * rowsIn;
          outOffset = p0 * rowsOut;
          rowStride = 1;
        } else {
          const int64_t p = tile / blocks;
          q0 = (tile % blocks) * width;
          w = std::min(width, Q - q0);
          inOffset = p * rowsIn * Q + q0;
          outOffset = p * rowsOut * Q + q0;
          rowStride = Q;
        }
        Placement from{const_cast<float*>(src) + inOffset, rowStride};
        if (inPlaceSingle) {
          for (int64_t r = 0; r < count * rowsIn; ++r) {
            std::copy(from.base + r * rowStride, from.base + r * rowStride + w, gathered + r * w);
          }
          from = {gathered, w};
        }
        const Placement to =
            consumes ? Placement{gathered, w} : Placement{dst + outOffset, rowStride};
        TileAccess first, final;
        first.prefetch = !slab && !inPlaceSingle;
        if (!consumes) {
          final.stream = stream;
          if (epilogue && epilogue->base) final.base = epilogue->base + outOffset;
        }
        applySteps(steps, pass, cur, count, w, from, to, buffers, first, final);
        if (!consumes) continue;
        if (slab) {
          epilogue->consume(tile, gathered, outOffset, 0, 1, count * rowsOut);
        } else {
          epilogue->consume(tile, gathered, outOffset, Q, rowsOut, w);
        }
      }
      if (stream) finishStreaming();
    });
  }

  // The modes of one tile, last first: `count` slabs or one column block of
  // width w; the first step reads `from`, the last writes `to`, the others
  // ping-pong between the two compact buffers.
  void applySteps(const std::vector<int>& steps, const Pass& pass, const int64_t* dims,
                  int64_t count, int64_t w, Placement from, Placement to, float* const* buffers,
                  const TileAccess& first, const TileAccess& final) const {
    int64_t cur[kMaxOrder];
    std::copy(dims, dims + order_, cur);
    Placement source = from;
    for (size_t s = 0; s < steps.size(); ++s) {
      const int n = steps[s];
      const ModeMatrix& u = *mats_[size_t(n)];
      const int64_t P = count * product(cur, pass.lo, n);
      const int64_t m = product(cur, n + 1, pass.hi);
      const bool last = s + 1 == steps.size();
      const Placement target = last ? to : Placement{buffers[source.base == buffers[0] ? 1 : 0], w};
      TileAccess access = last ? final : TileAccess();
      access.prefetch = s == 0 && first.prefetch;
      applyModeTile(u, source.base, {m * source.rowStride, source.rowStride}, target.base,
                    {m * target.rowStride, target.rowStride}, P, m, w, access);
      cur[n] = out_[n];
      source = target;
    }
  }

  // The epilogue of a pass that wrote its whole result to `result` at once.
  static void finishWhole(const Epilogue& epilogue, float* result, int64_t size) {
    if (epilogue.consume) {
      if (epilogue.prepare) epilogue.prepare(1);
      epilogue.consume(0, result, 0, 0, 1, size);
    } else if (epilogue.base) {
      const float* base = epilogue.base;
      parallelFor(size, [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) result[i] = base[i] + result[i];
      });
    }
  }

  int order_;
  int64_t in_[kMaxOrder] = {}, out_[kMaxOrder] = {}, widest_[kMaxOrder] = {};
  std::vector<const ModeMatrix*> mats_;
  std::vector<Pass> passes_;
};

// --- The scaling-vector gradients by peeling (docs/math.md) ----------------------

// s_begin (x) ... (x) s_{end-1} in double (null scales are ones).
std::vector<double> kronecker(int begin, int end, const int64_t* ranks,
                              const float* const* scales) {
  std::vector<double> out(1, 1.0);
  for (int n = begin; n < end; ++n) {
    std::vector<double> grown(out.size() * size_t(ranks[n]));
    for (size_t a = 0; a < out.size(); ++a) {
      for (int64_t r = 0; r < ranks[n]; ++r) {
        grown[a * size_t(ranks[n]) + size_t(r)] = out[a] * (scales[n] ? double(scales[n][r]) : 1.0);
      }
    }
    out.swap(grown);
  }
  return out;
}

// The prefix weight prod_{m < count} s_m[r_m] of a = (r_0 .. r_{count-1}), as
// high[a / lowCount] * low[a % lowCount] so that neither table outgrows the cache.
class PrefixWeights {
 public:
  PrefixWeights(int count, const int64_t* ranks, const float* const* scales) {
    int split = count;
    while (split > 0 && lowCount_ * ranks[split - 1] <= kWeightTable) lowCount_ *= ranks[--split];
    high_ = kronecker(0, split, ranks, scales);
    low_ = kronecker(split, count, ranks, scales);
  }
  // Reads the weights of a, a + 1, ... in turn, without a division per row.
  class Cursor {
   public:
    Cursor(const PrefixWeights& w, int64_t a)
        : high_(w.high_.data()),
          low_(w.low_.data()),
          count_(w.lowCount_),
          hi_(a / w.lowCount_),
          lo_(a % w.lowCount_) {}
    double next() {
      const double weight = high_[hi_] * low_[lo_];
      if (++lo_ == count_) {
        lo_ = 0;
        ++hi_;
      }
      return weight;
    }

   private:
    const double* high_;
    const double* low_;
    int64_t count_, hi_, lo_;
  };
  Cursor from(int64_t a) const { return Cursor(*this, a); }

 private:
  int64_t lowCount_ = 1;
  std::vector<double> high_, low_;
};

// Rows a in [a0, a0 + count) of H = z * g (elementwise, in float), R floats
// each: grad[r] += W(a) H[a, r] and next[a - a0] = sum_r H[a, r] s[r], in double.
void peelRowsScalar(const float* z, const float* g, int64_t a0, int64_t count, int64_t R,
                    const double* s, const PrefixWeights& weights, double* grad, double* next) {
  PrefixWeights::Cursor cursor = weights.from(a0);
  for (int64_t i = 0; i < count; ++i) {
    const double w = cursor.next();
    double dot = 0;
    for (int64_t r = 0; r < R; ++r) {
      const float h = z[i * R + r] * g[i * R + r];
      grad[r] += w * double(h);
      dot += double(h) * s[r];
    }
    next[i] = dot;
  }
}

__attribute__((target("avx2,fma"))) __m256d loadRowQuad(const float* z, const float* g) {
  return _mm256_cvtps_pd(_mm_mul_ps(_mm_loadu_ps(z), _mm_loadu_ps(g)));
}

__attribute__((target("avx2,fma"))) double horizontalSum(__m256d v) {
  const __m128d pair = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(pair, _mm_unpackhi_pd(pair, pair)));
}

// R = 4 * RV with the gradient accumulators held in registers.
template <int RV>
__attribute__((target("avx2,fma"))) void peelRowsAvx2(const float* z, const float* g, int64_t a0,
                                                      int64_t count, const double* s,
                                                      const PrefixWeights& weights, double* grad,
                                                      double* next) {
  constexpr int R = 4 * RV;
  __m256d acc[RV], scale[RV];
  for (int v = 0; v < RV; ++v) {
    acc[v] = _mm256_loadu_pd(grad + 4 * v);
    scale[v] = _mm256_loadu_pd(s + 4 * v);
  }
  PrefixWeights::Cursor cursor = weights.from(a0);
  for (int64_t i = 0; i < count; ++i) {
    const __m256d w = _mm256_set1_pd(cursor.next());
    __m256d dot = _mm256_setzero_pd();
    for (int v = 0; v < RV; ++v) {
      const __m256d h = loadRowQuad(z + i * R + 4 * v, g + i * R + 4 * v);
      acc[v] = _mm256_fmadd_pd(w, h, acc[v]);
      dot = _mm256_fmadd_pd(h, scale[v], dot);
    }
    next[i] = horizontalSum(dot);
  }
  for (int v = 0; v < RV; ++v) _mm256_storeu_pd(grad + 4 * v, acc[v]);
}

void peelRows(const float* z, const float* g, int64_t a0, int64_t count, int64_t R, const double* s,
              const PrefixWeights& weights, double* grad, double* next) {
  if (vectorTilesAvailable()) {
    switch (R) {
      case 4:
        return peelRowsAvx2<1>(z, g, a0, count, s, weights, grad, next);
      case 8:
        return peelRowsAvx2<2>(z, g, a0, count, s, weights, grad, next);
      case 12:
        return peelRowsAvx2<3>(z, g, a0, count, s, weights, grad, next);
      case 16:
        return peelRowsAvx2<4>(z, g, a0, count, s, weights, grad, next);
      default:
        break;
    }
  }
  peelRowsScalar(z, g, a0, count, R, s, weights, grad, next);
}

std::vector<double> scaleVector(const float* scale, int64_t rank) {
  std::vector<double> s(size_t(rank), 1.0);
  if (scale) std::copy(scale, scale + rank, s.begin());
  return s;
}

// Sums per-part partial gradients (parts x R) in part order into grad.
void sumPartials(const std::vector<double>& partial, int64_t parts, int64_t R, float* grad) {
  for (int64_t r = 0; r < R; ++r) {
    double total = 0;
    for (int64_t p = 0; p < parts; ++p) total += partial[size_t(p * R + r)];
    grad[r] = float(total);
  }
}

// The remaining levels n = last .. 0 from the suffix S_{last+1} (`current`,
// prod R[0..last] doubles): dl_n[r] = sum_a W_n(a) S[a, r], then S_n = S_{n+1}
// contracted with s_n. Each level is R_n times smaller than the one before.
void peelLevels(int last, const int64_t* R, std::vector<double> current, const float* const* scales,
                float* const* grads) {
  for (int n = last; n >= 0; --n) {
    const int64_t lead = product(R, 0, n), rank = R[n];
    const PrefixWeights weights(n, R, scales);
    const std::vector<double> s = scaleVector(scales[n], rank);
    std::vector<double> next(static_cast<size_t>(lead));
    const int threads = numThreads();
    std::vector<double> partial(size_t(threads * rank), 0.0);
    parallelFor(lead, [&](int64_t begin, int64_t end, int worker) {
      double* acc = partial.data() + worker * rank;
      PrefixWeights::Cursor cursor = weights.from(begin);
      for (int64_t a = begin; a < end; ++a) {
        const double* row = current.data() + a * rank;
        const double w = cursor.next();
        double dot = 0;
        for (int64_t r = 0; r < rank; ++r) {
          acc[r] += w * row[r];
          dot += row[r] * s[size_t(r)];
        }
        next[size_t(a)] = dot;
      }
    });
    sumPartials(partial, threads, rank, grads[n]);
    current.swap(next);
  }
}

// Rows of the last mode per part of the first level's parallel loop.
constexpr int64_t kPeelChunkRows = 4096;

// All dl_n from H = z * g, H of shape ranks[0..order).
void peelCore(int order, const int64_t* R, const float* z, const float* g,
              const float* const* scales, float* const* grads) {
  const int last = order - 1;
  const int64_t rank = R[last], lead = product(R, 0, last);
  const PrefixWeights weights(last, R, scales);
  const std::vector<double> s = scaleVector(scales[last], rank);
  std::vector<double> next(static_cast<size_t>(lead));
  const int64_t parts = (lead + kPeelChunkRows - 1) / kPeelChunkRows;
  std::vector<double> partial(size_t(parts * rank), 0.0);
  parallelFor(parts, [&](int64_t begin, int64_t end, int) {
    for (int64_t part = begin; part < end; ++part) {
      const int64_t a0 = part * kPeelChunkRows, count = std::min(kPeelChunkRows, lead - a0);
      peelRows(z + a0 * rank, g + a0 * rank, a0, count, rank, s.data(), weights,
               partial.data() + part * rank, next.data() + a0);
    }
  });
  sumPartials(partial, parts, rank, grads[last]);
  peelLevels(last - 1, R, std::move(next), scales, grads);
}

}  // namespace

void tuckerReconstruct(const TuckerShape& shape, const float* core, const float* const* factors,
                       const float* const* scales, float alpha, float* out, const float* base) {
  const int N = shape.order;
  std::vector<std::unique_ptr<ModeMatrix>> owned;
  const ModeMatrix* mats[kMaxOrder];
  for (int n = 0; n < N; ++n) {
    owned.push_back(std::make_unique<ModeMatrix>(factors[n], shape.modes[n], shape.ranks[n],
                                                 scales[n], n == 0 ? alpha : 1.0f, false));
    mats[n] = owned.back().get();
  }
  Epilogue epilogue;
  epilogue.base = base;
  MultiModeProduct(N, shape.ranks, shape.modes, mats).run(core, out, shape.fullSize(), epilogue);
}

void tuckerScaleGrad(const TuckerShape& shape, float* gradX, const float* core,
                     const float* const* factors, const float* const* scales,
                     float* const* gradScales, bool overwriteGradX) {
  const int N = shape.order;
  const int64_t* R = shape.ranks;
  // Z = gradX x_1 A_1^T ... x_N A_N^T; its tiles go straight into the first
  // peeling level (H = Z * G, then dl_N and S_{N-1}) instead of to memory.
  std::vector<std::unique_ptr<ModeMatrix>> owned;
  const ModeMatrix* mats[kMaxOrder];
  for (int n = 0; n < N; ++n) {
    owned.push_back(
        std::make_unique<ModeMatrix>(factors[n], R[n], shape.modes[n], nullptr, 1.0f, true));
    mats[n] = owned.back().get();
  }
  const int last = N - 1;
  const int64_t rank = R[last], lead = product(R, 0, last);
  const PrefixWeights weights(last, R, scales);
  const std::vector<double> s = scaleVector(scales[last], rank);
  std::vector<double> next(static_cast<size_t>(lead)), partial;
  Epilogue epilogue;
  epilogue.granule = rank;
  epilogue.prepare = [&](int64_t tiles) { partial.assign(size_t(tiles * rank), 0.0); };
  epilogue.consume = [&](int64_t tile, const float* values, int64_t offset, int64_t stride,
                         int64_t rows, int64_t cols) {
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t a0 = (offset + i * stride) / rank;
      peelRows(values + i * cols, core + a0 * rank, a0, cols / rank, rank, s.data(), weights,
               partial.data() + tile * rank, next.data() + a0);
    }
  };
  MultiModeProduct(N, shape.modes, R, mats)
      .run(gradX, overwriteGradX ? gradX : nullptr, overwriteGradX ? shape.fullSize() : 0,
           epilogue);
  sumPartials(partial, int64_t(partial.size()) / rank, rank, gradScales[last]);
  peelLevels(last - 1, R, std::move(next), scales, gradScales);
}

void tuckerCoreGrad(int order, const int64_t* ranks, const float* z, const float* core,
                    const float* const* scales, float* const* gradScales) {
  peelCore(order, ranks, z, core, scales, gradScales);
}

void modeProduct(const int64_t* shape, int order, int mode, const float* x, const float* matrix,
                 int64_t rows, const float* scale, float* y) {
  const int64_t P = product(shape, 0, mode), K = shape[mode], Q = product(shape, mode + 1, order);
  const ModeMatrix u(matrix, rows, K, scale, 1.0f, false);
  if (appliedByBlas(rows, K)) {
    blasModeProduct(u, x, y, P, Q);
    return;
  }
  if (Q == 1) {
    // Rows of K floats to rows of J: chunks of rows per thread.
    const int64_t chunk = 256;
    parallelFor((P + chunk - 1) / chunk, [&](int64_t begin, int64_t end, int) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t p0 = c * chunk, count = std::min(chunk, P - p0);
        applyModeTile(u, x + p0 * K, {1, 1}, y + p0 * rows, {1, 1}, count, 1, 1);
      }
    });
    return;
  }
  // Work items are (p, column chunk); chunks split Q when P alone cannot feed the threads.
  const int64_t wantItems = 4 * int64_t(numThreads());
  int64_t chunk = Q;
  if (P < wantItems && Q > kMinColumnWidth) {
    chunk = std::max(kMinColumnWidth, (Q * P / wantItems + 15) / 16 * 16);
  }
  const int64_t chunks = (Q + chunk - 1) / chunk;
  parallelFor(P * chunks, [&](int64_t begin, int64_t end, int) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t p = item / chunks, q0 = (item % chunks) * chunk;
      const int64_t width = std::min(chunk, Q - q0);
      applyModeTile(u, x + p * K * Q + q0, {Q, 0}, y + p * rows * Q + q0, {Q, 0}, 1, 1, width);
    }
  });
}

void kroneckerRows(int64_t rows, const TuckerShape& shape, const float* const* factors,
                   const float* const* scales, float alpha, bool contract, const float* x,
                   float* y) {
  const int Q = shape.order;
  int64_t inDims[kMaxOrder + 1], outDims[kMaxOrder + 1];
  inDims[0] = outDims[0] = rows;
  std::vector<std::unique_ptr<ModeMatrix>> owned;
  const ModeMatrix* mats[kMaxOrder + 1] = {nullptr};
  for (int n = 0; n < Q; ++n) {
    const int64_t I = shape.modes[n], R = shape.ranks[n];
    inDims[n + 1] = contract ? I : R;
    outDims[n + 1] = contract ? R : I;
    const float a = n == 0 ? alpha : 1.0f;
    owned.push_back(contract ? std::make_unique<ModeMatrix>(factors[n], R, I, scales[n], a, true)
                             : std::make_unique<ModeMatrix>(factors[n], I, R, scales[n], a, false));
    mats[n + 1] = owned.back().get();
  }
  MultiModeProduct(Q + 1, inDims, outDims, mats)
      .run(x, y, rows * product(outDims + 1, 0, Q), Epilogue());
}

void kroneckerScale(int64_t rows, int order, const int64_t* ranks, const float* const* scales,
                    float alpha, const float* x, float* y) {
  const std::vector<double> lambda = kronecker(0, order, ranks, scales);
  const int64_t cols = int64_t(lambda.size());
  std::vector<float> factor(lambda.size());
  for (size_t r = 0; r < lambda.size(); ++r) factor[r] = float(double(alpha) * lambda[r]);
  parallelFor(rows, [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t r = 0; r < cols; ++r) y[t * cols + r] = x[t * cols + r] * factor[size_t(r)];
    }
  });
}

void kroneckerScaleGrad(int64_t rows, int order, const int64_t* ranks, const float* a,
                        const float* b, const float* const* scales, float alpha,
                        float* const* gradScales) {
  const int64_t cols = product(ranks, 0, order);
  // M[r] = alpha sum_t a[t, r] b[t, r], by column chunks (each sums its rows in order).
  std::vector<double> m(static_cast<size_t>(cols));
  const int64_t chunk = 64;
  parallelFor((cols + chunk - 1) / chunk, [&](int64_t begin, int64_t end, int) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t r0 = c * chunk, r1 = std::min(cols, r0 + chunk);
      double acc[chunk] = {};
      for (int64_t t = 0; t < rows; ++t) {
        for (int64_t r = r0; r < r1; ++r) {
          acc[r - r0] += double(a[t * cols + r]) * double(b[t * cols + r]);
        }
      }
      for (int64_t r = r0; r < r1; ++r) m[size_t(r)] = double(alpha) * acc[r - r0];
    }
  });
  peelLevels(order - 1, ranks, std::move(m), scales, gradScales);
}

}  // namespace cpu
}  // namespace tera
