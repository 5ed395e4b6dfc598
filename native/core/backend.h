// The backend interface: every kernel the library runs, with one implementation
// per device (native/cpu is the reference, native/cuda its twin). Pointers are
// device pointers of the backend; all matrices are row-major float32.
#pragma once

#include <cstdint>
#include <string>

#include "core/shape.h"

namespace tera {

enum class Device { Cpu, Cuda };
enum class Distribution { Uniform, Normal };
enum class Activation { Relu, Gelu, Tanh };

struct AdamWSettings {
  float learningRate, beta1, beta2, epsilon, weightDecay;
  int64_t step;  // 1-based, for bias correction
};

struct SgdSettings {
  float learningRate, momentum, weightDecay;
  bool nesterov;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;
  virtual std::string name() const = 0;

  // Memory. allocate() returns zero-filled memory or throws. The addon's CPU
  // storages are V8 ArrayBuffers instead (binding/storage.h), so on the CPU
  // allocate() serves the native tests.
  virtual float* allocate(int64_t count) = 0;
  virtual void release(float* data) = 0;
  virtual void upload(float* dst, const float* host, int64_t count) = 0;
  virtual void download(float* host, const float* src, int64_t count) = 0;
  virtual void copy(float* dst, const float* src, int64_t count) = 0;
  virtual void synchronize() = 0;

  // C = alpha * op(A) op(B) + beta * C, op(A) is m x k, op(B) is k x n, C is m x n.
  virtual void gemm(bool transA, bool transB, int64_t m, int64_t n, int64_t k, float alpha,
                    const float* a, const float* b, float beta, float* c) = 0;

  // Y = X x_mode (M diag(scale)): X has `shape`, M is [rows, shape[mode]], scale is
  // null or of length shape[mode]; Y has shape with shape[mode] replaced by rows.
  virtual void modeProduct(const int64_t* shape, int order, int mode, const float* x,
                           const float* matrix, int64_t rows, const float* scale, float* y) = 0;

  // X = alpha * G x_1 (A_1 diag(l_1)) ... x_N (A_N diag(l_N)); scales[n] may be null (ones).
  // out = X, or base + X when base is not null (base and out are distinct), so that
  // W0 + alpha dW costs no pass of its own.
  virtual void tuckerReconstruct(const TuckerShape& shape, const float* core,
                                 const float* const* factors, const float* const* scales,
                                 float alpha, float* out, const float* base) = 0;

  // dl_n = d<gradX, X(l)>/dl_n for all n (alpha = 1), by the core-space projection.
  // With overwriteGradX, gradX (then not const in effect) may be used as the
  // projection's workspace: when modes == ranks no extra d_out * d_in buffer is needed.
  virtual void tuckerScaleGrad(const TuckerShape& shape, float* gradX, const float* core,
                               const float* const* factors, const float* const* scales,
                               float* const* gradScales, bool overwriteGradX) = 0;

  // The same gradients from the core-space gradient Z (shape ranks[0..order)), the
  // projection already done: dl_n = d/dl_n sum_r Z[r] G[r] prod_m l_m[r_m].
  virtual void tuckerCoreGrad(int order, const int64_t* ranks, const float* z, const float* core,
                              const float* const* scales, float* const* gradScales) = 0;

  // The factored path's row products: every one of `rows` rows times
  // K = (A_1 diag(s_1)) (x) ... (x) (A_Q diag(s_Q)), A_n [modes[n], ranks[n]]:
  // y = alpha x K^T ([rows, prod ranks] -> [rows, prod modes]) or, with `contract`,
  // y = alpha x K ([rows, prod modes] -> [rows, prod ranks]). x and y are distinct.
  virtual void kroneckerRows(int64_t rows, const TuckerShape& shape, const float* const* factors,
                             const float* const* scales, float alpha, bool contract, const float* x,
                             float* y) = 0;
  // y[t, r] = x[t, r] * lambda[r], lambda = alpha s_1 (x) ... (x) s_Q computed in double and
  // rounded once; y may be x.
  virtual void kroneckerScale(int64_t rows, int order, const int64_t* ranks,
                              const float* const* scales, float alpha, const float* x,
                              float* y) = 0;
  // gradScales[n] = d/ds_n of alpha sum_{t, r} a[t, r] b[t, r] (s_1 (x) ... (x) s_Q)[r].
  virtual void kroneckerScaleGrad(int64_t rows, int order, const int64_t* ranks, const float* a,
                                  const float* b, const float* const* scales, float alpha,
                                  float* const* gradScales) = 0;

  // Element k = f(Philox(counter = (k, stream), key = seed)); Uniform in [a, b),
  // Normal with mean a and standard deviation b.
  virtual void randomFill(float* out, int64_t count, Distribution distribution, uint64_t seed,
                          uint64_t stream, float a, float b) = 0;

  // Elementwise and reductions used by autograd and the optimisers.
  virtual void fill(float* out, int64_t count, float value) = 0;
  // y = a * x + b * y
  virtual void axpby(float* y, const float* x, int64_t count, float a, float b) = 0;
  // out = x * y (elementwise)
  virtual void multiply(float* out, const float* x, const float* y, int64_t count) = 0;
  // out[i, j] = x[i, j] * v[j] (perColumn) or x[i, j] * v[i]
  virtual void scaleMatrix(float* out, const float* x, const float* v, int64_t rows, int64_t cols,
                           bool perColumn) = 0;
  // x[i, j] += v[j]
  virtual void addRowVector(float* x, const float* v, int64_t rows, int64_t cols) = 0;
  // out[j] = beta * out[j] + sum_i x[i, j] (overColumns=false: sums each column down the rows)
  // out[i] = beta * out[i] + sum_j x[i, j] (overColumns=true)
  virtual void sumAxis(float* out, const float* x, int64_t rows, int64_t cols, bool overColumns,
                       float beta) = 0;
  virtual void activationForward(Activation activation, float* y, const float* x,
                                 int64_t count) = 0;
  // dx = beta * dx + dy * f'(x)
  virtual void activationBackward(Activation activation, float* dx, const float* x, const float* dy,
                                  int64_t count, float beta) = 0;
  virtual double sum(const float* x, int64_t count) = 0;
  virtual double dot(const float* x, const float* y, int64_t count) = 0;
  // Mean over rows of -log softmax(logits)[label]; if grad is not null it receives
  // scale * (softmax - onehot) / rows. Labels are class indices stored as floats.
  virtual double softmaxCrossEntropy(const float* logits, const float* labels, int64_t rows,
                                     int64_t classes, float* grad, float scale) = 0;
  // out[i] = argmax_j x[i, j] (as a float)
  virtual void argmaxRows(float* out, const float* x, int64_t rows, int64_t cols) = 0;
  virtual void adamwStep(float* param, const float* grad, float* m, float* v, int64_t count,
                         const AdamWSettings& settings) = 0;
  virtual void sgdStep(float* param, const float* grad, float* momentum, int64_t count,
                       const SgdSettings& settings) = 0;
};

Backend& cpuBackend();

// What the CUDA side of this binary is and why it is (not) usable.
struct CudaStatus {
  bool built = false;      // compiled with CUDA kernels
  bool available = false;  // a device, a recent enough driver and cuBLAS were found
  std::string reason;      // why not available
  std::string archs;       // CUDA architectures compiled in
  std::string deviceName;
  int computeCapability = 0;  // major * 10 + minor
  int driverVersion = 0;      // as cudaDriverGetVersion reports it
  int runtimeVersion = 0;
  std::string cublasLibrary;  // the file cuBLAS was loaded from
  int64_t totalMemory = 0;
};
CudaStatus cudaStatus();

// The CUDA backend, or null with `reason` saying why it is unusable (not built,
// no driver, no device, cuBLAS not found).
Backend* cudaBackend(std::string* reason);

}  // namespace tera
