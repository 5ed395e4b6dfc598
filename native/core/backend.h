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
// Gelu is the exact (erf) form; GeluTanh is GPT-2's tanh approximation ("gelu_new").
enum class Activation { Relu, Gelu, Tanh, GeluTanh, Silu };
// Layer: (x - mean) / sqrt(biased variance + eps), as torch.nn.LayerNorm.
// Rms: x / sqrt(mean(x^2) + eps), as Hugging Face's LlamaRMSNorm.
enum class Norm { Layer, Rms };

// Which entries of attention scores [batch, heads, queryLength, keyLength] a
// softmax keeps: key j of query row i in batch b is kept when keyMask is null
// or keyMask[b * keyLength + j] != 0, and, when causal, j <= queryOffset + i.
// Masked entries get exactly zero weight; a row with no kept entry is all zeros.
struct AttentionMask {
  int64_t heads = 1, queryLength = 1, queryOffset = 0;
  bool causal = false;
  const float* keyMask = nullptr;  // [batch, keyLength] of 0/1, on the backend's device
};

// Rotary position embedding of x [batch, heads, tokens, headDim] (Hugging Face's
// rotate-half convention) over its first rotaryDim features.
struct RopeShape {
  int64_t batch = 1, heads = 1, tokens = 1, headDim = 2, rotaryDim = 2;
  double theta = 10000.0;
  bool positionsPerBatch = true;  // positions are [batch, tokens]; else [tokens] for every row
};

// Labels of softmaxCrossEntropy equal to the ignore index are skipped; this one skips none.
constexpr int64_t kNoIgnoreIndex = INT64_MIN;

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
  // C_i = alpha op(A_i) op(B_i) + beta C_i for i < batch, where X_i starts at x + i * strideX.
  virtual void gemmStridedBatched(bool transA, bool transB, int64_t m, int64_t n, int64_t k,
                                  float alpha, const float* a, int64_t strideA, const float* b,
                                  int64_t strideB, float beta, float* c, int64_t strideC,
                                  int64_t batch) = 0;

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
  // Mean of -log softmax(logits)[label] over the rows whose label is not
  // ignoreIndex (NaN when every row is ignored, as torch's mean over nothing);
  // if grad is not null it receives scale * (softmax - onehot) / counted rows,
  // and zeros in ignored rows. Labels are class indices stored as floats; any
  // other label (ignoreIndex aside) throws before anything is written.
  virtual double softmaxCrossEntropy(const float* logits, const float* labels, int64_t rows,
                                     int64_t classes, int64_t ignoreIndex, float* grad,
                                     float scale) = 0;
  // out[i] = argmax_j x[i, j] (as a float)
  virtual void argmaxRows(float* out, const float* x, int64_t rows, int64_t cols) = 0;
  virtual void adamwStep(float* param, const float* grad, float* m, float* v, int64_t count,
                         const AdamWSettings& settings) = 0;
  virtual void sgdStep(float* param, const float* grad, float* momentum, int64_t count,
                       const SgdSettings& settings) = 0;

  // --- Transformer kernels (native/cpu/transformer_cpu.cc, native/cuda/cuda_transformer.cu) ---

  // out[i, :] = weight[ids[i], :] for i < count. ids are class indices stored as
  // floats; one outside [0, vocab) throws before anything is written.
  virtual void embeddingForward(float* out, const float* weight, const float* ids, int64_t count,
                                int64_t vocab, int64_t dim) = 0;
  // dweight[ids[i], :] += dy[i, :], summed in token order on both backends, so the
  // result is deterministic. ids are checked as in embeddingForward.
  virtual void embeddingBackward(float* dweight, const float* dy, const float* ids, int64_t count,
                                 int64_t vocab, int64_t dim) = 0;
  // Normalises each row of x [rows, cols] (see Norm), then y = xhat * weight + bias
  // (weight null: ones; bias null: zeros; Rms takes no bias). stats (null, or 2 *
  // rows) receives each row's mean (0 for Rms), then each row's 1 / sqrt(var + eps).
  virtual void normForward(Norm norm, float* y, float* stats, const float* x, const float* weight,
                           const float* bias, int64_t rows, int64_t cols, float eps) = 0;
  // The gradients of normForward from its stats, each skipped when null and
  // otherwise overwritten: dx, dweight = sum over rows of dy * xhat, dbias = sum
  // over rows of dy. dx may be dy (the weight sums are taken first).
  virtual void normBackward(Norm norm, float* dx, float* dweight, float* dbias, const float* dy,
                            const float* x, const float* weight, const float* stats, int64_t rows,
                            int64_t cols) = 0;
  // y = softmax of each row of x [rows, cols] in float32 (the row maximum
  // subtracted first); y may be x. With a mask, rows are [batch, heads,
  // queryLength] and masked entries are exactly 0 (see AttentionMask).
  virtual void softmaxRows(float* y, const float* x, int64_t rows, int64_t cols,
                           const AttentionMask* mask) = 0;
  // dx = y * (dy - sum_j dy_j y_j) row-wise, the softmax's backward pass; dx may be dy.
  virtual void softmaxBackward(float* dx, const float* y, const float* dy, int64_t rows,
                               int64_t cols) = 0;
  // y = x rotated: for i < rotaryDim / 2, with the angle float(position) * invFreq_i
  // and invFreq_i = 1 / theta^(2i / rotaryDim), both rounded to float32 as Hugging
  // Face computes them, (y_i, y_{i + rotaryDim / 2}) = (x_i cos - x_{i + r/2} sin,
  // x_{i + r/2} cos + x_i sin); features from rotaryDim on are copied. inverse
  // rotates by minus the angle (the backward pass). positions hold integers as
  // floats. y may be x.
  virtual void rope(float* y, const float* x, const float* positions, const RopeShape& shape,
                    bool inverse) = 0;
  // y = x with its axes permuted: axis a of y is axis dims[a] of x, whose shape
  // is `shape` (rank <= kMaxOrder). y must not overlap x.
  virtual void permute(float* y, const float* x, const int64_t* shape, const int* dims,
                       int rank) = 0;
  // dst[r * dstStride + c] = src[r * srcStride + c] for r < rows, c < cols: the
  // block copy behind split, concat, narrow and KV-cache writes. The two blocks
  // must not overlap.
  virtual void copyBlocks(float* dst, int64_t dstStride, const float* src, int64_t srcStride,
                          int64_t rows, int64_t cols) = 0;
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
