// Every kernel of the CUDA backend against the CPU backend (the reference) on
// random inputs. The same checks are built twice:
//  - tera_native_tests runs them on a GPU: the full size lists (past 2^31
//    elements where device and host memory allow, more than 65,535 GEMM
//    batches, reductions past the fixed grid, ranks above 256), the walk over
//    every fused Tucker plan under shared-memory caps, the grid-stride loops
//    on grids capped at 2 blocks, and the GPU benchmarks;
//  - tera_emulation_asan and tera_emulation_tsan run them on the host emulation
//    of the CUDA backend (native/tests/emulation) under AddressSanitizer and
//    ThreadSanitizer, on sizes an emulated block gets through quickly, with
//    the same walk and grid-stride checks. cuBLAS is emulated by OpenBLAS
//    there, so its GEMM checks compare OpenBLAS with itself except where our
//    own kernels run (k = 0, the mode products' matrix preparation).
// Prints one line per check (PASS, FAIL, or NOTRUN when memory is short) and
// ends with "N passed, M failed". Exit status: 0 when every check passed, 1
// when one failed, 2 on bad arguments, 77 without a usable CUDA device (it
// prints "SKIPPED: <reason>" and runs nothing).
//
// Options:
//   --probe       print the device and exit (0), or SKIPPED (77)
//   --sanitizer   for compute-sanitizer runs: small sizes, no deliberate error
//                 (the huge allocation), no benchmarks
//   --only GROUP  run one group of checks (see kGroups)
//   --barriers    (emulation) list every __syncthreads site reached
//
// Tolerances: a check passes when |gpu - cpu| <= rtol * |cpu| + atol everywhere.
//  - Exact (0, 0): memory ops, fill, axpby, multiply, scaleMatrix, addRowVector,
//    ReLU, AdamW, SGD, argmax and randomFill. Both sides perform the same IEEE
//    operations in the same order with FMA contraction off (g++
//    -ffp-contract=off, nvcc --fmad=false; sqrt and division are correctly
//    rounded on both), and Philox plus our own log/cos use only such operations.
//  - GELU (both forms), tanh and SiLU: rtol 1e-5, atol 1e-6. CUDA's
//    erff/expf/tanhf are within 2 ulp and glibc's within 1, so results differ
//    by a few ulp (1 ulp = 6e-8). The same holds for the softmax rows and
//    their backward pass (expf, double sums in another order): rtol 1e-5,
//    atol 1e-7.
//  - Exact as well: embedding lookup and its scatter-add (both add tokens in
//    token order), permute and block copies. LayerNorm / RMSNorm and RoPE use
//    the same float operations on both sides, from double sums (norms) or
//    double cos / sin rounded once (RoPE): rtol 1e-6, atol 1e-6 allows for a
//    statistic that rounds the other way.
//  - Strided-batched GEMM as GEMM; attention (GEMMs around a softmax) rtol
//    1e-4, atol 1e-5.
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
//  - sum, dot (double accumulation of floats): rtol 1e-12; sumAxis (double
//    accumulation rounded to float): rtol 2.5e-7 (one float ulp).
//  - Cross-entropy: float exps (a few ulp apart) summed in double; the loss
//    rtol 1e-6, atol 1e-6, the gradient rtol 1e-5, atol 2e-7 (the label's
//    entry p - 1 cancels).
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/attention.h"
#include "core/backend.h"
#include "core/errors.h"
#include "core/shape.h"
#include "cuda/test_hooks.h"
#include "cuda/tucker_plan.h"
#ifdef TERA_HOST_EMULATION
#include "tests/emulation/device_runtime.h"
#endif

using namespace tera;

namespace {

#ifdef TERA_HOST_EMULATION
constexpr bool kEmulated = true;
#else
constexpr bool kEmulated = false;
#endif
#ifdef __SANITIZE_THREAD__
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif

const char* const kGroups[] = {"memory",   "random",      "elementwise", "matrix", "softmax",
                               "gemm",     "modeProduct", "tucker",      "plans",  "transformer",
                               "factored", "grid",        "large",       "bench"};

struct Options {
  bool probe = false, sanitizer = false, barriers = false;
  std::string only;
  bool runs(const char* group) const { return only.empty() || only == group; }
};

int passed = 0, failed = 0;

using Shape2 = std::array<int64_t, 2>;
using Shape3 = std::array<int64_t, 3>;

// The sizes each kind of run checks: a GPU gets through large ones in
// milliseconds, an emulated block runs one fiber per CUDA thread.
struct Sizes {
  std::vector<int64_t> randomCounts, elementwiseCounts;
  std::vector<Shape2> matrixShapes, softmaxShapes;
  std::vector<Shape3> gemmShapes;
  std::vector<std::vector<int64_t>> modeProductShapes;
  std::vector<Shape2> normShapes;       // rows x cols
  std::vector<Shape3> embeddingShapes;  // count, vocab, dim
  double transformerCaseLimit;  // masked softmax, attention and RoPE cases with more elements are
                                // left out
  double tuckerCostLimit;       // fixed Tucker cases costing more are left out (see planCost)
  double planBudget;            // the plan walk's cases beyond those that reach a new plan
  int planCases;                // at most this many cases in the walk
  // The factored path's kernels: (modes, ranks) of one side of a layer, and rows of activations.
  std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> factoredCases;
  int64_t factoredRows;
};

Sizes makeSizes(const Options& options) {
  Sizes s;
  if (kEmulated && kThreadSanitizer) {  // a fiber switch costs ~30 us under ThreadSanitizer
    s.randomCounts = {1, 1001};
    s.elementwiseCounts = {1, 1000};
    s.matrixShapes = {{1, 1}, {3, 7}, {40, 3}, {9, 300}};
    s.softmaxShapes = {{1, 1}, {5, 3}, {20, 10}, {2, 300}};
    s.gemmShapes = {{1, 1, 1}, {7, 5, 3}, {5, 9, 0}};
    s.modeProductShapes = {{7}, {4, 6}, {3, 5, 2}};
    s.normShapes = {{1, 1}, {3, 7}, {4, 300}};
    s.embeddingShapes = {{1, 1, 1}, {7, 5, 3}, {40, 6, 300}};
    s.transformerCaseLimit = 4000;
    s.tuckerCostLimit = 1e4;
    s.planBudget = 1e5;
    s.planCases = 120;
    s.factoredCases = {{{4, 4, 4}, {2, 3, 4}}, {{5, 3}, {2, 3}}, {{43}, {16}}};
    s.factoredRows = 5;
  } else if (kEmulated) {
    s.randomCounts = {1, 1001, 5000};
    s.elementwiseCounts = {1, 1000, 3001};
    s.matrixShapes = {{1, 1}, {3, 7}, {40, 3}, {9, 300}, {600, 5}, {2, 3000}};  // 600: 2 chunks
    s.softmaxShapes = {{1, 1}, {5, 3}, {20, 10}, {3, 700}, {40, 2}};
    s.gemmShapes = {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {5, 9, 0}};
    s.modeProductShapes = {{7}, {4, 6}, {3, 5, 2}, {2, 3, 4, 5}};
    s.normShapes = {{1, 1}, {3, 7}, {6, 300}, {520, 33}};  // 520 rows: 2 chunks of weight sums
    s.embeddingShapes = {{1, 1, 1}, {7, 5, 3}, {300, 50, 65}, {40, 6, 300}};
    s.transformerCaseLimit = 1e5;
    s.tuckerCostLimit = 1e6;
    s.planBudget = 1e7;
    s.planCases = 300;
    s.factoredCases = {{{8, 8, 8}, {8, 8, 8}},
                       {{8, 8, 8}, {4, 4, 4}},
                       {{7, 8, 14}, {7, 8, 14}},
                       {{5, 3}, {2, 3}},
                       {{128}, {128}}};
    s.factoredRows = 13;
  } else if (options.sanitizer) {
    s.randomCounts = {1, 1001, int64_t(1) << 16};
    s.elementwiseCounts = {1, 1000, 100003};
    s.matrixShapes = {{1, 1}, {3, 7}, {1000, 3}, {37, 1000}, {1500, 33}, {2, 70000}};
    s.softmaxShapes = {{1, 1}, {5, 3}, {64, 10}, {7, 3000}, {300, 2}};
    s.gemmShapes = {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {5, 9, 0}};
    s.modeProductShapes = {{7}, {4, 6}, {3, 5, 2}, {2, 3, 4, 5}, {16, 16, 16}};
    s.normShapes = {{1, 1}, {3, 7}, {6, 300}, {64, 768}, {1500, 33}};
    s.embeddingShapes = {{1, 1, 1}, {7, 5, 3}, {300, 50, 65}, {40, 6, 300}};
    s.transformerCaseLimit = 1e300;
    s.tuckerCostLimit = 2e6;  // racecheck slows kernels down a hundredfold
    s.planBudget = 0;         // the cases that reach every plan, no more
    s.planCases = 0;
    s.factoredCases = {{{16, 16, 16}, {4, 4, 4}}, {{7, 8, 14}, {7, 8, 14}}, {{5, 3}, {2, 3}}};
    s.factoredRows = 37;
  } else {
    s.randomCounts = {1, 1001, int64_t(1) << 20};
    s.elementwiseCounts = {1, 1000, 100003, (int64_t(1) << 22) + 3};  // past the reduction grid
    s.matrixShapes = {{1, 1},     {3, 7},     {1000, 3}, {37, 1000},
                      {1500, 33}, {2, 70000}, {70000, 3}};  // 70000 rows: chunks of 1094 rows
    s.softmaxShapes = {{1, 1}, {5, 3}, {64, 10}, {7, 3000}, {300, 2}};
    s.gemmShapes = {{1, 1, 1}, {7, 5, 3}, {33, 17, 65}, {128, 96, 200}, {5, 9, 0}};
    s.modeProductShapes = {{7},          {4, 6},       {3, 5, 2}, {2, 3, 4, 5},
                           {16, 16, 16}, {70001, 3, 2}};  // 70001 batches of a strided GEMM
    s.normShapes = {{1, 1}, {3, 7}, {6, 300}, {64, 768}, {1500, 33}, {70000, 3}};
    s.embeddingShapes = {{1, 1, 1}, {7, 5, 3}, {300, 50, 65}, {40, 6, 300}, {2048, 1000, 768}};
    s.transformerCaseLimit = 1e300;
    s.tuckerCostLimit = 1e300;
    s.planBudget = 1e9;
    s.planCases = 400;
    s.factoredCases = {{{16, 16, 16}, {16, 16, 16}},
                       {{16, 16, 16}, {4, 4, 4}},
                       {{7, 8, 14}, {7, 8, 14}},
                       {{16, 16, 43}, {16, 16, 16}},
                       {{784}, {784}},
                       {{5, 3}, {2, 3}}};
    s.factoredRows = 37;
  }
  return s;
}

Options options;  // from the command line

const Sizes& sizes() {
  static const Sizes instance = makeSizes(options);
  return instance;
}

// Appended to every check's name while a group runs under a testing cap.
std::string context;

void report(bool ok, const std::string& name, const std::string& detail) {
  (ok ? passed : failed)++;
  std::printf("%s %s%s%s%s\n", ok ? "PASS" : "FAIL", name.c_str(), context.c_str(),
              detail.empty() ? "" : ": ", detail.c_str());
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

// Uniform in [low, high): a counter-based generator, fast enough for 2^31 elements.
std::vector<float> randomVector(int64_t n, float low = -1.0f, float high = 1.0f) {
  const uint64_t seed = rng();
  std::vector<float> v(static_cast<size_t>(n));
  for (size_t i = 0; i < v.size(); ++i) {
    uint64_t z = seed + (uint64_t(i) + 1) * 0x9e3779b97f4a7c15ull;  // splitmix64
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    v[i] = low + (high - low) * float(double(z >> 40) * 0x1p-24);
  }
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

// --- Checks --------------------------------------------------------------------------

void checkMemory(Backend& gpu, bool deliberateErrors) {
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
  if (!deliberateErrors) return;  // a failed cudaMalloc is an error to compute-sanitizer
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
  for (int64_t n : sizes().randomCounts) {
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

void checkSumDot(Backend& cpu, Backend& gpu, int64_t n) {
  const std::string sn = " n=" + std::to_string(n);
  try {
    const std::vector<float> x = randomVector(n), y = randomVector(n);
    double l1 = 0;
    for (float v : x) l1 += std::fabs(v);
    Buffer cx(cpu, x), cy(cpu, y), gx(gpu, x), gy(gpu, y);
    compareScalar("sum" + sn, cpu.sum(cx.data, n), gpu.sum(gx.data, n), 1e-12, 1e-12 * l1);
    compareScalar("dot" + sn, cpu.dot(cx.data, cy.data, n), gpu.dot(gx.data, gy.data, n), 1e-12,
                  1e-12 * l1);
  } catch (const std::exception& e) {
    report(false, "sum/dot" + sn, e.what());
  }
}

void checkElementwise(Backend& cpu, Backend& gpu) {
  for (int64_t n : sizes().elementwiseCounts) {
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
    for (Activation act : {Activation::Relu, Activation::Gelu, Activation::Tanh,
                           Activation::GeluTanh, Activation::Silu}) {
      const char* names[] = {"relu", "gelu", "tanh", "geluTanh", "silu"};
      const char* an = names[int(act)];
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
    checkSumDot(cpu, gpu, n);
  }
}

void checkMatrix(Backend& cpu, Backend& gpu, const std::vector<Shape2>& shapes) {
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

std::vector<float> randomIndices(int64_t n, int64_t limit) {
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = float(std::uniform_int_distribution<int64_t>(0, limit - 1)(rng));
  return v;
}

// The message `op` throws, or "" if it did not throw.
std::string thrown(Backend& be, const std::function<void(Backend&)>& op) {
  try {
    op(be);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Reports whether both backends throw the same message for `op`.
void sameError(const std::string& name, Backend& cpu, Backend& gpu,
               const std::function<void(Backend&)>& op) {
  const std::string expected = thrown(cpu, op), got = thrown(gpu, op);
  report(!got.empty() && got == expected, name, got.empty() ? "did not throw" : got);
}

// Cross-entropy with every row counted (loss alone, and with the gradient),
// every third row ignored (label -100), and every row ignored (NaN loss, zero
// gradient). The gradient buffer starts random: ignored rows must be zeroed.
void checkSoftmax(Backend& cpu, Backend& gpu, const std::vector<Shape2>& shapes) {
  constexpr int64_t kIgnore = -100;
  enum Ignored { kNone, kEveryThird, kAll };
  struct Variant {
    const char* name;
    Ignored ignored;
    bool withGrad;
  };
  const Variant variants[] = {{"", kNone, false},
                              {" +grad", kNone, true},
                              {" ignore index", kEveryThird, true},
                              {" all ignored", kAll, true}};
  for (const auto& s : shapes) {
    const int64_t rows = s[0], classes = s[1];
    const std::vector<float> logits = randomVector(rows * classes, -8, 8);
    const std::vector<float> classLabels = randomIndices(rows, classes);
    const std::vector<float> initialGrad = randomVector(rows * classes);
    const std::string sn = " " + std::to_string(rows) + "x" + std::to_string(classes);
    for (const Variant& v : variants) {
      std::vector<float> labels = classLabels;
      for (int64_t i = 0; i < rows; ++i) {
        if (v.ignored == kAll || (v.ignored == kEveryThird && i % 3 == 1)) {
          labels[size_t(i)] = float(kIgnore);
        }
      }
      const int64_t ignoreIndex = v.ignored == kNone ? kNoIgnoreIndex : kIgnore;
      double loss[2] = {0, 0};
      std::vector<float> grads[2];
      Backend* backends[2] = {&cpu, &gpu};
      try {
        for (int side = 0; side < 2; ++side) {
          Buffer bl(*backends[side], logits), bt(*backends[side], labels);
          Buffer bg(*backends[side], initialGrad);
          loss[side] = backends[side]->softmaxCrossEntropy(
              bl.data, bt.data, rows, classes, ignoreIndex, v.withGrad ? bg.data : nullptr, 0.75f);
          grads[side] = bg.read();
        }
      } catch (const std::exception& e) {
        report(false, std::string("softmaxCrossEntropy") + v.name + sn, e.what());
        continue;
      }
      compareScalar(std::string("softmaxCrossEntropy loss") + v.name + sn, loss[0], loss[1], 1e-6,
                    1e-6);
      if (v.withGrad) {
        compare(std::string("softmaxCrossEntropy grad") + v.name + sn, grads[0], grads[1], 1e-5,
                2e-7);
      }
    }
  }
  // An invalid label is reported as on the CPU, also past an ignored row.
  const std::vector<float> logits = randomVector(12);
  for (int64_t ignoreIndex : {kNoIgnoreIndex, kIgnore}) {
    const std::vector<float> labels = {0, float(kIgnore), 5, 1};
    sameError(std::string("softmaxCrossEntropy bad label") +
                  (ignoreIndex == kNoIgnoreIndex ? "" : " after an ignored row"),
              cpu, gpu, [&](Backend& be) {
                Buffer bl(be, logits), bt(be, labels);
                be.softmaxCrossEntropy(bl.data, bt.data, 4, 3, ignoreIndex, nullptr, 1.0f);
              });
  }
}

void checkGemm(Backend& cpu, Backend& gpu) {
  const float coefficients[][2] = {{1.0f, 0.0f}, {0.5f, -1.5f}, {2.0f, 1.0f}};
  for (const auto& s : sizes().gemmShapes) {
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
  for (const auto& shape : sizes().modeProductShapes) {
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

// --- Tucker ------------------------------------------------------------------------------

struct TuckerCase {
  std::vector<int64_t> modes, ranks;
};

std::string shapeName(const TuckerCase& tc) {
  std::string s = "modes " + formatShape(tc.modes.data(), int(tc.modes.size()));
  if (tc.ranks != tc.modes) s += " ranks " + formatShape(tc.ranks.data(), int(tc.ranks.size()));
  return s;
}

// Which Tucker operations a check runs: the first variant of each (reconstruction
// with scales and alpha, the scale gradient overwriting gradX), or every variant
// (also without scales, with a base added (W0 + alpha dW), and keeping gradX).
enum TuckerOps { kReconstruct = 1, kGradient = 2, kAllVariants = 4 };

void checkTuckerCase(Backend& cpu, Backend& gpu, const TuckerCase& tc, int ops,
                     const std::string& suffix) {
  const bool allVariants = ops & kAllVariants;
  const TuckerShape shape = TuckerShape::make(tc.modes, tc.ranks);
  const int N = shape.order;
  const int64_t coreSize = shape.coreSize(), fullSize = shape.fullSize();
  std::vector<std::vector<float>> inputs;
  inputs.push_back(randomVector(coreSize));  // 0: core
  for (int n = 0; n < N; ++n) inputs.push_back(randomVector(shape.modes[n] * shape.ranks[n]));
  for (int n = 0; n < N; ++n) inputs.push_back(randomVector(shape.ranks[n], 0.5f, 1.5f));
  const std::string name = shapeName(tc) + suffix;
  Backend* backends[2] = {&cpu, &gpu};
  // Variant 0: scales and alpha; 1: neither; 2: scales, alpha and a base.
  const std::vector<float> base = allVariants ? randomVector(fullSize) : std::vector<float>();
  for (int variant = 0; variant < (ops & kReconstruct ? allVariants ? 3 : 1 : 0); ++variant) {
    std::vector<float> outs[2];
    try {
      for (int side = 0; side < 2; ++side) {
        std::vector<Buffer*> bufs;
        for (auto& h : inputs) bufs.push_back(new Buffer(*backends[side], h));
        Buffer out(*backends[side], fullSize);
        std::unique_ptr<Buffer> baseBuffer;
        if (variant == 2) baseBuffer.reset(new Buffer(*backends[side], base));
        const float* factors[kMaxOrder];
        const float* scales[kMaxOrder];
        for (int n = 0; n < N; ++n) {
          factors[n] = bufs[size_t(1 + n)]->data;
          scales[n] = variant != 1 && n != 1 ? bufs[size_t(1 + N + n)]->data : nullptr;
        }
        backends[side]->tuckerReconstruct(shape, bufs[0]->data, factors, scales,
                                          variant != 1 ? 0.625f : 1.0f, out.data,
                                          baseBuffer ? baseBuffer->data : nullptr);
        outs[side] = out.read();
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
  if (!(ops & kGradient)) return;
  const std::vector<float> gradX = randomVector(fullSize);
  for (bool overwrite : {true, false}) {
    if (!overwrite && !allVariants) break;
    std::vector<float> grads[2];
    try {
      for (int side = 0; side < 2; ++side) {
        std::vector<Buffer*> bufs;
        for (auto& h : inputs) bufs.push_back(new Buffer(*backends[side], h));
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
    compare("tuckerScaleGrad " + name + (overwrite ? " (overwrite gradX)" : ""), grads[0], grads[1],
            1e-3, 1e-4 * maxAbs(grads[0]));
  }
}

// What one multi-mode product (in dims d, out dims e) runs under a shared-memory
// limit: the fused plan's features (or why the GEMM chain runs), a key that
// changes exactly when the plan does, and its cost in emulated thread phases
// (a CUDA thread running to its next barrier).
struct Product {
  std::set<std::string> features;
  std::string key = "gemm";
  double cost = 0;
};

const char* stepModeName(int mode) {
  return mode == cuda::kStepVecQ   ? "vector along q"
         : mode == cuda::kStepVecK ? "vector along k"
                                   : "scalar";
}

Product planProduct(const std::vector<int64_t>& d, const std::vector<int64_t>& e, int limit) {
  Product r;
  const int order = int(d.size());
  const float* mats[kMaxOrder] = {};
  cuda::FusedPlan p;
  if (order < 2) {
    r.features.insert("GEMM chain: order 1");
    return r;
  }
  if (!cuda::planFused(order, d.data(), e.data(), mats, size_t(limit), &p)) {
    r.features.insert(e[0] > 32 ? "GEMM chain: first output mode above 32"
                                : "GEMM chain: no fused layout fits");
    return r;
  }
  const int split = order - p.a.g.steps;
  const int width = 1 << p.b.widthLog2;
  r.features.insert("order " + std::to_string(order) + " split " + std::to_string(split));
  r.features.insert("pass B width " + std::to_string(width) + " batch " +
                    std::to_string(p.b.batch));
  r.features.insert("pass B j0max " + std::to_string(p.j0max));
  for (int i = 0; i < p.a.g.steps; ++i) {
    r.features.insert(std::string("pass A step ") + stepModeName(p.a.g.step[i].mode));
  }
  for (int i = 0; i < p.b.g.steps; ++i) {
    r.features.insert(std::string("pass B step ") + stepModeName(p.b.g.step[i].mode));
  }
  if (p.b.rowLength % width != 0) r.features.insert("pass B padded column group");
  r.key = "order " + std::to_string(order) + " split " + std::to_string(split) + " width " +
          std::to_string(width) + " batch " + std::to_string(p.b.batch);
  const double batches = double((p.b.k0 + p.b.batch - 1) / p.b.batch);
  r.cost = double(p.a.slabs) * (p.a.g.steps + 2) * cuda::kPhaseAThreads +
           double(p.b.colBlocks) * batches * (p.b.g.steps + 2) * cuda::kPhaseBThreads;
  return r;
}

// One operation of a Tucker case under a shared-memory limit: reconstruction
// runs its product ranks -> modes, the scale gradient modes -> ranks and then
// the reduction kernels.
struct PlanCase {
  TuckerCase tc;
  bool gradient = false;
  int limit = 0;
  std::set<std::string> features;
  std::string key;
  double cost = 0;
};

PlanCase planCase(const TuckerCase& tc, bool gradient, int limit) {
  PlanCase c;
  c.tc = tc;
  c.gradient = gradient;
  c.limit = limit;
  const Product product =
      gradient ? planProduct(tc.modes, tc.ranks, limit) : planProduct(tc.ranks, tc.modes, limit);
  c.features = product.features;
  c.key = (gradient ? "gradient " : "reconstruction ") + product.key;
  for (int64_t m : tc.modes) {
    if (m == 1 || m == 43) c.features.insert("mode of size " + std::to_string(m));
  }
  if (gradient && tc.modes == tc.ranks && tc.modes.size() >= 2) {
    c.features.insert("in-place projection");
  }
  // Elementwise kernels run about one thread per element; the scale gradient's
  // partial sums up to 256 blocks of 256 threads per mode.
  const TuckerShape shape = TuckerShape::make(tc.modes, tc.ranks);
  c.cost = product.cost + 2.0 * double(shape.fullSize() + shape.coreSize());
  if (gradient) {
    int64_t lead = 1;
    for (int n = 0; n < shape.order; ++n) {
      c.cost += double(std::min<int64_t>(lead, 256)) * 256 * 3 + double(lead);
      lead *= shape.ranks[n];
    }
  }
  return c;
}

// Every distinct plan an operation reaches as the limit goes down from the
// device's: plans change only at thresholds, and each plan holds over an
// interval of limits (a smaller limit only rules layouts out), so bisection
// finds the lowest limit of each interval.
std::vector<PlanCase> planCasesOf(const TuckerCase& tc, bool gradient, int deviceLimit) {
  std::vector<PlanCase> out;
  int limit = deviceLimit;
  while (limit >= 4) {
    PlanCase c = planCase(tc, gradient, limit);
    int lo = 0, hi = limit;  // hi has c's plan, lo may not
    while (hi - lo > 4) {
      const int mid = (lo + hi) / 8 * 4;
      if (planCase(tc, gradient, mid).key == c.key) {
        hi = mid;
      } else {
        lo = mid;
      }
    }
    const bool gemm = c.key.find("gemm") != std::string::npos;
    out.push_back(std::move(c));
    if (gemm) break;
    limit = hi - 4;
  }
  return out;
}

// Candidate shapes for the walk. Structured ones reach the corners: leading
// modes of size 1 before two modes of 43 make every split the only one that
// fits at some limit, and a second output mode of 100-800 (more pass-B
// positions than 8-column groups allow) gives narrower groups with batches.
// Random ones of orders 2-8 mix every size class (1, 43, above 32, ranks
// above modes), small enough to emulate.
std::vector<TuckerCase> planCandidates() {
  std::vector<TuckerCase> out;
  for (int order = 2; order <= kMaxOrder; ++order) {
    std::vector<int64_t> modes(size_t(order - 2), 1), ranks(size_t(order - 2), 1);
    modes.insert(modes.end(), {43, 43});
    out.push_back({modes, modes});
    ranks.insert(ranks.end(), {8, 8});
    out.push_back({modes, ranks});
    out.push_back({ranks, modes});
  }
  for (int64_t first : {8, 16, 32}) {
    for (int64_t second : {100, 200, 400, 800}) {
      out.push_back({{first, second, 16}, {4, 4, 4}});
      out.push_back({{4, 4, 4}, {first, second, 16}});
    }
  }
  std::mt19937_64 g(0x7e7a);
  const int64_t maxElements = kEmulated ? 4096 : int64_t(1) << 18;
  for (int round = 0; round < 30; ++round) {
    for (int order = 2; order <= kMaxOrder; ++order) {
      const int64_t wide = order <= 2 ? 48 : order <= 3 ? 20 : order <= 5 ? 8 : 4;
      for (int attempt = 0; attempt < 100; ++attempt) {
        TuckerCase tc;
        int64_t modes = 1, ranks = 1;
        for (int n = 0; n < order; ++n) {
          const uint64_t kind = g() % 12;
          const int64_t m = kind == 0 ? 1 : kind == 1 ? 43 : 2 + int64_t(g() % uint64_t(wide));
          const uint64_t rankKind = g() % 4;
          const int64_t r =
              rankKind == 0 ? m : 1 + int64_t(g() % uint64_t(std::min<int64_t>(m + 2, 33)));
          tc.modes.push_back(m);
          tc.ranks.push_back(r);
          modes *= m;
          ranks *= r;
        }
        if (modes <= maxElements && ranks <= maxElements) {
          out.push_back(tc);
          break;
        }
      }
    }
  }
  return out;
}

std::vector<std::string> requiredPlanFeatures() {
  std::vector<std::string> f;
  for (int order = 2; order <= kMaxOrder; ++order) {
    for (int split = 1; split < order; ++split) {
      f.push_back("order " + std::to_string(order) + " split " + std::to_string(split));
    }
  }
  for (int width : {1, 2, 4, 8}) {
    for (int batch : {1, 2, 4}) {
      f.push_back("pass B width " + std::to_string(width) + " batch " + std::to_string(batch));
    }
  }
  for (int j0max : {8, 16, 32}) f.push_back("pass B j0max " + std::to_string(j0max));
  for (const char* pass : {"pass A step ", "pass B step "}) {
    for (int mode : {cuda::kStepScalar, cuda::kStepVecQ, cuda::kStepVecK}) {
      f.push_back(pass + std::string(stepModeName(mode)));
    }
  }
  for (const char* other :
       {"pass B padded column group", "GEMM chain: first output mode above 32",
        "GEMM chain: no fused layout fits", "mode of size 1", "mode of size 43"}) {
    f.push_back(other);
  }
  return f;
}

// The walk: the cheapest cases that together reach every plan feature, then
// more shapes (the cheapest fused case of each) while the budget lasts.
void checkPlans(Backend& cpu, Backend& gpu) {
  const int deviceLimit = cuda::capSharedMemoryForTesting(0);
  std::vector<PlanCase> options;
  for (const TuckerCase& tc : planCandidates()) {
    for (bool gradient : {false, true}) {
      for (PlanCase& c : planCasesOf(tc, gradient, deviceLimit)) options.push_back(std::move(c));
    }
  }
  std::vector<size_t> byCost(options.size());
  for (size_t i = 0; i < byCost.size(); ++i) byCost[i] = i;
  std::stable_sort(byCost.begin(), byCost.end(),
                   [&](size_t a, size_t b) { return options[a].cost < options[b].cost; });
  std::set<std::string> reached;
  std::vector<size_t> walk;
  for (size_t i : byCost) {
    const bool adds = std::any_of(options[i].features.begin(), options[i].features.end(),
                                  [&](const std::string& f) { return !reached.count(f); });
    if (!adds) continue;
    reached.insert(options[i].features.begin(), options[i].features.end());
    walk.push_back(i);
  }
  // Then the cheapest fused option of each shape not walked yet, cheapest first.
  std::set<std::string> shapes;
  for (size_t i : walk) shapes.insert(shapeName(options[i].tc));
  std::map<std::string, size_t> cheapest;
  for (size_t i : byCost) {
    const std::string shape = shapeName(options[i].tc);
    if (!shapes.count(shape) && !cheapest.count(shape) &&
        options[i].key.find("gemm") == std::string::npos) {
      cheapest[shape] = i;
    }
  }
  std::vector<size_t> extras;
  for (const auto& entry : cheapest) extras.push_back(entry.second);
  std::sort(extras.begin(), extras.end(),
            [&](size_t a, size_t b) { return options[a].cost < options[b].cost; });
  double spent = 0;
  for (size_t i : extras) {
    if (int(walk.size()) >= sizes().planCases || spent + options[i].cost > sizes().planBudget) {
      break;
    }
    spent += options[i].cost;
    walk.push_back(i);
  }
  std::set<std::string> distinctPlans, distinctShapes;
  for (size_t i : walk) {
    distinctPlans.insert(options[i].key);
    distinctShapes.insert(shapeName(options[i].tc));
  }
  std::vector<std::string> missing;
  for (const std::string& f : requiredPlanFeatures()) {
    if (!reached.count(f)) missing.push_back(f);
  }
  std::string detail = std::to_string(walk.size()) + " cases of " +
                       std::to_string(distinctShapes.size()) + " shapes, " +
                       std::to_string(distinctPlans.size()) + " distinct plans, " +
                       std::to_string(reached.size()) + " features";
  for (const std::string& f : missing) detail += "; not reached: " + f;
  report(missing.empty(), "plan walk reaches every fused plan feature", detail);
  for (size_t i : walk) {
    const PlanCase& c = options[i];
    cuda::capSharedMemoryForTesting(c.limit);
    checkTuckerCase(cpu, gpu, c.tc, c.gradient ? kGradient : kReconstruct,
                    " smem " + std::to_string(c.limit) + ", " + c.key);
  }
  cuda::capSharedMemoryForTesting(0);
}

const std::vector<TuckerCase>& tuckerCases() {
  // The path each takes for reconstruction is noted (the scale gradient's
  // projection runs the other way, modes -> ranks, and may take the other).
  static const std::vector<TuckerCase> cases = {
      {{5}, {3}},  // order 1: GEMM
      {{16}, {16}},
      {{4, 6}, {3, 6}},  // fused, pass B only mode 0
      {{16, 16}, {16, 16}},
      {{3, 4}, {5, 4}},      // R > I
      {{3, 300}, {3, 300}},  // ranks above 256: the scale gradient's wide-row partial sums
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
  };
  return cases;
}

void checkTucker(Backend& cpu, Backend& gpu) {
  const int deviceLimit = cuda::capSharedMemoryForTesting(0);
  for (const TuckerCase& tc : tuckerCases()) {
    const double cost =
        planCase(tc, false, deviceLimit).cost + planCase(tc, true, deviceLimit).cost;
    if (cost > sizes().tuckerCostLimit) continue;
    checkTuckerCase(cpu, gpu, tc, kReconstruct | kGradient | kAllVariants, "");
  }
}

// --- Transformer kernels --------------------------------------------------------------

void checkGemmStridedBatched(Backend& cpu, Backend& gpu) {
  // Padding between the batch entries.
  const int64_t shapes[][4] = {{1, 1, 1, 1}, {3, 7, 5, 4}, {33, 17, 65, 3}};
  for (const auto& g : shapes) {
    const int64_t m = g[0], n = g[1], k = g[2], batch = g[3];
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      const int64_t sa = m * k + 3, sb = k * n + 1, sc = m * n + 2;
      char name[128];
      std::snprintf(name, sizeof name, "gemmStridedBatched m=%lld n=%lld k=%lld batch=%lld %c%c",
                    (long long)m, (long long)n, (long long)k, (long long)batch, ta ? 'T' : 'N',
                    tb ? 'T' : 'N');
      both(
          name, {randomVector(sa * batch), randomVector(sb * batch), randomVector(sc * batch)}, {2},
          1e-4, 1e-6 * double(k) * 1.5,
          [&](Backend& be, std::vector<float*>& p) {
            be.gemmStridedBatched(ta, tb, m, n, k, 0.75f, p[0], sa, p[1], sb, 0.5f, p[2], sc,
                                  batch);
          },
          cpu, gpu);
    }
  }
}

// --- The factored path ---------------------------------------------------------------------

// kroneckerRows (both directions), kroneckerScale, kroneckerScaleGrad and
// tuckerCoreGrad, on full and reduced ranks, with sizes().factoredRows rows of
// activations. Tolerances: kroneckerRows as the mode products (a chain of GEMMs
// on both sides); kroneckerScale is exact (lambda in double, rounded once, on
// both sides); the two gradients sum the same double column sums or the same
// float products H = Z * G, and only the order of the peeling's double sums
// differs, so they agree to the last float bit or so.
void checkFactored(Backend& cpu, Backend& gpu,
                   const std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>>& cases,
                   int64_t rows) {
  for (const auto& [modes, ranks] : cases) {
    const TuckerShape shape = TuckerShape::make(modes, ranks);
    const int N = shape.order;
    const std::string name = shapeName(TuckerCase{modes, ranks});
    const int64_t full = shape.fullSize(), core = shape.coreSize();
    // inputs: factors [0, N), scales [N, 2N), then the kernel's own.
    std::vector<std::vector<float>> common;
    for (int n = 0; n < N; ++n) common.push_back(randomVector(shape.modes[n] * shape.ranks[n]));
    for (int n = 0; n < N; ++n) common.push_back(randomVector(shape.ranks[n], 0.5f, 1.5f));
    const size_t first = size_t(2 * N);  // the first of the kernel's own inputs
    auto operands = [&](std::vector<float*>& p, const float** factors, const float** scales) {
      for (int n = 0; n < N; ++n) {
        factors[n] = p[size_t(n)];
        scales[n] = p[size_t(N + n)];
      }
    };
    auto gradOutputs = [&](size_t from) {
      std::vector<size_t> outs;
      for (int n = 0; n < N; ++n) outs.push_back(from + size_t(n));
      return outs;
    };
    for (bool contract : {false, true}) {
      std::vector<std::vector<float>> in = common;
      in.push_back(randomVector(rows * (contract ? full : core)));
      in.push_back(std::vector<float>(size_t(rows * (contract ? core : full))));
      both(
          "kroneckerRows " + name + (contract ? " contract" : " expand"), in, {first + 1}, 1e-4,
          2e-6 * double(contract ? full : core),
          [&](Backend& b, std::vector<float*>& p) {
            const float* factors[kMaxOrder];
            const float* scales[kMaxOrder];
            operands(p, factors, scales);
            b.kroneckerRows(rows, shape, factors, scales, -0.75f, contract, p[first], p[first + 1]);
          },
          cpu, gpu);
    }
    {
      std::vector<std::vector<float>> in = common;
      in.push_back(randomVector(rows * core));
      in.push_back(std::vector<float>(size_t(rows * core)));
      both(
          "kroneckerScale " + name, in, {first + 1}, 0, 0,
          [&](Backend& b, std::vector<float*>& p) {
            const float* factors[kMaxOrder];
            const float* scales[kMaxOrder];
            operands(p, factors, scales);
            b.kroneckerScale(rows, N, shape.ranks, scales, 1.25f, p[first], p[first + 1]);
          },
          cpu, gpu);
    }
    {
      std::vector<std::vector<float>> in = common;
      in.push_back(randomVector(rows * core));
      in.push_back(randomVector(rows * core));
      for (int n = 0; n < N; ++n) in.push_back(std::vector<float>(size_t(shape.ranks[n])));
      both(
          "kroneckerScaleGrad " + name, in, gradOutputs(first + 2), 1e-6,
          1e-10 * double(rows * core),
          [&](Backend& b, std::vector<float*>& p) {
            const float* factors[kMaxOrder];
            const float* scales[kMaxOrder];
            float* grads[kMaxOrder];
            operands(p, factors, scales);
            for (int n = 0; n < N; ++n) grads[n] = p[first + 2 + size_t(n)];
            b.kroneckerScaleGrad(rows, N, shape.ranks, p[first], p[first + 1], scales, 0.5f, grads);
          },
          cpu, gpu);
    }
    {
      std::vector<std::vector<float>> in = common;
      in.push_back(randomVector(core));  // z
      in.push_back(randomVector(core));  // G
      for (int n = 0; n < N; ++n) in.push_back(std::vector<float>(size_t(shape.ranks[n])));
      both(
          "tuckerCoreGrad " + name, in, gradOutputs(first + 2), 1e-6, 1e-10 * double(core),
          [&](Backend& b, std::vector<float*>& p) {
            const float* factors[kMaxOrder];
            const float* scales[kMaxOrder];
            float* grads[kMaxOrder];
            operands(p, factors, scales);
            for (int n = 0; n < N; ++n) grads[n] = p[first + 2 + size_t(n)];
            b.tuckerCoreGrad(N, shape.ranks, p[first], p[first + 1], scales, grads);
          },
          cpu, gpu);
    }
  }
}

// Lookup and scatter-add (repeated ids accumulate in token order); shapes are
// count, vocab, dim.
void checkEmbedding(Backend& cpu, Backend& gpu) {
  for (const Shape3& e : sizes().embeddingShapes) {
    const int64_t count = e[0], vocab = e[1], dim = e[2];
    const std::string sn = " count=" + std::to_string(count) + " vocab=" + std::to_string(vocab) +
                           " dim=" + std::to_string(dim);
    const std::vector<float> ids = randomIndices(count, vocab);
    both(
        "embeddingForward" + sn,
        {std::vector<float>(size_t(count * dim)), randomVector(vocab * dim), ids}, {0}, 0, 0,
        [&](Backend& be, std::vector<float*>& p) {
          be.embeddingForward(p[0], p[1], p[2], count, vocab, dim);
        },
        cpu, gpu);
    both(
        "embeddingBackward" + sn, {randomVector(vocab * dim), randomVector(count * dim), ids}, {0},
        0, 0,
        [&](Backend& be, std::vector<float*>& p) {
          be.embeddingBackward(p[0], p[1], p[2], count, vocab, dim);
        },
        cpu, gpu);
  }
  const std::vector<float> ids = {0, 2, 7, 1};
  for (bool backward : {false, true}) {
    sameError(backward ? "embeddingBackward bad id" : "embeddingForward bad id", cpu, gpu,
              [&](Backend& be) {
                Buffer out(be, 8), weight(be, 8), bi(be, ids);
                if (backward) {
                  be.embeddingBackward(weight.data, out.data, bi.data, 4, 4, 2);
                } else {
                  be.embeddingForward(out.data, weight.data, bi.data, 4, 4, 2);
                }
              });
  }
}

// LayerNorm / RMSNorm with and without weight and bias: forward, the weight
// gradients alone (dx null), then every gradient with dx written over dy.
void checkNorms(Backend& cpu, Backend& gpu, const std::vector<Shape2>& shapes) {
  for (const Shape2& ns : shapes) {
    const int64_t rows = ns[0], cols = ns[1];
    for (Norm norm : {Norm::Layer, Norm::Rms}) {
      for (bool affine : {false, true}) {
        const std::string sn = std::string(norm == Norm::Layer ? " layer" : " rms") +
                               (affine ? " affine " : " plain ") + std::to_string(rows) + "x" +
                               std::to_string(cols);
        const bool withBias = affine && norm == Norm::Layer;
        const std::vector<float> zeroRows(static_cast<size_t>(rows * cols)),
            zeroCols(static_cast<size_t>(cols));
        // 0 y, 1 stats, 2 x, 3 weight, 4 bias, 5 dy (then dx), 6 dweight, 7 dbias,
        // 8 dweight and 9 dbias without dx
        both(
            "normForward/Backward" + sn,
            {zeroRows, std::vector<float>(size_t(2 * rows)), randomVector(rows * cols, -3, 5),
             randomVector(cols, 0.5f, 1.5f), randomVector(cols), randomVector(rows * cols),
             zeroCols, zeroCols, zeroCols, zeroCols},
            affine ? std::vector<size_t>{0, 1, 5, 6, 7, 8, 9} : std::vector<size_t>{0, 1, 5}, 1e-6,
            1e-6,
            [&](Backend& be, std::vector<float*>& p) {
              const float* w = affine ? p[3] : nullptr;
              be.normForward(norm, p[0], p[1], p[2], w, withBias ? p[4] : nullptr, rows, cols,
                             1e-5f);
              if (affine) {
                be.normBackward(norm, nullptr, p[8], withBias ? p[9] : nullptr, p[5], p[2], w, p[1],
                                rows, cols);
              }
              be.normBackward(norm, p[5], affine ? p[6] : nullptr, withBias ? p[7] : nullptr, p[5],
                              p[2], w, p[1], rows, cols);
            },
            cpu, gpu);
      }
    }
  }
}

// keyMask [batch, keyLength] of left-padded sequences: batch b is padded by
// b + 1 keys, except that the last of several batches hides every key (rows
// with nothing to attend to).
std::vector<float> leftPaddedKeyMask(int64_t batch, int64_t keyLength) {
  std::vector<float> mask(size_t(batch * keyLength), 1.0f);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t padded = b + 1 == batch && b > 0 ? keyLength : std::min(keyLength, b + 1);
    for (int64_t j = 0; j < padded; ++j) mask[size_t(b * keyLength + j)] = 0.0f;
  }
  return mask;
}

struct SoftmaxCase {
  int64_t batch, heads, queryLength, keyLength, queryOffset;
  bool causal, keyMask;
};

// Row softmax, plain and masked (causal with an offset, left padding, fully
// masked rows), and its backward pass written over dy.
void checkMaskedSoftmax(Backend& cpu, Backend& gpu, const std::vector<SoftmaxCase>& cases) {
  for (const SoftmaxCase& sc : cases) {
    const int64_t rows = sc.batch * sc.heads * sc.queryLength, cols = sc.keyLength;
    if (double(rows * cols) > sizes().transformerCaseLimit) continue;
    char name[160];
    std::snprintf(name, sizeof name,
                  "softmaxRows/Backward batch=%lld heads=%lld Tq=%lld Tk=%lld offset=%lld%s%s",
                  (long long)sc.batch, (long long)sc.heads, (long long)sc.queryLength,
                  (long long)sc.keyLength, (long long)sc.queryOffset, sc.causal ? " causal" : "",
                  sc.keyMask ? " keyMask" : "");
    const bool masked = sc.causal || sc.keyMask;
    both(
        name,
        {std::vector<float>(size_t(rows * cols)), randomVector(rows * cols, -6, 6),
         leftPaddedKeyMask(sc.batch, cols), randomVector(rows * cols)},
        {0, 3}, 1e-5, 1e-7,
        [&](Backend& be, std::vector<float*>& p) {
          AttentionMask mask;
          mask.heads = sc.heads;
          mask.queryLength = sc.queryLength;
          mask.queryOffset = sc.queryOffset;
          mask.causal = sc.causal;
          mask.keyMask = sc.keyMask ? p[2] : nullptr;
          be.softmaxRows(p[0], p[1], rows, cols, masked ? &mask : nullptr);
          be.softmaxBackward(p[3], p[0], p[3], rows, cols);
        },
        cpu, gpu);
  }
}

// Attention forward and backward (composed of the kernels above), GQA ratios 1, 2 and 4.
void checkAttention(Backend& cpu, Backend& gpu) {
  struct AttentionCase {
    AttentionShape shape;  // batch, heads, kvHeads, Tq, Tk, headDim, queryOffset, causal, scale
    bool keyMask;
  };
  const AttentionCase cases[] = {{{1, 1, 1, 1, 1, 1, 0, false, 1.0f}, false},
                                 {{2, 4, 4, 5, 5, 8, 0, true, 0.35f}, true},
                                 {{2, 4, 2, 3, 7, 5, 4, true, 0.45f}, true},
                                 {{1, 8, 2, 16, 16, 64, 0, true, 0.125f}, false},
                                 {{3, 2, 1, 4, 6, 3, 0, false, 0.6f}, true}};
  for (const AttentionCase& ac : cases) {
    const AttentionShape& shape = ac.shape;
    const int64_t qs = shape.querySize(), ks = shape.keySize(), ps = shape.probsSize();
    if (double(std::max({qs, ks, ps})) > sizes().transformerCaseLimit) continue;
    char name[160];
    std::snprintf(name, sizeof name,
                  "attention batch=%lld heads=%lld kvHeads=%lld Tq=%lld Tk=%lld D=%lld "
                  "offset=%lld%s%s",
                  (long long)shape.batch, (long long)shape.heads, (long long)shape.kvHeads,
                  (long long)shape.queryLength, (long long)shape.keyLength,
                  (long long)shape.headDim, (long long)shape.queryOffset,
                  shape.causal ? " causal" : "", ac.keyMask ? " keyMask" : "");
    // 0 q, 1 k, 2 v, 3 keyMask, 4 probs, 5 out, 6 dOut, 7 workspace, 8 dq, 9 dk, 10 dv
    both(
        name,
        {randomVector(qs), randomVector(ks), randomVector(ks),
         leftPaddedKeyMask(shape.batch, shape.keyLength), std::vector<float>(size_t(ps)),
         std::vector<float>(size_t(qs)), randomVector(qs), std::vector<float>(size_t(ps)),
         std::vector<float>(size_t(qs)), std::vector<float>(size_t(ks)),
         std::vector<float>(size_t(ks))},
        {4, 5, 8, 9, 10}, 1e-4, 1e-5,
        [&](Backend& be, std::vector<float*>& p) {
          attentionForward(be, shape, p[0], p[1], p[2], ac.keyMask ? p[3] : nullptr, p[4], p[5]);
          attentionBackward(be, shape, p[0], p[1], p[2], p[4], p[6], p[7], p[8], p[9], p[10]);
        },
        cpu, gpu);
  }
}

// RoPE: full and partial rotary dims, per-batch and shared positions, in place and inverse.
void checkRope(Backend& cpu, Backend& gpu) {
  // batch, heads, tokens, headDim, rotaryDim, theta, positionsPerBatch
  const RopeShape cases[] = {{1, 1, 1, 2, 2, 10000.0, true},
                             {2, 3, 5, 8, 8, 10000.0, true},
                             {2, 4, 7, 64, 32, 500000.0, false},
                             {1, 12, 100, 64, 64, 10000.0, true}};
  for (const RopeShape& shape : cases) {
    const int64_t size = shape.batch * shape.heads * shape.tokens * shape.headDim;
    if (double(size) > sizes().transformerCaseLimit) continue;
    const int64_t positions = (shape.positionsPerBatch ? shape.batch : 1) * shape.tokens;
    char name[160];
    std::snprintf(name, sizeof name, "rope batch=%lld heads=%lld T=%lld D=%lld rotary=%lld%s",
                  (long long)shape.batch, (long long)shape.heads, (long long)shape.tokens,
                  (long long)shape.headDim, (long long)shape.rotaryDim,
                  shape.positionsPerBatch ? "" : " shared");
    // 0 y, 1 x, 2 positions, 3 in place then inverted
    both(
        name,
        {std::vector<float>(size_t(size)), randomVector(size), randomIndices(positions, 4096),
         randomVector(size)},
        {0, 3}, 1e-6, 1e-6,
        [&](Backend& be, std::vector<float*>& p) {
          be.rope(p[0], p[1], p[2], shape, false);
          be.rope(p[3], p[3], p[2], shape, true);
        },
        cpu, gpu);
  }
}

void checkPermuteAndCopies(Backend& cpu, Backend& gpu) {
  const std::vector<std::pair<std::vector<int64_t>, std::vector<int>>> permutes = {
      {{5}, {0}}, {{3, 4}, {1, 0}}, {{2, 3, 4, 5}, {0, 2, 1, 3}}, {{2, 3, 4, 5}, {3, 1, 0, 2}}};
  for (const auto& [shape, dims] : permutes) {
    int64_t size = 1;
    for (int64_t d : shape) size *= d;
    const int rank = int(shape.size());
    both(
        "permute " + formatShape(shape.data(), rank),
        {std::vector<float>(size_t(size)), randomVector(size)}, {0}, 0, 0,
        [&](Backend& be, std::vector<float*>& p) {
          be.permute(p[0], p[1], shape.data(), dims.data(), rank);
        },
        cpu, gpu);
  }
  both(
      "copyBlocks 7 rows of 5, strides 11 and 9", {randomVector(80), randomVector(70)}, {0}, 0, 0,
      [&](Backend& be, std::vector<float*>& p) { be.copyBlocks(p[0] + 3, 11, p[1] + 2, 9, 7, 5); },
      cpu, gpu);
}

// The masked softmax cases of the transformer group: full rows, rows longer
// than a block (kRowThreads = 128), causal with an offset, left padding and
// fully masked rows (the last batch of each keyMask case).
const std::vector<SoftmaxCase>& maskedSoftmaxCases() {
  static const std::vector<SoftmaxCase> cases = {
      {1, 1, 1, 1, 0, false, false},  {2, 3, 5, 700, 0, false, false}, {2, 2, 6, 6, 0, true, false},
      {3, 2, 4, 9, 5, true, true},    {2, 4, 1, 17, 16, true, true},   {2, 1, 7, 7, 0, false, true},
      {2, 2, 3, 300, 297, true, true}};
  return cases;
}

// Every transformer kernel (the cross-entropy with an ignore index is in the softmax group,
// GELU's tanh form and SiLU in the elementwise group).
void checkTransformer(Backend& cpu, Backend& gpu) {
  checkGemmStridedBatched(cpu, gpu);
  checkEmbedding(cpu, gpu);
  checkNorms(cpu, gpu, sizes().normShapes);
  checkMaskedSoftmax(cpu, gpu, maskedSoftmaxCases());
  checkAttention(cpu, gpu);
  checkRope(cpu, gpu);
  checkPermuteAndCopies(cpu, gpu);
}

// --- Grid-stride loops ---------------------------------------------------------------------

// The kernels with a loop over rows, slabs, tiles or chunks per block, on grids
// capped at 2 blocks, so that each block runs several iterations and every
// barrier that guards shared memory between iterations matters. Small enough
// to be the workload of the emulation's negative controls (one removed
// __syncthreads per run), and it reaches every barrier of every kernel.
void checkGridStride(Backend& cpu, Backend& gpu) {
  cuda::capGridForTesting(2);
  context = " [grid <= 2 blocks]";
  checkSumDot(cpu, gpu, 5000);
  checkMatrix(cpu, gpu, {{5, 100}});
  checkSoftmax(cpu, gpu, {{5, 12}});
  checkNorms(cpu, gpu, {{5, 100}});  // 4 tiles of 32 columns for the weight sums
  checkMaskedSoftmax(cpu, gpu, {{2, 2, 3, 12, 0, true, true}});
  for (const TuckerCase& tc : std::vector<TuckerCase>{{{8, 7, 9}, {8, 5, 6}},  // pass A: 2 steps
                                                      {{3, 5, 7}, {2, 5, 4}},
                                                      {{6, 4, 4, 4}, {6, 4, 4, 4}}}) {
    checkTuckerCase(cpu, gpu, tc, kReconstruct | kGradient, "");
  }
  // 576 columns: more than 2 blocks of threads, so each thread of columnDots and the
  // row-wise factored kernels takes several columns.
  checkFactored(cpu, gpu, {{{24, 24}, {24, 24}}}, 3);
  context.clear();
  cuda::capGridForTesting(0);
}

// --- Sizes past 2^31 elements (GPU only) --------------------------------------------------

// Says NOTRUN (neither passed nor failed) unless the device and the host have
// the memory a check needs.
bool haveMemory(const std::string& name, double deviceBytes, double hostBytes) {
  int64_t deviceFree = 0, deviceTotal = 0;
  cuda::deviceMemory(&deviceFree, &deviceTotal);
  const double hostFree = double(sysconf(_SC_AVPHYS_PAGES)) * double(sysconf(_SC_PAGESIZE));
  if (double(deviceFree) >= deviceBytes && hostFree >= hostBytes) return true;
  std::printf(
      "NOTRUN %s: needs %.1f GiB of device memory (%.1f free) and %.1f GiB of host memory "
      "(%.1f free)\n",
      name.c_str(), deviceBytes / double(1 << 30), double(deviceFree) / double(1 << 30),
      hostBytes / double(1 << 30), hostFree / double(1 << 30));
  std::fflush(stdout);
  return false;
}

void checkLarge(Backend& cpu, Backend& gpu) {
  const int64_t n = (int64_t(1) << 31) + 7;
  const double bytes = double(n) * sizeof(float);
  if (haveMemory("axpby and sum past 2^31 elements", 2.5 * bytes, 7 * bytes)) {
    both(
        "axpby b=-0.75 n=" + std::to_string(n), {randomVector(n), randomVector(n)}, {0}, 0, 0,
        [&](Backend& be, std::vector<float*>& p) { be.axpby(p[0], p[1], n, 1.5f, -0.75f); }, cpu,
        gpu);
    checkSumDot(cpu, gpu, n);
  }
  // 2^31 + 2^21 outputs by the GEMM chain (the fused plans stay far below 2^31).
  const TuckerCase big = {{2048, 1024, 1025}, {4, 4, 4}};
  const double outBytes = 2048.0 * 1024 * 1025 * sizeof(float);
  if (haveMemory("Tucker case " + shapeName(big), 2.5 * outBytes, 7 * outBytes)) {
    checkTuckerCase(cpu, gpu, big, kReconstruct | kGradient, "");
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
      const double tucker = timeIt(gpu, 50, [&] {
        gpu.tuckerReconstruct(shape, core.data, fp, sp, 1.0f, out.data, nullptr);
      });
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

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--probe") {
      options.probe = true;
    } else if (arg == "--sanitizer") {
      options.sanitizer = true;
    } else if (arg == "--barriers" && kEmulated) {
      options.barriers = true;
    } else if (arg == "--only" && i + 1 < argc &&
               std::any_of(std::begin(kGroups), std::end(kGroups),
                           [&](const char* g) { return argv[i + 1] == std::string(g); })) {
      options.only = argv[++i];
    } else {
      std::fprintf(stderr, "unknown or incomplete argument '%s'; groups:", arg.c_str());
      for (const char* g : kGroups) std::fprintf(stderr, " %s", g);
      std::fprintf(stderr, "\n");
      return 2;
    }
  }
  std::string reason;
  Backend* gpu = cudaBackend(&reason);
  if (!gpu) {
    std::printf("SKIPPED: %s\n", reason.c_str());
    std::printf("0 passed, 0 failed\n");
    return 77;
  }
  const CudaStatus status = cudaStatus();
  std::printf(
      "CUDA device: %s (compute capability %d.%d, %.1f GiB), driver %d, runtime %d, "
      "archs %s, cuBLAS %s\n",
      status.deviceName.c_str(), status.computeCapability / 10, status.computeCapability % 10,
      double(status.totalMemory) / (1 << 30), status.driverVersion, status.runtimeVersion,
      status.archs.c_str(), status.cublasLibrary.c_str());
  std::fflush(stdout);
  if (options.probe) return 0;
  Backend& cpu = cpuBackend();
  const bool gpuFull = !kEmulated && !options.sanitizer;
  if (options.runs("memory")) checkMemory(*gpu, !options.sanitizer);
  if (options.runs("random")) checkRandom(cpu, *gpu);
  if (options.runs("elementwise")) checkElementwise(cpu, *gpu);
  if (options.runs("matrix")) checkMatrix(cpu, *gpu, sizes().matrixShapes);
  if (options.runs("softmax")) checkSoftmax(cpu, *gpu, sizes().softmaxShapes);
  if (options.runs("gemm")) checkGemm(cpu, *gpu);
  if (options.runs("modeProduct")) checkModeProduct(cpu, *gpu);
  if (options.runs("tucker")) checkTucker(cpu, *gpu);
  if (options.runs("plans")) checkPlans(cpu, *gpu);
  if (options.runs("transformer")) checkTransformer(cpu, *gpu);
  if (options.runs("factored"))
    checkFactored(cpu, *gpu, sizes().factoredCases, sizes().factoredRows);
  if (options.runs("grid")) checkGridStride(cpu, *gpu);
  if (gpuFull && options.runs("large")) checkLarge(cpu, *gpu);
  if (gpuFull && options.runs("bench")) benchmark(*gpu);
#ifdef TERA_HOST_EMULATION
  if (options.barriers) {
    for (const emu::BarrierSite& site : emu::barrierSites()) {
      std::printf("BARRIER %s %lld\n", site.where.c_str(), (long long)site.calls);
    }
  }
#endif
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
