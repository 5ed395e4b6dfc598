// Kernel bodies of the transformer operations, the CUDA twins of
// native/cpu/transformer_cpu.cc: embedding lookup and its scatter-add,
// LayerNorm / RMSNorm, the masked row softmax and its backward pass, rotary
// embeddings, permutes and block copies. Row kernels run one block of
// kRowThreads per row and reduce in double with a fixed tree, so results are
// deterministic; each computes its values with the same float operations as
// the CPU, in the same order where the order matters for rounding.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/backend.h"
#include "core/rope.h"
#include "cuda/elementwise_kernels.cuh"

namespace tera {
namespace cuda {

// out[i, :] = weight[ids[i], :]; i runs over count * dim elements. ids are checked first.
struct EmbeddingForwardOp {
  float* out;
  const float* weight;
  const float* ids;
  int64_t dim;
  TERA_DEV void operator()(int64_t e) const {
    const int64_t i = e / dim, c = e - i * dim;
    out[e] = weight[int64_t(ids[i]) * dim + c];
  }
};

// One thread per column adds every token's row in token order: the CPU's order,
// so both give the same bits, and no two threads touch one element.
struct EmbeddingBackwardOp {
  float* dweight;
  const float* dy;
  const float* ids;
  int64_t count, dim;
  TERA_DEV void operator()(int64_t c) const {
    for (int64_t i = 0; i < count; ++i) dweight[int64_t(ids[i]) * dim + c] += dy[i * dim + c];
  }
};

// smem[0] = sum of smem[0, threads) and smem[threads] = sum of smem[threads, 2 threads).
template <class Ctx>
TERA_DEV void blockTreeSum2(const Ctx& c, double* smem) {
  const int n = c.threads();
  for (int half = n / 2; half > 0; half /= 2) {
    if (c.tid() < half) {
      smem[c.tid()] += smem[c.tid() + half];
      smem[n + c.tid()] += smem[n + c.tid() + half];
    }
    c.sync();
  }
}

// One block per row; smem holds `threads` doubles.
template <class Ctx>
TERA_DEV void normForwardBody(const Ctx& c, Norm norm, float* y, float* stats, const float* x,
                              const float* weight, const float* bias, int64_t rows, int64_t cols,
                              float eps, double* smem) {
  for (int64_t r = c.block(); r < rows; r += c.blocks()) {
    const float* xr = x + r * cols;
    double mean = 0;
    if (norm == Norm::Layer) {
      double acc = 0;
      for (int64_t j = c.tid(); j < cols; j += c.threads()) acc += xr[j];
      smem[c.tid()] = acc;
      c.sync();
      blockTreeSum(c, smem);
      mean = smem[0] / double(cols);
      c.sync();
    }
    double acc = 0;
    for (int64_t j = c.tid(); j < cols; j += c.threads()) {
      const double d = double(xr[j]) - mean;
      acc += d * d;
    }
    smem[c.tid()] = acc;
    c.sync();
    blockTreeSum(c, smem);
    const float rstd = float(1.0 / sqrt(smem[0] / double(cols) + double(eps)));
    const float meanF = float(mean);
    float* yr = y + r * cols;
    for (int64_t j = c.tid(); j < cols; j += c.threads()) {
      const float xhat = (xr[j] - meanF) * rstd;
      const float scaled = weight ? xhat * weight[j] : xhat;
      yr[j] = bias ? scaled + bias[j] : scaled;
    }
    if (stats && c.tid() == 0) {
      stats[r] = meanF;
      stats[rows + r] = rstd;
    }
    c.sync();
  }
}

// dx of normForward, one block per row; smem holds 2 * threads doubles. dx may be dy.
template <class Ctx>
TERA_DEV void normBackwardRowBody(const Ctx& c, Norm norm, float* dx, const float* dy,
                                  const float* x, const float* weight, const float* stats,
                                  int64_t rows, int64_t cols, double* smem) {
  const int n = c.threads();
  for (int64_t r = c.block(); r < rows; r += c.blocks()) {
    const float* xr = x + r * cols;
    const float* gr = dy + r * cols;
    const float mean = stats[r], rstd = stats[rows + r];
    double sumG = 0, sumGX = 0;
    for (int64_t j = c.tid(); j < cols; j += n) {
      const float g = weight ? gr[j] * weight[j] : gr[j];
      sumG += g;
      sumGX += double(g) * double((xr[j] - mean) * rstd);
    }
    smem[c.tid()] = sumG;
    smem[n + c.tid()] = sumGX;
    c.sync();
    blockTreeSum2(c, smem);
    const float a = norm == Norm::Layer ? float(smem[0] / double(cols)) : 0.0f;
    const float b = float(smem[n] / double(cols));
    c.sync();
    float* dr = dx + r * cols;
    for (int64_t j = c.tid(); j < cols; j += n) {
      const float g = weight ? gr[j] * weight[j] : gr[j];
      const float xhat = (xr[j] - mean) * rstd;
      dr[j] = rstd * (g - a - xhat * b);
    }
  }
}

// The weight and bias sums of normBackward, pass 1: blocks of 32 columns x
// (threads / 32) lanes, grid.y chunks of rows; smem holds 2 * threads doubles.
// partial[chunk, j] and partial[chunks * cols + chunk * cols + j] receive the
// chunk's sums of dy * xhat and of dy.
template <class Ctx>
TERA_DEV void normColumnPartialBody(const Ctx& c, const float* dy, const float* x,
                                    const float* stats, int64_t rows, int64_t cols,
                                    int64_t chunkRows, double* partial, double* smem) {
  const int n = c.threads();
  const int lane = c.tid() / 32, local = c.tid() % 32, lanes = n / 32;
  const int64_t chunk = c.blockY(), chunks = c.blocksY();
  const int64_t r0 = chunk * chunkRows;
  const int64_t r1 = r0 + chunkRows < rows ? r0 + chunkRows : rows;
  for (int64_t tile = c.block(); tile * 32 < cols; tile += c.blocks()) {
    const int64_t j = tile * 32 + local;
    double sumW = 0, sumB = 0;
    if (j < cols) {
      for (int64_t r = r0 + lane; r < r1; r += lanes) {
        const float g = dy[r * cols + j];
        sumW += double(g) * double((x[r * cols + j] - stats[r]) * stats[rows + r]);
        sumB += g;
      }
    }
    smem[c.tid()] = sumW;
    smem[n + c.tid()] = sumB;
    c.sync();
    if (lane == 0 && j < cols) {
      double totalW = 0, totalB = 0;
      for (int l = 0; l < lanes; ++l) {
        totalW += smem[l * 32 + local];
        totalB += smem[n + l * 32 + local];
      }
      partial[chunk * cols + j] = totalW;
      partial[(chunks + chunk) * cols + j] = totalB;
    }
    c.sync();
  }
}

// Pass 2: dweight[j] and dbias[j] (each skipped when null) = sums over chunks.
struct NormColumnFinalOp {
  float* dweight;
  float* dbias;
  const double* partial;
  int64_t cols, chunks;
  TERA_DEV void operator()(int64_t j) const {
    double w = 0, b = 0;
    for (int64_t ch = 0; ch < chunks; ++ch) {
      w += partial[ch * cols + j];
      b += partial[(chunks + ch) * cols + j];
    }
    if (dweight) dweight[j] = float(w);
    if (dbias) dbias[j] = float(b);
  }
};

// Which keys row `row` of a masked softmax keeps (see AttentionMask).
struct RowMask {
  const float* keys = nullptr;
  int64_t limit = 0;

  TERA_DEV RowMask(const AttentionMask& mask, bool masked, int64_t row, int64_t cols)
      : limit(cols) {
    if (!masked) return;
    const int64_t i = row % mask.queryLength;
    const int64_t b = row / (mask.queryLength * mask.heads);
    if (mask.keyMask) keys = mask.keyMask + b * cols;
    if (mask.causal) {
      const int64_t last = mask.queryOffset + i + 1;
      limit = last < 0 ? 0 : last < cols ? last : cols;
    }
  }
  TERA_DEV bool kept(int64_t j) const { return j < limit && (!keys || keys[j] != 0.0f); }
};

// One block per row; smem holds 2 * threads doubles. y may be x.
template <class Ctx>
TERA_DEV void softmaxRowsBody(const Ctx& c, float* y, const float* x, int64_t rows, int64_t cols,
                              const AttentionMask& mask, bool masked, double* smem) {
  const int n = c.threads();
  for (int64_t r = c.block(); r < rows; r += c.blocks()) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const RowMask keep(mask, masked, r, cols);
    // Maximum over the kept entries (a max of floats is exact in any order) and their count.
    float peak = -INFINITY;
    double kept = 0;
    for (int64_t j = c.tid(); j < cols; j += n) {
      if (keep.kept(j)) {
        peak = kept == 0 ? xr[j] : fmaxf(peak, xr[j]);
        kept += 1;
      }
    }
    smem[c.tid()] = kept == 0 ? -INFINITY : double(peak);
    smem[n + c.tid()] = kept;
    c.sync();
    for (int half = n / 2; half > 0; half /= 2) {
      if (c.tid() < half) {
        const double other = smem[c.tid() + half];
        if (smem[n + c.tid() + half] > 0 && (smem[n + c.tid()] == 0 || other > smem[c.tid()])) {
          smem[c.tid()] = other;
        }
        smem[n + c.tid()] += smem[n + c.tid() + half];
      }
      c.sync();
    }
    peak = float(smem[0]);
    const bool any = smem[n] > 0;
    c.sync();
    if (!any) {  // nothing to attend to: zeros (documented), never NaN
      for (int64_t j = c.tid(); j < cols; j += n) yr[j] = 0.0f;
      continue;
    }
    double total = 0;
    for (int64_t j = c.tid(); j < cols; j += n) {
      const float e = keep.kept(j) ? expf(xr[j] - peak) : 0.0f;
      yr[j] = e;
      total += e;
    }
    smem[c.tid()] = total;
    c.sync();
    blockTreeSum(c, smem);
    const float scale = float(1.0 / smem[0]);
    c.sync();
    for (int64_t j = c.tid(); j < cols; j += n) yr[j] *= scale;
  }
}

// dx = y * (dy - sum_j dy_j y_j), one block per row; smem holds `threads` doubles. dx may be dy.
template <class Ctx>
TERA_DEV void softmaxBackwardBody(const Ctx& c, float* dx, const float* y, const float* dy,
                                  int64_t rows, int64_t cols, double* smem) {
  for (int64_t r = c.block(); r < rows; r += c.blocks()) {
    const float* yr = y + r * cols;
    const float* gr = dy + r * cols;
    double dot = 0;
    for (int64_t j = c.tid(); j < cols; j += c.threads()) dot += double(yr[j]) * double(gr[j]);
    smem[c.tid()] = dot;
    c.sync();
    blockTreeSum(c, smem);
    const float d = float(smem[0]);
    c.sync();
    float* dr = dx + r * cols;
    for (int64_t j = c.tid(); j < cols; j += c.threads()) dr[j] = yr[j] * (gr[j] - d);
  }
}

// cos / sin tables [positions, rotaryDim / 2] of rope, one entry per index.
struct RopeTableOp {
  float* cosTable;
  float* sinTable;
  const float* positions;
  double theta;
  int64_t rotaryDim;
  TERA_DEV void operator()(int64_t e) const {
    const int64_t half = rotaryDim / 2;
    const int64_t p = e / half, i = e - p * half;
    rope::cosSin(positions[p], rope::inverseFrequency(theta, rotaryDim, i), &cosTable[e],
                 &sinTable[e]);
  }
};

// Rotates one (x_i, x_{i + rotaryDim / 2}) pair per index; y may be x (each
// thread reads its pair before writing it).
struct RopeApplyOp {
  float* y;
  const float* x;
  const float* cosTable;
  const float* sinTable;
  int64_t heads, tokens, headDim, rotaryDim;
  bool positionsPerBatch;
  float sign;  // -1 rotates backwards
  TERA_DEV void operator()(int64_t e) const {
    const int64_t half = rotaryDim / 2;
    const int64_t row = e / half, i = e - row * half;
    const int64_t t = row % tokens, b = row / (heads * tokens);
    const int64_t p = (positionsPerBatch ? b * tokens : 0) + t;
    const float c = cosTable[p * half + i], s = sign * sinTable[p * half + i];
    const float x1 = x[row * headDim + i], x2 = x[row * headDim + i + half];
    y[row * headDim + i] = x1 * c - x2 * s;
    y[row * headDim + i + half] = x2 * c + x1 * s;
  }
};

// y[index] = x[offset]: y's multi-index walks y's shape, each step along y's
// axis a moving srcStride[a] elements in x.
struct PermuteOp {
  float* y;
  const float* x;
  int rank;
  int64_t yShape[kMaxOrder];
  int64_t srcStride[kMaxOrder];
  TERA_DEV void operator()(int64_t e) const {
    int64_t offset = 0, rest = e;
    for (int a = rank - 1; a >= 0; --a) {
      const int64_t q = rest / yShape[a];
      offset += (rest - q * yShape[a]) * srcStride[a];
      rest = q;
    }
    y[e] = x[offset];
  }
};

// dst[r * dstStride + c] = src[r * srcStride + c], one element per index.
struct CopyBlocksOp {
  float* dst;
  const float* src;
  int64_t dstStride, srcStride, cols;
  TERA_DEV void operator()(int64_t e) const {
    const int64_t r = e / cols, c = e - r * cols;
    dst[r * dstStride + c] = src[r * srcStride + c];
  }
};

}  // namespace cuda
}  // namespace tera
