// The CPU backend: OpenBLAS for GEMM, our cache-blocked Tucker kernels, and
// plain loops split over the thread pool for the elementwise work. It is the
// reference the CUDA twin is tested against, and the backend CI runs.
#include <cblas.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/backend.h"
#include "core/errors.h"
#include "core/philox.h"
#include "cpu/thread_pool.h"
#include "cpu/transformer_cpu.h"
#include "cpu/tucker_cpu.h"

namespace tera {
namespace {

// Elementwise loops below this size are not worth waking the pool for.
constexpr int64_t kParallelGrain = 1 << 15;

template <typename Body>
void forEachRange(int64_t count, Body body) {
  if (count < kParallelGrain) {
    body(0, count);
    return;
  }
  const int64_t chunks = (count + kParallelGrain - 1) / kParallelGrain;
  cpu::parallelFor(chunks, [&](int64_t begin, int64_t end, int) {
    body(begin * kParallelGrain, std::min(count, end * kParallelGrain));
  });
}

// Deterministic for a given thread count; double accumulation per range.
template <typename Term>
double reduceSum(int64_t count, Term term) {
  const int64_t chunks = std::max<int64_t>(1, (count + kParallelGrain - 1) / kParallelGrain);
  std::vector<double> partial(size_t(chunks), 0.0);
  cpu::parallelFor(chunks, [&](int64_t begin, int64_t end, int) {
    for (int64_t c = begin; c < end; ++c) {
      double acc = 0;
      const int64_t stop = std::min(count, (c + 1) * kParallelGrain);
      for (int64_t i = c * kParallelGrain; i < stop; ++i) acc += term(i);
      partial[size_t(c)] = acc;
    }
  });
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

int blasDim(int64_t value, const char* what) {
  if (value > INT_MAX) {
    throw Error(std::string("gemm: ") + what + " = " + std::to_string(value) +
                " exceeds the BLAS 32-bit index limit");
  }
  return int(value);
}

// GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
constexpr float kGeluTanhScale = float(M_2_SQRTPI * M_SQRT1_2);
constexpr float kGeluTanhCubic = 0.044715f;

float activate(Activation activation, float x) {
  switch (activation) {
    case Activation::Relu:
      return x <= 0.0f ? 0.0f : x;  // NaN stays NaN, as in PyTorch
    case Activation::Gelu:
      return 0.5f * x * (1.0f + std::erf(x * float(M_SQRT1_2)));
    case Activation::Tanh:
      return std::tanh(x);
    case Activation::GeluTanh:
      return 0.5f * x * (1.0f + std::tanh(kGeluTanhScale * (x + kGeluTanhCubic * (x * x * x))));
    case Activation::Silu:
      return x / (1.0f + std::exp(-x));
  }
  return x;
}

float activationDerivative(Activation activation, float x) {
  switch (activation) {
    case Activation::Relu:
      return x <= 0.0f ? 0.0f : 1.0f;  // NaN passes dy through, as PyTorch's threshold_backward
    case Activation::Gelu: {
      const float cdf = 0.5f * (1.0f + std::erf(x * float(M_SQRT1_2)));
      const float pdf = std::exp(-0.5f * x * x) * float(0.5 * M_2_SQRTPI * M_SQRT1_2);
      return cdf + x * pdf;
    }
    case Activation::Tanh: {
      const float t = std::tanh(x);
      return 1.0f - t * t;
    }
    case Activation::GeluTanh: {
      const float t = std::tanh(kGeluTanhScale * (x + kGeluTanhCubic * (x * x * x)));
      return 0.5f * (1.0f + t) +
             0.5f * x * (1.0f - t * t) * kGeluTanhScale * (1.0f + 3.0f * kGeluTanhCubic * x * x);
    }
    case Activation::Silu: {
      const float sigmoid = 1.0f / (1.0f + std::exp(-x));
      return sigmoid * (1.0f + x * (1.0f - sigmoid));
    }
  }
  return 1.0f;
}

// The Philox maps call fma() dozens of times per element; with the FMA
// instruction it is one cycle, without it a libm call. Both round identically.
__attribute__((always_inline)) inline void fillRangeBody(float* out, int64_t begin, int64_t end,
                                                         Distribution distribution, uint64_t seed,
                                                         uint64_t stream, float a, float b) {
  for (int64_t k = begin; k < end; ++k) {
    const philox::Block block = philox::elementBlock(uint64_t(k), seed, stream);
    out[k] = distribution == Distribution::Normal ? philox::normalFromBlock(block, a, b)
                                                  : philox::uniformFromBlock(block, a, b);
  }
}

__attribute__((target("fma"))) void fillRangeFma(float* out, int64_t begin, int64_t end,
                                                 Distribution distribution, uint64_t seed,
                                                 uint64_t stream, float a, float b) {
  fillRangeBody(out, begin, end, distribution, seed, stream, a, b);
}

void fillRange(float* out, int64_t begin, int64_t end, Distribution distribution, uint64_t seed,
               uint64_t stream, float a, float b) {
  fillRangeBody(out, begin, end, distribution, seed, stream, a, b);
}

bool isIgnored(float label, int64_t ignoreIndex) {
  return ignoreIndex != kNoIgnoreIndex && label == float(ignoreIndex);
}

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::Cpu; }
  std::string name() const override { return "cpu"; }

  float* allocate(int64_t count) override {
    const size_t bytes = (size_t(std::max<int64_t>(count, 1)) * sizeof(float) + 63) / 64 * 64;
    void* data = std::aligned_alloc(64, bytes);
    if (!data) throw Error("out of host memory allocating " + std::to_string(bytes) + " bytes");
    std::memset(data, 0, bytes);
    return static_cast<float*>(data);
  }
  void release(float* data) override { std::free(data); }
  void upload(float* dst, const float* host, int64_t count) override { copy(dst, host, count); }
  void download(float* host, const float* src, int64_t count) override { copy(host, src, count); }
  void copy(float* dst, const float* src, int64_t count) override {
    std::memcpy(dst, src, size_t(count) * sizeof(float));
  }
  void synchronize() override {}

  void gemm(bool transA, bool transB, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
            const float* b, float beta, float* c) override {
    const int M = blasDim(m, "m"), N = blasDim(n, "n"), K = blasDim(k, "k");
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, a, transA ? M : K, b,
                transB ? K : N, beta, c, N);
  }

  // One OpenBLAS call per batch entry, each threaded by OpenBLAS itself.
  void gemmStridedBatched(bool transA, bool transB, int64_t m, int64_t n, int64_t k, float alpha,
                          const float* a, int64_t strideA, const float* b, int64_t strideB,
                          float beta, float* c, int64_t strideC, int64_t batch) override {
    for (int64_t i = 0; i < batch; ++i) {
      gemm(transA, transB, m, n, k, alpha, a + i * strideA, b + i * strideB, beta, c + i * strideC);
    }
  }

  void modeProduct(const int64_t* shape, int order, int mode, const float* x, const float* matrix,
                   int64_t rows, const float* scale, float* y) override {
    cpu::modeProduct(shape, order, mode, x, matrix, rows, scale, y);
  }

  void tuckerReconstruct(const TuckerShape& shape, const float* core, const float* const* factors,
                         const float* const* scales, float alpha, float* out,
                         const float* base) override {
    cpu::tuckerReconstruct(shape, core, factors, scales, alpha, out, base);
  }

  void tuckerScaleGrad(const TuckerShape& shape, float* gradX, const float* core,
                       const float* const* factors, const float* const* scales,
                       float* const* gradScales, bool overwriteGradX) override {
    cpu::tuckerScaleGrad(shape, gradX, core, factors, scales, gradScales, overwriteGradX);
  }

  void tuckerCoreGrad(int order, const int64_t* ranks, const float* z, const float* core,
                      const float* const* scales, float* const* gradScales) override {
    cpu::tuckerCoreGrad(order, ranks, z, core, scales, gradScales);
  }

  void kroneckerRows(int64_t rows, const TuckerShape& shape, const float* const* factors,
                     const float* const* scales, float alpha, bool contract, const float* x,
                     float* y) override {
    cpu::kroneckerRows(rows, shape, factors, scales, alpha, contract, x, y);
  }

  void kroneckerScale(int64_t rows, int order, const int64_t* ranks, const float* const* scales,
                      float alpha, const float* x, float* y) override {
    cpu::kroneckerScale(rows, order, ranks, scales, alpha, x, y);
  }

  void kroneckerScaleGrad(int64_t rows, int order, const int64_t* ranks, const float* a,
                          const float* b, const float* const* scales, float alpha,
                          float* const* gradScales) override {
    cpu::kroneckerScaleGrad(rows, order, ranks, a, b, scales, alpha, gradScales);
  }

  void randomFill(float* out, int64_t count, Distribution distribution, uint64_t seed,
                  uint64_t stream, float a, float b) override {
    static const bool hardwareFma = __builtin_cpu_supports("fma");
    forEachRange(count, [&](int64_t begin, int64_t end) {
      auto fill = hardwareFma ? fillRangeFma : fillRange;
      fill(out, begin, end, distribution, seed, stream, a, b);
    });
  }

  void fill(float* out, int64_t count, float value) override {
    forEachRange(count,
                 [&](int64_t begin, int64_t end) { std::fill(out + begin, out + end, value); });
  }

  void axpby(float* y, const float* x, int64_t count, float a, float b) override {
    forEachRange(count, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) y[i] = a * x[i] + (b == 0.0f ? 0.0f : b * y[i]);
    });
  }

  void multiply(float* out, const float* x, const float* y, int64_t count) override {
    forEachRange(count, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) out[i] = x[i] * y[i];
    });
  }

  void scaleMatrix(float* out, const float* x, const float* v, int64_t rows, int64_t cols,
                   bool perColumn) override {
    forEachRange(rows * cols, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) out[i] = x[i] * v[perColumn ? i % cols : i / cols];
    });
  }

  void addRowVector(float* x, const float* v, int64_t rows, int64_t cols) override {
    forEachRange(rows * cols, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) x[i] += v[i % cols];
    });
  }

  void sumAxis(float* out, const float* x, int64_t rows, int64_t cols, bool overColumns,
               float beta) override {
    if (overColumns) {
      cpu::parallelFor(rows, [&](int64_t begin, int64_t end, int) {
        for (int64_t i = begin; i < end; ++i) {
          double acc = 0;
          for (int64_t j = 0; j < cols; ++j) acc += x[i * cols + j];
          out[i] = float(acc + (beta == 0.0f ? 0.0 : double(beta) * out[i]));
        }
      });
      return;
    }
    cpu::parallelFor(cols, [&](int64_t begin, int64_t end, int) {
      std::vector<double> acc(size_t(end - begin), 0.0);
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = begin; j < end; ++j) acc[size_t(j - begin)] += x[i * cols + j];
      }
      for (int64_t j = begin; j < end; ++j) {
        out[j] = float(acc[size_t(j - begin)] + (beta == 0.0f ? 0.0 : double(beta) * out[j]));
      }
    });
  }

  void activationForward(Activation activation, float* y, const float* x, int64_t count) override {
    forEachRange(count, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) y[i] = activate(activation, x[i]);
    });
  }

  void activationBackward(Activation activation, float* dx, const float* x, const float* dy,
                          int64_t count, float beta) override {
    forEachRange(count, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float g = dy[i] * activationDerivative(activation, x[i]);
        dx[i] = beta == 0.0f ? g : beta * dx[i] + g;
      }
    });
  }

  double sum(const float* x, int64_t count) override {
    return reduceSum(count, [&](int64_t i) { return double(x[i]); });
  }

  double dot(const float* x, const float* y, int64_t count) override {
    return reduceSum(count, [&](int64_t i) { return double(x[i]) * double(y[i]); });
  }

  double softmaxCrossEntropy(const float* logits, const float* labels, int64_t rows,
                             int64_t classes, int64_t ignoreIndex, float* grad,
                             float scale) override {
    cpu::checkIndices("softmaxCrossEntropy", "label", "row", "a class index", labels, rows, classes,
                      ignoreIndex);
    int64_t counted = 0;
    for (int64_t i = 0; i < rows; ++i) counted += isIgnored(labels[i], ignoreIndex) ? 0 : 1;
    std::vector<double> rowLoss(static_cast<size_t>(rows), 0.0);
    cpu::parallelFor(rows, [&](int64_t begin, int64_t end, int) {
      for (int64_t i = begin; i < end; ++i) {
        float* g = grad ? grad + i * classes : nullptr;
        if (isIgnored(labels[i], ignoreIndex)) {
          if (g) std::fill(g, g + classes, 0.0f);
          continue;
        }
        // One exp per entry (kept in grad), float32 as torch's log_softmax, summed in double.
        const float* row = logits + i * classes;
        const float peak = *std::max_element(row, row + classes);
        double total = 0;
        for (int64_t j = 0; j < classes; ++j) {
          const float e = std::exp(row[j] - peak);
          if (g) g[j] = e;
          total += e;
        }
        const int64_t label = int64_t(labels[i]);
        rowLoss[size_t(i)] = double(peak) + std::log(total) - double(row[label]);
        if (g) {  // scale (softmax - onehot) / counted
          const double share = double(scale) / double(counted);
          const float factor = float(share / total);
          for (int64_t j = 0; j < classes; ++j) g[j] *= factor;
          g[label] -= float(share);
        }
      }
    });
    double total = 0;
    for (double l : rowLoss) total += l;
    return counted == 0 ? std::nan("") : total / double(counted);
  }

  // The first maximum of each row; NaN counts as the largest value (as torch.argmax),
  // so a row holding NaN gives the index of its first NaN wherever it sits.
  void argmaxRows(float* out, const float* x, int64_t rows, int64_t cols) override {
    cpu::parallelFor(rows, [&](int64_t begin, int64_t end, int) {
      for (int64_t i = begin; i < end; ++i) {
        const float* row = x + i * cols;
        int64_t best = 0;
        for (int64_t j = 0; j < cols; ++j) {
          if (std::isnan(row[j])) {
            best = j;
            break;
          }
          if (row[j] > row[best]) best = j;
        }
        out[i] = float(best);
      }
    });
  }

  void adamwStep(float* param, const float* grad, float* m, float* v, int64_t count,
                 const AdamWSettings& s) override {
    const double correction1 = 1.0 - std::pow(double(s.beta1), double(s.step));
    const double correction2 = 1.0 - std::pow(double(s.beta2), double(s.step));
    const float stepSize = float(double(s.learningRate) / correction1);
    const float rootCorrection2 = float(std::sqrt(correction2));
    forEachRange(count, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const float g = grad[i];
        param[i] -= s.learningRate * s.weightDecay * param[i];
        m[i] = s.beta1 * m[i] + (1.0f - s.beta1) * g;
        v[i] = s.beta2 * v[i] + (1.0f - s.beta2) * g * g;
        param[i] -= stepSize * m[i] / (std::sqrt(v[i]) / rootCorrection2 + s.epsilon);
      }
    });
  }

  void sgdStep(float* param, const float* grad, float* momentum, int64_t count,
               const SgdSettings& s) override {
    forEachRange(count, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        float g = grad[i] + s.weightDecay * param[i];
        if (momentum) {
          momentum[i] = s.momentum * momentum[i] + g;
          g = s.nesterov ? g + s.momentum * momentum[i] : momentum[i];
        }
        param[i] -= s.learningRate * g;
      }
    });
  }

  void embeddingForward(float* out, const float* weight, const float* ids, int64_t count,
                        int64_t vocab, int64_t dim) override {
    cpu::embeddingForward(out, weight, ids, count, vocab, dim);
  }
  void embeddingBackward(float* dweight, const float* dy, const float* ids, int64_t count,
                         int64_t vocab, int64_t dim) override {
    cpu::embeddingBackward(dweight, dy, ids, count, vocab, dim);
  }
  void normForward(Norm norm, float* y, float* stats, const float* x, const float* weight,
                   const float* bias, int64_t rows, int64_t cols, float eps) override {
    cpu::normForward(norm, y, stats, x, weight, bias, rows, cols, eps);
  }
  void normBackward(Norm norm, float* dx, float* dweight, float* dbias, const float* dy,
                    const float* x, const float* weight, const float* stats, int64_t rows,
                    int64_t cols) override {
    cpu::normBackward(norm, dx, dweight, dbias, dy, x, weight, stats, rows, cols);
  }
  void softmaxRows(float* y, const float* x, int64_t rows, int64_t cols,
                   const AttentionMask* mask) override {
    cpu::softmaxRows(y, x, rows, cols, mask);
  }
  void softmaxBackward(float* dx, const float* y, const float* dy, int64_t rows,
                       int64_t cols) override {
    cpu::softmaxBackward(dx, y, dy, rows, cols);
  }
  void rope(float* y, const float* x, const float* positions, const RopeShape& shape,
            bool inverse) override {
    cpu::rope(y, x, positions, shape, inverse);
  }
  void permute(float* y, const float* x, const int64_t* shape, const int* dims, int rank) override {
    cpu::permute(y, x, shape, dims, rank);
  }
  void copyBlocks(float* dst, int64_t dstStride, const float* src, int64_t srcStride, int64_t rows,
                  int64_t cols) override {
    cpu::copyBlocks(dst, dstStride, src, srcStride, rows, cols);
  }
};

}  // namespace

Backend& cpuBackend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace tera
