// Every kernel of the CUDA backend against the CPU backend (the reference) on
// random inputs, plus the GPU benchmark figures: Tucker reconstruction of a
// 4096 x 4096 update against a device-to-device copy of the same bytes, and
// SGEMM GFLOP/s. Prints one line per check and ends with "N passed, M failed";
// without a usable CUDA device it prints "SKIPPED: <reason>" and passes.
// TERA_TEST_QUICK=1 skips the benchmarks and the Tucker shapes over 2^20
// elements (for compute-sanitizer runs).
//
// Tolerances: a check passes when |gpu - cpu| <= rtol * |cpu| + atol everywhere.
//  - Exact (0, 0): memory ops, fill, axpby, multiply, scaleMatrix, addRowVector,
//    ReLU, AdamW, SGD, argmax and randomFill. Both sides perform the same IEEE
//    operations in the same order with FMA contraction off (g++
//    -ffp-contract=off, nvcc --fmad=false; sqrt and division are correctly
//    rounded on both), and Philox plus our own log/cos use only such operations.
//  - GELU and tanh: rtol 1e-5, atol 1e-6. CUDA's erff/expf/tanhf are within
//    2 ulp and glibc's within 1, so results differ by a few ulp (1 ulp = 6e-8).
//  - GEMM, mode products, reconstruction: summation orders differ (cuBLAS,
//    OpenBLAS, our blocked kernels), and the rounding of a K-term float sum is
//    bounded by about K * 2^-24 * sum|terms|; cancellation makes small entries
//    relatively inaccurate, so the absolute term follows the data's scale:
//    GEMM on [-1, 1] data rtol 1e-4, atol 1e-6 * k * (|alpha| + |beta|); mode
//    products rtol 1e-4, atol 2e-6 * K; reconstruction rtol 1e-4, atol
//    2e-6 * sqrt(N) * max|ref| (the host emulation of these kernels against a
//    double reference stays below 3e-7 * max|ref| up to order 6).
//  - Scale gradients: rtol 1e-3, atol 1e-4 * max|ref|: each dl_n sums a whole
//    projected gradient (float intermediates over up to 2^24 entries).
//  - sum, dot, loss (double accumulation of floats): rtol 1e-12 / 1e-9; sumAxis
//    (double accumulation rounded to float): rtol 2.5e-7 (one float ulp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/errors.h"
#include "core/shape.h"

using namespace tera;

namespace {

int passed = 0, failed = 0;
const bool quick = std::getenv("TERA_TEST_QUICK") != nullptr;

void report(bool ok, const std::string& name, const std::string& detail) {
  (ok ? passed : failed)++;
  std::printf("%s %s%s%s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.empty() ? "" : ": ",
              detail.c_str());
  std::fflush(stdout);
}

// Device buffer of one backend.
struct Buffer {
  Backend* backend = nullptr;
  float* data = nullptr;
  int64_t count = 0;
  Buffer(Backend& b, int64_t n) : backend(&b), data(b.allocate(n)), count(n) {}
  Buffer(Backend& b, const std::vector<float>& host) : Buffer(b, int64_t(host.size())) {
    b.upload(data, host.data(), count);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { backend->release(data); }
  std::vector<float> read() const {
    std::vector<float> host(static_cast<size_t>(count));
    backend->download(host.data(), data, count);
    return host;
  }
};

std::mt19937_64 rng(20260101);

std::vector<float> randomVector(int64_t n, float low = -1.0f, float high = 1.0f) {
  std::uniform_real_distribution<float> dist(low, high);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

double maxAbs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, double(std::fabs(x)));
  return m;
}

// Compares elementwise; NaNs must match NaNs.
void compare(const std::string& name, const std::vector<float>& ref, const std::vector<float>& got,
             double rtol, double atol) {
  if (ref.size() != got.size()) {
    report(false, name, "size mismatch");
    return;
  }
  double worst = 0;
  size_t bad = 0, firstBad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double r = ref[i], g = got[i];
    if (std::isnan(r) || std::isnan(g)) {
      if (std::isnan(r) != std::isnan(g)) {
        if (!bad++) firstBad = i;
      }
      continue;
    }
    const double err = std::fabs(r - g);
    worst = std::max(worst, err);
    if (!(err <= rtol * std::fabs(r) + atol)) {
      if (!bad++) firstBad = i;
    }
  }
  char detail[256];
  if (bad) {
    std::snprintf(detail, sizeof detail, "%zu of %zu differ, first at %zu: cpu %.9g gpu %.9g", bad,
                  ref.size(), firstBad, double(ref[firstBad]), double(got[firstBad]));
  } else {
    std::snprintf(detail, sizeof detail, "n=%zu max|err|=%.3g", ref.size(), worst);
  }
  report(bad == 0, name, detail);
}

void compareScalar(const std::string& name, double ref, double got, double rtol, double atol) {
  const double err = std::fabs(ref - got);
  const bool ok = (std::isnan(ref) && std::isnan(got)) || err <= rtol * std::fabs(ref) + atol;
  char detail[160];
  std::snprintf(detail, sizeof detail, "cpu %.17g gpu %.17g", ref, got);
  report(ok, name, detail);
}

// Runs `op` on both backends with the same inputs and compares the listed outputs.
// inputs: host vectors uploaded to both; outputs are indices into inputs that op modifies.
void both(const std::string& name, std::vector<std::vector<float>> inputs,
          const std::vector<size_t>& outputs, double rtol, double atol,
          const std::function<void(Backend&, std::vector<float*>&)>& op, Backend& cpu,
          Backend& gpu) {
  std::vector<std::vector<float>> results[2];
  Backend* backends[2] = {&cpu, &gpu};
  try {
    for (int side = 0; side < 2; ++side) {
      std::vector<Buffer*> buffers;
      std::vector<float*> pointers;
      for (auto& host : inputs) {
        buffers.push_back(new Buffer(*backends[side], host));
        pointers.push_back(buffers.back()->data);
      }
      op(*backends[side], pointers);
      for (size_t o : outputs) results[side].push_back(buffers[o]->read());
      for (Buffer* b : buffers) delete b;
    }
  } catch (const std::exception& e) {
    report(false, name, std::string("threw: ") + e.what());
    return;
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    compare(outputs.size() > 1 ? name + " [out " + std::to_string(i) + "]" : name, results[0][i],
            results[1][i], rtol, atol);
  }
}

std::string shapeName(const std::vector<int64_t>& modes, const std::vector<int64_t>& ranks) {
  std::string s = "modes " + formatShape(modes.data(), int(modes.size()));
  if (ranks != modes) s += " ranks " + formatShape(ranks.data(), int(ranks.size()));
  return s;
}

// --- Checks --------------------------------------------------------------------------

void checkMemory(Backend& gpu) {
  try {
    Buffer zero(gpu, 1000);
    const std::vector<float> z = zero.read();
    report(std::all_of(z.begin(), z.end(), [](float x) { return x == 0.0f; }),
           "allocate zero-fills", "");
    const std::vector<float> host = randomVector(12345);
    Buffer a(gpu, host), b(gpu, int64_t(host.size()));
    gpu.copy(b.data, a.data, a.count);
    compare("upload/copy/download round trip", host, b.read(), 0, 0);
  } catch (const std::exception& e) {
    report(false, "memory", e.what());
  }
  try {
    float* p = gpu.allocate(int64_t(1) << 46);
    gpu.release(p);
    report(false, "allocate 256 TiB throws", "it did not throw");
  } catch (const Error& e) {
    const std::string what = e.what();
    report(what.find("bytes") != std::string::npos, "allocate 256 TiB throws", what);
  }
}

void checkRandom(Backend& cpu, Backend& gpu) {
  for (int64_t n : {int64_t(1), int64_t(1001), int64_t(1) << 20}) {
    for (Distribution d : {Distribution::Uniform, Distribution::Normal}) {
      const bool normal = d == Distribution::Normal;
      const uint64_t seed = 0x1234567890abcdefull + uint64_t(n), stream = normal ? 7 : (1ull << 40);
      const float a = normal ? 0.5f : -2.0f, b = normal ? 2.0f : 3.0f;
      both(
          std::string("randomFill ") + (normal ? "normal" : "uniform") + " n=" + std::to_string(n),
          {std::vector<float>(static_cast<size_t>(n))}, {0}, 0, 0,
          [&](Backend& be, std::vector<float*>& p) {
            be.randomFill(p[0], n, d, seed, stream, a, b);
          },
          cpu, gpu);
    }
  }
}

void checkElementwise(Backend& cpu, Backend& gpu) {
  for (int64_t n : {int64_t(1), int64_t(1000), int64_t(100003)}) {
    const std::string sn = " n=" + std::to_string(n);
    both(
        "fill" + sn, {randomVector(n)}, {0}, 0, 0,
        [&](Backend& be, std::vector<float*>& p) { be.fill(p[0], n, -3.25f); }, cpu, gpu);
    for (float b : {0.0f, -0.75f}) {
      both(
          "axpby b=" + std::to_string(b) + sn, {randomVector(n), randomVector(n)}, {0}, 0, 0,
          [&](Backend& be, std::vector<float*>& p) { be.axpby(p[0], p[1], n, 1.5f, b); }, cpu, gpu);
    }
    both(
        "multiply" + sn,
        {std::vector<float>(static_cast<size_t>(n)), randomVector(n), randomVector(n)}, {0}, 0, 0,
        [&](Backend& be, std::vector<float*>& p) { be.multiply(p[0], p[1], p[2], n); }, cpu, gpu);
    for (Activation act : {Activation::Relu, Activation::Gelu, Activation::Tanh}) {
      const char* an = act == Activation::Relu ? "relu" : act == Activation::Gelu ? "gelu" : "tanh";
      const double rtol = act == Activation::Relu ? 0 : 1e-5,
                   atol = act == Activation::Relu ? 0 : 1e-6;
      both(
          std::string("activationForward ") + an + sn,
          {std::vector<float>(static_cast<size_t>(n)), randomVector(n, -5, 5)}, {0}, rtol, atol,
          [&](Backend& be, std::vector<float*>& p) { be.activationForward(act, p[0], p[1], n); },
          cpu, gpu);
      for (float beta : {0.0f, 0.7f}) {
        both(
            std::string("activationBackward ") + an + " beta=" + std::to_string(beta) + sn,
            {randomVector(n), randomVector(n, -5, 5), randomVector(n)}, {0}, rtol, atol,
            [&](Backend& be, std::vector<float*>& p) {
              be.activationBackward(act, p[0], p[1], p[2], n, beta);
            },
            cpu, gpu);
      }
    }
    AdamWSettings adam{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 3};
    both(
        "adamwStep" + sn,
        {randomVector(n), randomVector(n), randomVector(n), randomVector(n, 0, 1)}, {0, 2, 3}, 0, 0,
        [&](Backend& be, std::vector<float*>& p) { be.adamwStep(p[0], p[1], p[2], p[3], n, adam); },
        cpu, gpu);
    for (bool nesterov : {false, true}) {
      SgdSettings sgd{0.05f, 0.9f, 1e-4f, nesterov};
      both(
          std::string("sgdStep nesterov=") + (nesterov ? "1" : "0") + sn,
          {randomVector(n), randomVector(n), randomVector(n)}, {0, 2}, 0, 0,
          [&](Backend& be, std::vector<float*>& p) { be.sgdStep(p[0], p[1], p[2], n, sgd); }, cpu,
          gpu);
    }
    SgdSettings plain{0.1f, 0.0f, 0.0f, false};
    both(
        "sgdStep no momentum" + sn, {randomVector(n), randomVector(n)}, {0}, 0, 0,
        [&](Backend& be, std::vector<float*>& p) { be.sgdStep(p[0], p[1], nullptr, n, plain); },
        cpu, gpu);
    std::vector<float> x = randomVector(n);
    double refSum = cpu.sum(Buffer(cpu, x).data, n);
    {
      Buffer bx(cpu, x), by(cpu, randomVector(n));
      refSum = cpu.sum(bx.data, n);
      Buffer gx(gpu, x), gy(gpu, by.read());
      double l1 = 0;
      for (float v : x) l1 += std::fabs(v);
      try {
        compareScalar("sum" + sn, refSum, gpu.sum(gx.data, n), 1e-12, 1e-12 * l1);
        compareScalar("dot" + sn, cpu.dot(bx.data, by.data, n), gpu.dot(gx.data, gy.data, n), 1e-12,
                      1e-12 * l1);
      } catch (const std::exception& e) {
        report(false, "sum/dot" + sn, e.what());
      }
    }
  }
  const int64_t shapes[][2] = {{1, 1}, {3, 7}, {1000, 3}, {37, 1000}, {1500, 33}, {2, 70000}};
  for (const auto& s : shapes) {
    const int64_t rows = s[0], cols = s[1];
    const std::string sn = " " + std::to_string(rows) + "x" + std::to_string(cols);
    for (bool perColumn : {false, true}) {
      const int64_t vn = perColumn ? cols : rows;
      both(
          std::string("scaleMatrix perColumn=") + (perColumn ? "1" : "0") + sn,
          {std::vector<float>(static_cast<size_t>(rows * cols)), randomVector(rows * cols),
           randomVector(vn)},
          {0}, 0, 0,
          [&](Backend& be, std::vector<float*>& p) {
            be.scaleMatrix(p[0], p[1], p[2], rows, cols, perColumn);
          },
          cpu, gpu);
    }
    both(
        "addRowVector" + sn, {randomVector(rows * cols), randomVector(cols)}, {0}, 0, 0,
        [&](Backend& be, std::vector<float*>& p) { be.addRowVector(p[0], p[1], rows, cols); }, cpu,
        gpu);
    for (bool overColumns : {false, true}) {
      for (float beta : {0.0f, 0.5f}) {
        const int64_t on = overColumns ? rows : cols;
        both(
            std::string("sumAxis overColumns=") + (overColumns ? "1" : "0") +
                " beta=" + std::to_string(beta) + sn,
            {randomVector(on), randomVector(rows * cols)}, {0}, 2.5e-7, 1e-6,
            [&](Backend& be, std::vector<float*>& p) {
              be.sumAxis(p[0], p[1], rows, cols, overColumns, beta);
            },
            cpu, gpu);
      }
    }
    // Integers in [-3, 3] make ties common; one row gets NaNs.
    std::vector<float> values = randomVector(rows * cols, -3.49f, 3.49f);
    for (float& v : values) v = std::round(v);
    if (rows >= 3 && cols >= 3) {
      values[size_t(cols)] = NAN;          // leading NaN in row 1
      values[size_t(2 * cols + 1)] = NAN;  // NaN inside row 2
    }
    both(
        "argmaxRows" + sn, {std::vector<float>(static_cast<size_t>(rows)), values}, {0}, 0, 0,
        [&](Backend& be, std::vector<float*>& p) { be.argmaxRows(p[0], p[1], rows, cols); }, cpu,
        gpu);
  }
}

void checkSoftmax(Backend& cpu, Backend& gpu) {
  const int64_t shapes[][2] = {{1, 1}, {5, 3}, {64, 10}, {7, 3000}, {300, 2}};
  for (const auto& s : shapes) {
    const int64_t rows = s[0], classes = s[1];
    std::vector<float> logits = randomVector(rows * classes, -8, 8);
    std::vector<float> labels(static_cast<size_t>(rows));
    for (auto& l : labels) l = float(std::uniform_int_distribution<int64_t>(0, classes - 1)(rng));
    const std::string sn = " " + std::to_string(rows) + "x" + std::to_string(classes);
    for (bool withGrad : {false, true}) {
      double loss[2] = {0, 0};
      std::vector<float> grads[2];
      Backend* backends[2] = {&cpu, &gpu};
      try {
        for (int side = 0; side < 2; ++side) {
          Buffer bl(*backends[side], logits), bt(*backends[side], labels);
          Buffer bg(*backends[side], rows * classes);
          loss[side] = backends[side]->softmaxCrossEntropy(bl.data, bt.data, rows, classes,
                                                           withGrad ? bg.data : nullptr, 0.75f);
          grads[side] = bg.read();
        }
      } catch (const std::exception& e) {
        report(false, "softmaxCrossEntropy" + sn, e.what());
        continue;
      }
      compareScalar(std::string("softmaxCrossEntropy loss") + (withGrad ? " +grad" : "") + sn,
                    loss[0], loss[1], 1e-9, 1e-12);
      if (withGrad) compare("softmaxCrossEntropy grad" + sn, grads[0], grads[1], 1e-6, 1e-8);
    }
  }
  // An invalid label must be reported, as on the CPU.
  std::vector<float> logits = randomVector(12), labels = {0, 2, 5, 1};
  std::string messages[2];
  Backend* backends[2] = {&cpu, &gpu};
  for (int side = 0; side < 2; ++side) {
    Buffer bl(*backends[side], logits), bt(*backends[side], labels);
    try {
      backends[side]->softmaxCrossEntropy(bl.data, bt.data, 4, 3, nullptr, 1.0f);
    } catch (const Error& e) {
      messages[side] = e.what();
    }
  }
  report(!messages[1].empty() && messages[0] == messages[1], "softmaxCrossEntropy bad label",
         messages[1]);
}

void checkGemm(Backend& cpu, Backend& gpu) {
  const int64_t shapes[][3] = {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {128, 96, 200}, {5, 9, 0}};
  const float coefficients[][2] = {{1.0f, 0.0f}, {0.5f, -1.5f}, {2.0f, 1.0f}};
  for (const auto& s : shapes) {
    const int64_t m = s[0], n = s[1], k = s[2];
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      for (const auto& ab : coefficients) {
        const float alpha = ab[0], beta = ab[1];
        char name[128];
        std::snprintf(name, sizeof name, "gemm m=%lld n=%lld k=%lld %c%c alpha=%g beta=%g",
                      (long long)m, (long long)n, (long long)k, ta ? 'T' : 'N', tb ? 'T' : 'N',
                      alpha, beta);
        both(
            name, {randomVector(m * k), randomVector(k * n), randomVector(m * n)}, {2}, 1e-4,
            1e-6 * double(std::max<int64_t>(k, 1)) * (std::fabs(alpha) + std::fabs(beta)),
            [&](Backend& be, std::vector<float*>& p) {
              be.gemm(ta, tb, m, n, k, alpha, p[0], p[1], beta, p[2]);
            },
            cpu, gpu);
      }
    }
  }
}

void checkModeProduct(Backend& cpu, Backend& gpu) {
  const std::vector<std::vector<int64_t>> shapes = {
      {7}, {4, 6}, {3, 5, 2}, {2, 3, 4, 5}, {16, 16, 16}};
  for (const auto& shape : shapes) {
    const int order = int(shape.size());
    int64_t total = 1;
    for (int64_t d : shape) total *= d;
    for (int mode = 0; mode < order; ++mode) {
      for (bool scaled : {false, true}) {
        const int64_t rows = shape[size_t(mode)] + 3, K = shape[size_t(mode)];
        const int64_t outTotal = total / K * rows;
        std::vector<float> x = randomVector(total), matrix = randomVector(rows * K);
        both(
            "modeProduct " + formatShape(shape.data(), order) + " mode " + std::to_string(mode) +
                " rows " + std::to_string(rows) + (scaled ? " scaled" : ""),
            {x, matrix, randomVector(K), std::vector<float>(static_cast<size_t>(outTotal))}, {3},
            1e-4, 2e-6 * double(K),
            [&](Backend& be, std::vector<float*>& p) {
              be.modeProduct(shape.data(), order, mode, p[0], p[1], rows, scaled ? p[2] : nullptr,
                             p[3]);
            },
            cpu, gpu);
      }
    }
  }
}

struct TuckerCase {
  std::vector<int64_t> modes, ranks;
};

const std::vector<TuckerCase>& tuckerCases() {
  // The path each takes for reconstruction is noted (the scale gradient's
  // projection runs the other way, modes -> ranks, and may take the other).
  static const std::vector<TuckerCase> cases = {
      {{5}, {3}},  // order 1: GEMM
      {{16}, {16}},
      {{4, 6}, {3, 6}},  // fused, pass B only mode 0
      {{16, 16}, {16, 16}},
      {{3, 4}, {5, 4}},  // R > I
      {{3, 5, 7}, {2, 5, 4}},
      {{8, 8, 12}, {8, 8, 12}},
      {{10, 10, 10, 10}, {4, 10, 7, 10}},
      {{16, 16, 16, 16}, {16, 16, 16, 16}},
      {{6, 7, 5, 4, 3}, {6, 3, 5, 2, 3}},
      {{20, 16, 16, 16, 16}, {20, 16, 16, 16, 16}},  // 32-wide first output mode
      {{8, 8, 8, 8, 8, 8}, {8, 8, 8, 8, 8, 8}},
      {{5, 4, 6, 3, 7, 2}, {2, 4, 3, 3, 5, 2}},
      {{16, 16, 16, 16, 16, 16}, {16, 16, 16, 16, 16, 16}},  // the benchmark shape
      {{2, 3, 2, 3, 2, 3, 2}, {2, 2, 2, 3, 1, 3, 2}},
      {{8, 8, 8, 8, 8, 8, 8, 8}, {8, 8, 8, 8, 8, 8, 8, 8}},  // the other benchmark shape
      {{40, 3}, {40, 3}},              // first output mode wider than 32: GEMM chain
      {{37, 2, 3}, {5, 2, 3}},         // GEMM chain
      {{3, 3, 40, 3}, {3, 3, 33, 2}},  // wide inner modes, fused
      {{2, 128, 2}, {2, 128, 2}},
      {{20, 12, 12, 30, 30}, {20, 12, 12, 30, 30}},                // pass B on 4-column groups
      {{16, 16, 43, 16, 16, 16}, {16, 16, 43, 16, 16, 16}},        // 11008 x 4096: 2-column groups
      {{16, 16, 16, 16, 16, 43}, {16, 16, 16, 16, 16, 43}},        // 4096 x 11008: GEMM chain
      {{16, 16, 16, 16, 16, 16, 4}, {16, 16, 16, 16, 16, 16, 4}},  // GEMM chain
      {{128, 784}, {128, 784}},                    // order 2 at full rank (MNIST's layer)
      {{64, 64, 64, 64}, {16, 16, 16, 16}},        // 64-wide modes, ranks 16
      {{32, 128, 32, 128}, {16, 16, 16, 16}},      // 128-wide modes
      {{16, 16, 16, 16, 16, 16}, {4, 4, 4, 4, 4, 4}},  // maxRank 4
  };
  return cases;
}

void checkTucker(Backend& cpu, Backend& gpu) {
  for (const TuckerCase& tc : tuckerCases()) {
    const TuckerShape shape = TuckerShape::make(tc.modes, tc.ranks);
    if (quick && shape.fullSize() > (int64_t(1) << 20)) continue;
    const int N = shape.order;
    const int64_t coreSize = shape.coreSize(), fullSize = shape.fullSize();
    std::vector<std::vector<float>> inputs;
    inputs.push_back(randomVector(coreSize));  // 0: core
    for (int n = 0; n < N; ++n) inputs.push_back(randomVector(shape.modes[n] * shape.ranks[n]));
    for (int n = 0; n < N; ++n) inputs.push_back(randomVector(shape.ranks[n], 0.5f, 1.5f));
    inputs.push_back(std::vector<float>(static_cast<size_t>(fullSize)));  // 1 + 2N: out
    inputs.push_back(randomVector(fullSize));                             // 2 + 2N: base
    const size_t outIndex = size_t(1 + 2 * N), baseIndex = outIndex + 1;
    const std::string name = shapeName(tc.modes, tc.ranks);
    // With scales and alpha; without scales; with scales, alpha and a base (W0 + alpha dW).
    for (int variant = 0; variant < 3; ++variant) {
      std::vector<float> outs[2];
      Backend* backends[2] = {&cpu, &gpu};
      try {
        for (int side = 0; side < 2; ++side) {
          std::vector<Buffer*> bufs;
          for (auto& h : inputs) bufs.push_back(new Buffer(*backends[side], h));
          const float* factors[kMaxOrder];
          const float* scales[kMaxOrder];
          for (int n = 0; n < N; ++n) {
            factors[n] = bufs[size_t(1 + n)]->data;
            scales[n] = variant != 1 && n != 1 ? bufs[size_t(1 + N + n)]->data : nullptr;
          }
          backends[side]->tuckerReconstruct(shape, bufs[0]->data, factors, scales,
                                            variant != 1 ? 0.625f : 1.0f, bufs[outIndex]->data,
                                            variant == 2 ? bufs[baseIndex]->data : nullptr);
          outs[side] = bufs[outIndex]->read();
          for (Buffer* b : bufs) delete b;
        }
      } catch (const std::exception& e) {
        report(false, "tuckerReconstruct " + name, e.what());
        continue;
      }
      const char* what[3] = {" (scales, alpha)", "", " (scales, alpha, base)"};
      compare("tuckerReconstruct " + name + what[variant], outs[0], outs[1], 1e-4,
              2e-6 * maxAbs(outs[0]) * std::sqrt(double(N)));
    }
    // Scale gradient, with and without overwriting gradX.
    const std::vector<float> gradX = randomVector(fullSize);
    for (bool overwrite : {false, true}) {
      std::vector<float> grads[2];
      Backend* backends[2] = {&cpu, &gpu};
      try {
        for (int side = 0; side < 2; ++side) {
          std::vector<Buffer*> bufs;
          for (size_t i = 0; i < outIndex; ++i) {
            bufs.push_back(new Buffer(*backends[side], inputs[i]));
          }
          Buffer g(*backends[side], gradX);
          const float* factors[kMaxOrder];
          const float* scales[kMaxOrder];
          float* gradScales[kMaxOrder];
          std::vector<Buffer*> outBufs;
          for (int n = 0; n < N; ++n) {
            factors[n] = bufs[size_t(1 + n)]->data;
            scales[n] = n != 1 ? bufs[size_t(1 + N + n)]->data : nullptr;
            outBufs.push_back(new Buffer(*backends[side], shape.ranks[n]));
            gradScales[n] = outBufs.back()->data;
          }
          backends[side]->tuckerScaleGrad(shape, g.data, bufs[0]->data, factors, scales, gradScales,
                                          overwrite);
          for (Buffer* b : outBufs) {
            const std::vector<float> v = b->read();
            grads[side].insert(grads[side].end(), v.begin(), v.end());
            delete b;
          }
          for (Buffer* b : bufs) delete b;
        }
      } catch (const std::exception& e) {
        report(false, "tuckerScaleGrad " + name, e.what());
        continue;
      }
      compare("tuckerScaleGrad " + name + (overwrite ? " (overwrite gradX)" : ""), grads[0],
              grads[1], 1e-3, 1e-4 * maxAbs(grads[0]));
    }
  }
}

// The factored path's kernels and tuckerCoreGrad, on full and reduced ranks, with
// `rows` rows of projected activations (tolerances as the Tucker kernels').
void checkFactored(Backend& cpu, Backend& gpu) {
  const std::vector<TuckerCase> cases = {
      {{16, 16, 16}, {16, 16, 16}}, {{16, 16, 16}, {4, 4, 4}}, {{7, 8, 14}, {7, 8, 14}},
      {{16, 16, 43}, {16, 16, 16}}, {{784}, {784}},           {{5, 3}, {2, 3}},
  };
  for (const TuckerCase& tc : cases) {
    const TuckerShape shape = TuckerShape::make(tc.modes, tc.ranks);
    const int N = shape.order;
    const std::string name = shapeName(tc.modes, tc.ranks);
    const int64_t rows = 37, full = shape.fullSize(), core = shape.coreSize();
    // inputs: factors [0, N), scales [N, 2N), then the kernel's own.
    std::vector<std::vector<float>> base;
    for (int n = 0; n < N; ++n) base.push_back(randomVector(shape.modes[n] * shape.ranks[n]));
    for (int n = 0; n < N; ++n) base.push_back(randomVector(shape.ranks[n], 0.5f, 1.5f));
    auto operands = [&](std::vector<float*>& p, const float** factors, const float** scales) {
      for (int n = 0; n < N; ++n) {
        factors[n] = p[size_t(n)];
        scales[n] = p[size_t(N + n)];
      }
    };
    for (bool contract : {false, true}) {
      std::vector<std::vector<float>> in = base;
      in.push_back(randomVector(rows * (contract ? full : core)));
      in.push_back(std::vector<float>(size_t(rows * (contract ? core : full))));
      const size_t x = size_t(2 * N), y = x + 1;
      both("kroneckerRows " + name + (contract ? " contract" : " expand"), in, {y}, 1e-4,
           2e-6 * double(contract ? full : core),
           [&](Backend& b, std::vector<float*>& p) {
             const float* factors[kMaxOrder];
             const float* scales[kMaxOrder];
             operands(p, factors, scales);
             b.kroneckerRows(rows, shape, factors, scales, -0.75f, contract, p[x], p[y]);
           },
           cpu, gpu);
    }
    {
      std::vector<std::vector<float>> in = base;
      in.push_back(randomVector(rows * core));
      in.push_back(std::vector<float>(size_t(rows * core)));
      const size_t x = size_t(2 * N), y = x + 1;
      // The same float operations on both sides: lambda in double, rounded once.
      both("kroneckerScale " + name, in, {y}, 0, 0,
           [&](Backend& b, std::vector<float*>& p) {
             const float* factors[kMaxOrder];
             const float* scales[kMaxOrder];
             operands(p, factors, scales);
             b.kroneckerScale(rows, N, shape.ranks, scales, 1.25f, p[x], p[y]);
           },
           cpu, gpu);
    }
    {
      std::vector<std::vector<float>> in = base;
      in.push_back(randomVector(rows * core));
      in.push_back(randomVector(rows * core));
      for (int n = 0; n < N; ++n) in.push_back(std::vector<float>(size_t(shape.ranks[n])));
      const size_t a = size_t(2 * N), c = a + 1;
      std::vector<size_t> outs;
      for (int n = 0; n < N; ++n) outs.push_back(c + 1 + size_t(n));
      // Identical column sums in double on both sides; the peeling's order of double sums
      // differs, so results may differ in the last float bit.
      both("kroneckerScaleGrad " + name, in, outs, 1e-6, 1e-10 * double(rows * core),
           [&](Backend& b, std::vector<float*>& p) {
             const float* factors[kMaxOrder];
             const float* scales[kMaxOrder];
             float* grads[kMaxOrder];
             operands(p, factors, scales);
             for (int n = 0; n < N; ++n) grads[n] = p[c + 1 + size_t(n)];
             b.kroneckerScaleGrad(rows, N, shape.ranks, p[a], p[c], scales, 0.5f, grads);
           },
           cpu, gpu);
    }
    {
      std::vector<std::vector<float>> in = base;
      in.push_back(randomVector(core));  // z
      in.push_back(randomVector(core));  // G
      for (int n = 0; n < N; ++n) in.push_back(std::vector<float>(size_t(shape.ranks[n])));
      const size_t z = size_t(2 * N), g = z + 1;
      std::vector<size_t> outs;
      for (int n = 0; n < N; ++n) outs.push_back(g + 1 + size_t(n));
      // H = z * G rounds the same on both sides; only the double sums' order differs.
      both("tuckerCoreGrad " + name, in, outs, 1e-6, 1e-10 * double(core),
           [&](Backend& b, std::vector<float*>& p) {
             const float* factors[kMaxOrder];
             const float* scales[kMaxOrder];
             float* grads[kMaxOrder];
             operands(p, factors, scales);
             for (int n = 0; n < N; ++n) grads[n] = p[g + 1 + size_t(n)];
             b.tuckerCoreGrad(N, shape.ranks, p[z], p[g], scales, grads);
           },
           cpu, gpu);
    }
  }
}

// --- Benchmarks ------------------------------------------------------------------------

double timeIt(Backend& gpu, int repeats, const std::function<void()>& body) {
  body();  // warm-up (plans, scratch allocation)
  body();
  gpu.synchronize();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) body();
  gpu.synchronize();
  const auto stop = std::chrono::steady_clock::now();
  return std::chrono::duration<double>(stop - start).count() / repeats;
}

void benchmark(Backend& gpu) {
  try {
    const std::vector<std::vector<int64_t>> benchModes = {{16, 16, 16, 16, 16, 16},
                                                          {8, 8, 8, 8, 8, 8, 8, 8},
                                                          {16, 16, 43, 16, 16, 16},  // 11008 x 4096
                                                          {16, 16, 16, 16, 16, 43}};
    for (const auto& modes : benchModes) {
      const TuckerShape shape = TuckerShape::make(modes, modes);
      const int N = shape.order;
      const int64_t size = shape.fullSize();
      Buffer core(gpu, size), out(gpu, size), copyDst(gpu, size);
      gpu.randomFill(core.data, size, Distribution::Normal, 1, 0, 0.0f, 1.0f);
      std::vector<Buffer*> factors;
      const float* fp[kMaxOrder];
      const float* sp[kMaxOrder];
      for (int n = 0; n < N; ++n) {
        factors.push_back(new Buffer(gpu, shape.modes[n] * shape.ranks[n]));
        gpu.randomFill(factors.back()->data, factors.back()->count, Distribution::Normal, 2,
                       uint64_t(n), 0.0f, 0.25f);
        fp[n] = factors.back()->data;
        sp[n] = nullptr;
      }
      const double tucker =
          timeIt(gpu, 50,
             [&] { gpu.tuckerReconstruct(shape, core.data, fp, sp, 1.0f, out.data, nullptr); });
      const double copy = timeIt(gpu, 50, [&] { gpu.copy(copyDst.data, core.data, size); });
      float* gradScales[kMaxOrder];
      std::vector<Buffer*> grads;
      for (int n = 0; n < N; ++n) {
        grads.push_back(new Buffer(gpu, shape.ranks[n]));
        gradScales[n] = grads.back()->data;
      }
      const double grad = timeIt(gpu, 20, [&] {
        gpu.tuckerScaleGrad(shape, out.data, core.data, fp, sp, gradScales, false);
      });
      const double bytes = 2.0 * double(size) * sizeof(float);
      std::printf(
          "BENCH tuckerReconstruct modes %s: %.1f us; device-to-device copy of the same "
          "bytes %.1f us (%.0f GB/s); ratio %.2f (target <= 2); %.0f GFLOP/s; tuckerScaleGrad "
          "%.1f us\n",
          formatShape(modes.data(), N).c_str(), tucker * 1e6, copy * 1e6, bytes / copy / 1e9,
          tucker / copy, 2.0 * shape.reconstructMultiplyAdds() / tucker / 1e9, grad * 1e6);
      for (Buffer* b : factors) delete b;
      for (Buffer* b : grads) delete b;
    }
    const int64_t n = 4096;
    Buffer a(gpu, n * n), b(gpu, n * n), c(gpu, n * n);
    gpu.randomFill(a.data, n * n, Distribution::Uniform, 3, 0, -1.0f, 1.0f);
    gpu.randomFill(b.data, n * n, Distribution::Uniform, 4, 0, -1.0f, 1.0f);
    for (int t = 0; t < 2; ++t) {
      const double seconds = timeIt(
          gpu, 10, [&] { gpu.gemm(false, t == 1, n, n, n, 1.0f, a.data, b.data, 0.0f, c.data); });
      std::printf("BENCH sgemm 4096^3 %s: %.3f ms, %.0f GFLOP/s\n", t ? "NT" : "NN", seconds * 1e3,
                  2.0 * double(n) * n * n / seconds / 1e9);
    }
  } catch (const std::exception& e) {
    report(false, "benchmark", e.what());
  }
  std::fflush(stdout);
}

}  // namespace

int main() {
  std::string reason;
  Backend* gpu = cudaBackend(&reason);
  if (!gpu) {
    std::printf("SKIPPED: %s\n", reason.c_str());
    std::printf("0 passed, 0 failed\n");
    return 0;
  }
  const CudaStatus status = cudaStatus();
  std::printf(
      "CUDA device: %s (compute capability %d.%d, %.1f GiB), driver %d, runtime %d, "
      "archs %s, cuBLAS %s\n",
      status.deviceName.c_str(), status.computeCapability / 10, status.computeCapability % 10,
      double(status.totalMemory) / (1 << 30), status.driverVersion, status.runtimeVersion,
      status.archs.c_str(), status.cublasLibrary.c_str());
  Backend& cpu = cpuBackend();
  checkMemory(*gpu);
  checkRandom(cpu, *gpu);
  checkElementwise(cpu, *gpu);
  checkSoftmax(cpu, *gpu);
  checkGemm(cpu, *gpu);
  checkModeProduct(cpu, *gpu);
  checkTucker(cpu, *gpu);
  checkFactored(cpu, *gpu);
  if (!quick) benchmark(*gpu);
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
