#include "cpu/transformer_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/errors.h"
#include "core/rope.h"
#include "core/shape.h"
#include "cpu/thread_pool.h"

namespace tera {
namespace cpu {
namespace {

// Rows handled per parallel item, so that short rows do not wake the pool for nothing.
int64_t rowsPerItem(int64_t cols) { return std::max<int64_t>(1, (int64_t(1) << 13) / cols); }

template <typename Body>
void forEachRow(int64_t rows, int64_t cols, Body body) {
  const int64_t grain = rowsPerItem(cols);
  parallelFor((rows + grain - 1) / grain, [&](int64_t begin, int64_t end, int) {
    for (int64_t r = begin * grain; r < std::min(rows, end * grain); ++r) body(r);
  });
}

// sum_j term(j) for j < n in double, in four running sums combined in a fixed
// order: one running sum waits on each add's latency, four keep the adder busy.
template <typename Term>
double rowSum(int64_t n, Term term) {
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    s0 += term(j);
    s1 += term(j + 1);
    s2 += term(j + 2);
    s3 += term(j + 3);
  }
  for (; j < n; ++j) s0 += term(j);
  return (s0 + s1) + (s2 + s3);
}

// Whether key j of a masked softmax row is kept, and the row's causal limit.
struct RowMask {
  const float* keys = nullptr;  // this row's batch entry of the key mask, or null
  int64_t limit = 0;            // keys j >= limit are hidden by causality

  RowMask(const AttentionMask* mask, int64_t row, int64_t cols) : limit(cols) {
    if (!mask) return;
    const int64_t i = row % mask->queryLength;
    const int64_t b = row / (mask->queryLength * mask->heads);
    if (mask->keyMask) keys = mask->keyMask + b * cols;
    if (mask->causal) limit = std::min(cols, std::max<int64_t>(0, mask->queryOffset + i + 1));
  }
  bool kept(int64_t j) const { return j < limit && (!keys || keys[j] != 0.0f); }
};

}  // namespace

void checkIndices(const char* kernel, const char* what, const char* unit, const char* kind,
                  const float* indices, int64_t count, int64_t limit, int64_t skip) {
  for (int64_t i = 0; i < count; ++i) {
    const float value = indices[i];
    if (skip != kNoIgnoreIndex && value == float(skip)) continue;
    if (!(value >= 0.0f && value < float(limit)) || value != std::floor(value)) {
      throw Error(indexErrorMessage(kernel, what, value, unit, i, kind, limit));
    }
  }
}

void embeddingForward(float* out, const float* weight, const float* ids, int64_t count,
                      int64_t vocab, int64_t dim) {
  checkIndices("embedding", "token id", "position", "a token index", ids, count, vocab);
  forEachRow(count, dim, [&](int64_t i) {
    std::memcpy(out + i * dim, weight + int64_t(ids[i]) * dim, size_t(dim) * sizeof(float));
  });
}

void embeddingBackward(float* dweight, const float* dy, const float* ids, int64_t count,
                       int64_t vocab, int64_t dim) {
  checkIndices("embedding", "token id", "position", "a token index", ids, count, vocab);
  // Threads own column ranges and add tokens in order: no races, one fixed order.
  parallelFor(dim, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = 0; i < count; ++i) {
      float* row = dweight + int64_t(ids[i]) * dim;
      const float* g = dy + i * dim;
      for (int64_t c = begin; c < end; ++c) row[c] += g[c];
    }
  });
}

void normForward(Norm norm, float* y, float* stats, const float* x, const float* weight,
                 const float* bias, int64_t rows, int64_t cols, float eps) {
  forEachRow(rows, cols, [&](int64_t r) {
    const float* xr = x + r * cols;
    const double mean = norm == Norm::Layer
                            ? rowSum(cols, [&](int64_t j) { return double(xr[j]); }) / double(cols)
                            : 0.0;
    const float meanF = float(mean);
    const double var = rowSum(cols,
                              [&](int64_t j) {
                                const double d = double(xr[j]) - mean;
                                return d * d;
                              }) /
                       double(cols);
    const float rstd = float(1.0 / std::sqrt(var + double(eps)));
    float* yr = y + r * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const float xhat = (xr[j] - meanF) * rstd;
      const float scaled = weight ? xhat * weight[j] : xhat;
      yr[j] = bias ? scaled + bias[j] : scaled;
    }
    if (stats) {
      stats[r] = meanF;
      stats[rows + r] = rstd;
    }
  });
}

void normBackward(Norm norm, float* dx, float* dweight, float* dbias, const float* dy,
                  const float* x, const float* weight, const float* stats, int64_t rows,
                  int64_t cols) {
  const float* mean = stats;
  const float* rstd = stats + rows;
  if (dweight || dbias) {  // column sums first: dx may overwrite dy
    parallelFor(cols, [&](int64_t begin, int64_t end, int) {
      const size_t width = size_t(end - begin);
      std::vector<double> sumW(width, 0.0), sumB(width, 0.0);
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        const float* gr = dy + r * cols;
        for (int64_t j = begin; j < end; ++j) {
          sumW[size_t(j - begin)] += double(gr[j]) * double((xr[j] - mean[r]) * rstd[r]);
          sumB[size_t(j - begin)] += gr[j];
        }
      }
      for (int64_t j = begin; j < end; ++j) {
        if (dweight) dweight[j] = float(sumW[size_t(j - begin)]);
        if (dbias) dbias[j] = float(sumB[size_t(j - begin)]);
      }
    });
  }
  if (!dx) return;
  forEachRow(rows, cols, [&](int64_t r) {
    const float* xr = x + r * cols;
    const float* gr = dy + r * cols;
    const auto g = [&](int64_t j) { return weight ? gr[j] * weight[j] : gr[j]; };
    const float a =
        norm == Norm::Layer
            ? float(rowSum(cols, [&](int64_t j) { return double(g(j)); }) / double(cols))
            : 0.0f;
    const float b = float(
        rowSum(cols,
               [&](int64_t j) { return double(g(j)) * double((xr[j] - mean[r]) * rstd[r]); }) /
        double(cols));
    float* dr = dx + r * cols;
    for (int64_t j = 0; j < cols; ++j) {
      const float xhat = (xr[j] - mean[r]) * rstd[r];
      dr[j] = rstd[r] * (g(j) - a - xhat * b);
    }
  });
}

void softmaxRows(float* y, const float* x, int64_t rows, int64_t cols, const AttentionMask* mask) {
  forEachRow(rows, cols, [&](int64_t r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const RowMask keep(mask, r, cols);
    float peak = -INFINITY;
    bool any = false;
    for (int64_t j = 0; j < cols; ++j) {
      if (keep.kept(j)) {
        peak = any ? std::max(peak, xr[j]) : xr[j];
        any = true;
      }
    }
    if (!any) {  // nothing to attend to: zeros (documented), never NaN
      std::fill(yr, yr + cols, 0.0f);
      return;
    }
    double total = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const float e = keep.kept(j) ? std::exp(xr[j] - peak) : 0.0f;
      yr[j] = e;
      total += e;
    }
    const float scale = float(1.0 / total);
    for (int64_t j = 0; j < cols; ++j) yr[j] *= scale;
  });
}

void softmaxBackward(float* dx, const float* y, const float* dy, int64_t rows, int64_t cols) {
  forEachRow(rows, cols, [&](int64_t r) {
    const float* yr = y + r * cols;
    const float* gr = dy + r * cols;
    const float d = float(rowSum(cols, [&](int64_t j) { return double(yr[j]) * double(gr[j]); }));
    float* dr = dx + r * cols;
    for (int64_t j = 0; j < cols; ++j) dr[j] = yr[j] * (gr[j] - d);
  });
}

void rope(float* y, const float* x, const float* positions, const RopeShape& s, bool inverse) {
  const int64_t half = s.rotaryDim / 2;
  const int64_t tableRows = (s.positionsPerBatch ? s.batch : 1) * s.tokens;
  // cos and sin of each (position row, frequency), as Hugging Face's float32 tables.
  std::vector<float> invFreq(static_cast<size_t>(half));
  std::vector<float> cosTable(static_cast<size_t>(tableRows * half));
  std::vector<float> sinTable(static_cast<size_t>(tableRows * half));
  for (int64_t i = 0; i < half; ++i) {
    invFreq[size_t(i)] = tera::rope::inverseFrequency(s.theta, s.rotaryDim, i);
  }
  forEachRow(tableRows, half, [&](int64_t p) {
    for (int64_t i = 0; i < half; ++i) {
      tera::rope::cosSin(positions[p], invFreq[size_t(i)], &cosTable[size_t(p * half + i)],
                         &sinTable[size_t(p * half + i)]);
    }
  });
  const float sign = inverse ? -1.0f : 1.0f;
  forEachRow(s.batch * s.heads * s.tokens, s.headDim, [&](int64_t row) {
    const int64_t t = row % s.tokens, b = row / (s.heads * s.tokens);
    const int64_t p = (s.positionsPerBatch ? b * s.tokens : 0) + t;
    const float* xr = x + row * s.headDim;
    float* yr = y + row * s.headDim;
    const float* c = cosTable.data() + p * half;
    const float* sn = sinTable.data() + p * half;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = xr[i], x2 = xr[i + half], sine = sign * sn[i];
      yr[i] = x1 * c[i] - x2 * sine;
      yr[i + half] = x2 * c[i] + x1 * sine;
    }
    if (y != x) {
      std::memcpy(yr + s.rotaryDim, xr + s.rotaryDim,
                  size_t(s.headDim - s.rotaryDim) * sizeof(float));
    }
  });
}

void permute(float* y, const float* x, const int64_t* shape, const int* dims, int rank) {
  int64_t xStride[kMaxOrder], yShape[kMaxOrder], srcStride[kMaxOrder];
  int64_t size = 1;
  for (int a = rank - 1; a >= 0; --a) {
    xStride[a] = size;
    size *= shape[a];
  }
  for (int a = 0; a < rank; ++a) {
    yShape[a] = shape[dims[a]];
    srcStride[a] = xStride[dims[a]];  // x's step for one step along y's axis a
  }
  const int64_t inner = yShape[rank - 1], innerStride = srcStride[rank - 1];
  forEachRow(size / inner, inner, [&](int64_t row) {
    int64_t offset = 0, rest = row;
    for (int a = rank - 2; a >= 0; --a) {
      offset += (rest % yShape[a]) * srcStride[a];
      rest /= yShape[a];
    }
    float* yr = y + row * inner;
    const float* xr = x + offset;
    if (innerStride == 1) {
      std::memcpy(yr, xr, size_t(inner) * sizeof(float));
    } else {
      for (int64_t j = 0; j < inner; ++j) yr[j] = xr[j * innerStride];
    }
  });
}

void copyBlocks(float* dst, int64_t dstStride, const float* src, int64_t srcStride, int64_t rows,
                int64_t cols) {
  forEachRow(rows, cols, [&](int64_t r) {
    std::memcpy(dst + r * dstStride, src + r * srcStride, size_t(cols) * sizeof(float));
  });
}

}  // namespace cpu
}  // namespace tera
