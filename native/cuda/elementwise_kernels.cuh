// Kernel bodies of the elementwise operations, activations, optimiser steps,
// random fills and reductions. Each elementwise operation is a functor applied
// to every index by a grid-stride loop; each reduction is deterministic for a
// given size (fixed grid, fixed combination order), accumulating in double.
// The formulas mirror the CPU backend's operation by operation, so that the
// results agree to the last bit wherever both sides round the same way.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/backend.h"
#include "core/philox.h"
#include "cuda/kernel_common.cuh"

namespace tera {
namespace cuda {

constexpr int kReduceThreads = 256;
constexpr int kReduceMaxBlocks = 1024;
constexpr int kRowThreads = 128;  // one block per row for row reductions

template <class Op, class Ctx>
TERA_DEV void forEachBody(const Ctx& c, int64_t count, const Op& op) {
  const int64_t step = c.blocks() * c.threads();
  for (int64_t i = c.block() * c.threads() + c.tid(); i < count; i += step) op(i);
}

struct FillOp {
  float* out;
  float value;
  TERA_DEV void operator()(int64_t i) const { out[i] = value; }
};

// C = beta * C (the k = 0 case of gemm; beta = 0 overwrites).
struct ScaleOp {
  float* data;
  float beta;
  TERA_DEV void operator()(int64_t i) const { data[i] = beta == 0.0f ? 0.0f : beta * data[i]; }
};

struct AxpbyOp {
  float* y;
  const float* x;
  float a, b;
  TERA_DEV void operator()(int64_t i) const { y[i] = a * x[i] + (b == 0.0f ? 0.0f : b * y[i]); }
};

struct MultiplyOp {
  float* out;
  const float* x;
  const float* y;
  TERA_DEV void operator()(int64_t i) const { out[i] = x[i] * y[i]; }
};

struct ScaleMatrixOp {
  float* out;
  const float* x;
  const float* v;
  int64_t cols;
  bool perColumn;
  TERA_DEV void operator()(int64_t i) const { out[i] = x[i] * v[perColumn ? i % cols : i / cols]; }
};

struct AddRowVectorOp {
  float* x;
  const float* v;
  int64_t cols;
  TERA_DEV void operator()(int64_t i) const { x[i] += v[i % cols]; }
};

// GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
constexpr float kGeluTanhScale = float(M_2_SQRTPI * M_SQRT1_2);
constexpr float kGeluTanhCubic = 0.044715f;

TERA_DEV float activate(Activation activation, float x) {
  switch (activation) {
    case Activation::Relu:
      return x <= 0.0f ? 0.0f : x;  // NaN stays NaN, as in PyTorch
    case Activation::Gelu:
      return 0.5f * x * (1.0f + erff(x * float(M_SQRT1_2)));
    case Activation::Tanh:
      return tanhf(x);
    case Activation::GeluTanh:
      return 0.5f * x * (1.0f + tanhf(kGeluTanhScale * (x + kGeluTanhCubic * (x * x * x))));
    case Activation::Silu:
      return x / (1.0f + expf(-x));
  }
  return x;
}

TERA_DEV float activationDerivative(Activation activation, float x) {
  switch (activation) {
    case Activation::Relu:
      return x <= 0.0f ? 0.0f : 1.0f;  // NaN passes dy through, as PyTorch's threshold_backward
    case Activation::Gelu: {
      const float cdf = 0.5f * (1.0f + erff(x * float(M_SQRT1_2)));
      const float pdf = expf(-0.5f * x * x) * float(0.5 * M_2_SQRTPI * M_SQRT1_2);
      return cdf + x * pdf;
    }
    case Activation::Tanh: {
      const float t = tanhf(x);
      return 1.0f - t * t;
    }
    case Activation::GeluTanh: {
      const float t = tanhf(kGeluTanhScale * (x + kGeluTanhCubic * (x * x * x)));
      return 0.5f * (1.0f + t) +
             0.5f * x * (1.0f - t * t) * kGeluTanhScale * (1.0f + 3.0f * kGeluTanhCubic * x * x);
    }
    case Activation::Silu: {
      const float sigmoid = 1.0f / (1.0f + expf(-x));
      return sigmoid * (1.0f + x * (1.0f - sigmoid));
    }
  }
  return 1.0f;
}

struct ActivationForwardOp {
  Activation activation;
  float* y;
  const float* x;
  TERA_DEV void operator()(int64_t i) const { y[i] = activate(activation, x[i]); }
};

struct ActivationBackwardOp {
  Activation activation;
  float* dx;
  const float* x;
  const float* dy;
  float beta;
  TERA_DEV void operator()(int64_t i) const {
    const float g = dy[i] * activationDerivative(activation, x[i]);
    dx[i] = beta == 0.0f ? g : beta * dx[i] + g;
  }
};

struct RandomOp {
  float* out;
  uint64_t seed, stream;
  float a, b;
  bool normal;
  TERA_DEV void operator()(int64_t k) const {
    const philox::Block block = philox::elementBlock(uint64_t(k), seed, stream);
    out[k] = normal ? philox::normalFromBlock(block, a, b) : philox::uniformFromBlock(block, a, b);
  }
};

// Bias corrections come precomputed from the host exactly as the CPU computes them.
struct AdamWOp {
  float* param;
  const float* grad;
  float* m;
  float* v;
  float learningRate, beta1, beta2, epsilon, weightDecay, stepSize, rootCorrection2;
  TERA_DEV void operator()(int64_t i) const {
    const float g = grad[i];
    float p = param[i];
    p -= learningRate * weightDecay * p;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    p -= stepSize * mi / (sqrtf(vi) / rootCorrection2 + epsilon);
    param[i] = p;
  }
};

struct SgdOp {
  float* param;
  const float* grad;
  float* momentum;
  float learningRate, momentumFactor, weightDecay;
  bool nesterov;
  TERA_DEV void operator()(int64_t i) const {
    float g = grad[i] + weightDecay * param[i];
    if (momentum) {
      const float buffer = momentumFactor * momentum[i] + g;
      momentum[i] = buffer;
      g = nesterov ? g + momentumFactor * buffer : buffer;
    }
    param[i] -= learningRate * g;
  }
};

// Builds the matrices of a multi-mode product from factors: for each mode,
// dst = src * diag(scale) * multiplier ([rows, cols], as stored) or, with
// transpose, dst = src^T ([cols, rows]).
struct PrepareMatsOp {
  int count = 0;
  bool transpose = false;
  const float* src[kMaxOrder] = {};
  const float* scale[kMaxOrder] = {};
  float multiplier[kMaxOrder] = {};
  float* dst[kMaxOrder] = {};
  int64_t rows[kMaxOrder] = {}, cols[kMaxOrder] = {};
  int64_t offset[kMaxOrder + 1] = {};
  TERA_DEV void operator()(int64_t i) const {
    int n = 0;
    while (n + 1 < count && i >= offset[n + 1]) ++n;
    const int64_t local = i - offset[n];
    if (transpose) {  // dst[r, row] = src[row, r] * scale[r] * multiplier, as the CPU's ModeMatrix
      const int64_t r = local / rows[n], row = local - r * rows[n];
      const float s = scale[n] ? scale[n][r] : 1.0f;
      dst[n][local] = src[n][row * cols[n] + r] * s * multiplier[n];
    } else {
      const int64_t col = local % cols[n];
      const float s = scale[n] ? scale[n][col] : 1.0f;
      dst[n][local] = src[n][local] * s * multiplier[n];
    }
  }
};

// weights_next[a, r] = weights[a] * l[r]
struct ExpandWeightsOp {
  const double* weights;
  const float* l;
  double* out;
  int64_t R;
  TERA_DEV void operator()(int64_t i) const {
    const int64_t a = i / R, r = i - a * R;
    out[i] = weights[a] * (l ? double(l[r]) : 1.0);
  }
};

struct SumTerm {
  const float* x;
  TERA_DEV double operator()(int64_t i) const { return double(x[i]); }
};

struct DotTerm {
  const float* x;
  const float* y;
  TERA_DEV double operator()(int64_t i) const { return double(x[i]) * double(y[i]); }
};

struct DoubleTerm {
  const double* x;
  TERA_DEV double operator()(int64_t i) const { return x[i]; }
};

// In-place tree sum of smem[0, threads) (threads a power of two); result in smem[0].
template <class Ctx>
TERA_DEV void blockTreeSum(const Ctx& c, double* smem) {
  for (int half = c.threads() / 2; half > 0; half /= 2) {
    if (c.tid() < half) smem[c.tid()] += smem[c.tid() + half];
    c.sync();
  }
}

// partial[block] = sum of term(i) over the block's grid-stride share.
template <class Term, class Ctx>
TERA_DEV void reducePartialBody(const Ctx& c, int64_t count, const Term& term, double* partial,
                                double* smem) {
  double acc = 0;
  const int64_t step = c.blocks() * c.threads();
  for (int64_t i = c.block() * c.threads() + c.tid(); i < count; i += step) acc += term(i);
  smem[c.tid()] = acc;
  c.sync();
  blockTreeSum(c, smem);
  if (c.tid() == 0) partial[c.block()] = smem[0];
}

// One block: result[0] = sum of partial[0, count).
template <class Ctx>
TERA_DEV void reduceFinalBody(const Ctx& c, const double* partial, int64_t count, double* result,
                              double* smem) {
  double acc = 0;
  for (int64_t i = c.tid(); i < count; i += c.threads()) acc += partial[i];
  smem[c.tid()] = acc;
  c.sync();
  blockTreeSum(c, smem);
  if (c.tid() == 0) result[0] = smem[0];
}

// out[i] = beta * out[i] + sum_j x[i, j]; one block per row.
template <class Ctx>
TERA_DEV void rowSumBody(const Ctx& c, float* out, const float* x, int64_t rows, int64_t cols,
                         float beta, double* smem) {
  for (int64_t i = c.block(); i < rows; i += c.blocks()) {
    double acc = 0;
    for (int64_t j = c.tid(); j < cols; j += c.threads()) acc += x[i * cols + j];
    smem[c.tid()] = acc;
    c.sync();
    blockTreeSum(c, smem);
    // No barrier before the next row: only thread 0 reads slot 0, and it is the
    // thread that writes slot 0 next.
    if (c.tid() == 0) out[i] = float(smem[0] + (beta == 0.0f ? 0.0 : double(beta) * out[i]));
  }
}

// Column sums, pass 1: blocks of 32 columns x 8 lanes; grid.y chunks of rows.
// partial[chunk, j] = sum over the chunk's rows of x[i, j].
template <class Ctx>
TERA_DEV void columnPartialBody(const Ctx& c, const float* x, int64_t rows, int64_t cols,
                                int64_t chunkRows, double* partial, double* smem) {
  const int lane = c.tid() / 32, local = c.tid() % 32;
  const int lanes = c.threads() / 32;
  const int64_t chunk = c.blockY();
  const int64_t r0 = chunk * chunkRows;
  const int64_t r1 = r0 + chunkRows < rows ? r0 + chunkRows : rows;
  for (int64_t tile = c.block(); tile * 32 < cols; tile += c.blocks()) {
    const int64_t j = tile * 32 + local;
    double acc = 0;
    if (j < cols) {
      for (int64_t i = r0 + lane; i < r1; i += lanes) acc += x[i * cols + j];
    }
    smem[c.tid()] = acc;
    c.sync();
    if (lane == 0 && j < cols) {
      double total = 0;
      for (int l = 0; l < lanes; ++l) total += smem[l * 32 + local];
      partial[chunk * cols + j] = total;
    }
    c.sync();
  }
}

// Column sums, pass 2: out[j] = beta * out[j] + sum over chunks.
struct ColumnFinalOp {
  float* out;
  const double* partial;
  int64_t cols, chunks;
  float beta;
  TERA_DEV void operator()(int64_t j) const {
    double acc = 0;
    for (int64_t ch = 0; ch < chunks; ++ch) acc += partial[ch * cols + j];
    out[j] = float(acc + (beta == 0.0f ? 0.0 : double(beta) * out[j]));
  }
};

// dl[r] = float(sum over chunks of partial[chunk, r])
struct ChunkFinalOp {
  float* out;
  const double* partial;
  int64_t R, chunks;
  TERA_DEV void operator()(int64_t r) const {
    double acc = 0;
    for (int64_t ch = 0; ch < chunks; ++ch) acc += partial[ch * R + r];
    out[r] = float(acc);
  }
};

// Records the first entry that is not an integral index in [0, limit) and not `skip`.
struct IndexCheckOp {
  const float* indices;
  int64_t limit, skip;
  unsigned long long* firstBad;
  TERA_DEV void operator()(int64_t i) const {
    const float index = indices[i];
    if (skip != kNoIgnoreIndex && index == float(skip)) return;
    if (!(index >= 0.0f && index < float(limit)) || index != floorf(index)) {
      atomicMin(firstBad, (unsigned long long)i);
    }
  }
};

// 1 for a label that counts in the cross-entropy mean, 0 for an ignored one.
struct CountedTerm {
  const float* labels;
  int64_t ignoreIndex;
  TERA_DEV double operator()(int64_t i) const {
    return ignoreIndex != kNoIgnoreIndex && labels[i] == float(ignoreIndex) ? 0.0 : 1.0;
  }
};

// Per row: rowLoss[i] = logsumexp(x_i) - x_i[label]; grad (if any) =
// scale * (softmax - onehot) / counted, from float exps as the CPU computes
// them. A row whose label is ignoreIndex gets loss 0 and a zero gradient.
// smem holds `threads` doubles.
template <class Ctx>
TERA_DEV void softmaxRowBody(const Ctx& c, const float* logits, const float* labels, int64_t rows,
                             int64_t classes, int64_t ignoreIndex, double counted, float* grad,
                             float scale, double* rowLoss, double* smem) {
  for (int64_t i = c.block(); i < rows; i += c.blocks()) {
    if (ignoreIndex != kNoIgnoreIndex && labels[i] == float(ignoreIndex)) {
      if (c.tid() == 0) rowLoss[i] = 0.0;
      if (grad) {
        for (int64_t j = c.tid(); j < classes; j += c.threads()) grad[i * classes + j] = 0.0f;
      }
      continue;
    }
    const float* row = logits + i * classes;
    // Row maximum: a max of floats is exact, so any order gives the CPU's value.
    float peak = -INFINITY;
    for (int64_t j = c.tid(); j < classes; j += c.threads()) peak = fmaxf(peak, row[j]);
    smem[c.tid()] = peak;
    c.sync();
    for (int half = c.threads() / 2; half > 0; half /= 2) {
      if (c.tid() < half && smem[c.tid() + half] > smem[c.tid()]) {
        smem[c.tid()] = smem[c.tid() + half];
      }
      c.sync();
    }
    peak = float(smem[0]);
    c.sync();
    // One exp per entry (kept in grad), float32 as the CPU, summed in double.
    double total = 0;
    for (int64_t j = c.tid(); j < classes; j += c.threads()) {
      const float e = expf(row[j] - peak);
      if (grad) grad[i * classes + j] = e;
      total += e;
    }
    smem[c.tid()] = total;
    c.sync();
    blockTreeSum(c, smem);
    total = smem[0];
    const int64_t label = int64_t(labels[i]);
    if (c.tid() == 0) rowLoss[i] = double(peak) + log(total) - double(row[label]);
    if (grad) {  // scale (softmax - onehot) / counted
      const double share = double(scale) / counted;
      const float factor = float(share / total);
      float* g = grad + i * classes;
      for (int64_t j = c.tid(); j < classes; j += c.threads()) {
        g[j] = j == label ? g[j] * factor - float(share) : g[j] * factor;
      }
    }
    c.sync();
  }
}

// Whether (v, i) beats (best, bestIndex) for argmax: NaN is the largest value
// (as torch.argmax), and ties go to the lower index.
TERA_DEV bool argmaxBeats(float v, int64_t i, float best, int64_t bestIndex) {
  const bool nan = v != v, bestNan = best != best;
  if (nan != bestNan) return nan;
  if (nan || v == best) return i < bestIndex;
  return v > best;
}

// out[i] = index of the row's first maximum, NaN counting as the largest value,
// as the CPU finds it.
template <class Ctx>
TERA_DEV void argmaxRowBody(const Ctx& c, float* out, const float* x, int64_t rows, int64_t cols,
                            float* smemValue, int64_t* smemIndex) {
  const int64_t none = INT64_MAX;
  for (int64_t i = c.block(); i < rows; i += c.blocks()) {
    const float* row = x + i * cols;
    float best = 0.0f;
    int64_t bestIndex = none;
    for (int64_t j = c.tid(); j < cols; j += c.threads()) {
      const float v = row[j];
      if (bestIndex == none || argmaxBeats(v, j, best, bestIndex)) {
        best = v;
        bestIndex = j;
      }
    }
    smemValue[c.tid()] = best;
    smemIndex[c.tid()] = bestIndex;
    c.sync();
    for (int half = c.threads() / 2; half > 0; half /= 2) {
      if (c.tid() < half) {
        const float v = smemValue[c.tid() + half];
        const int64_t index = smemIndex[c.tid() + half];
        const int64_t mine = smemIndex[c.tid()];
        if (index != none && (mine == none || argmaxBeats(v, index, smemValue[c.tid()], mine))) {
          smemValue[c.tid()] = v;
          smemIndex[c.tid()] = index;
        }
      }
      c.sync();
    }
    // No barrier before the next row: only thread 0 reads slot 0, and it is the
    // thread that writes slot 0 next.
    if (c.tid() == 0) out[i] = float(smemIndex[0] == none ? 0 : smemIndex[0]);
  }
}

}  // namespace cuda
}  // namespace tera
