// Preparers of the matrix kernels: GEMM, per-row / per-column scaling and
// sums, and the row-wise softmax cross-entropy (with an optional ignore index)
// and argmax. All matrices are
// row-major [rows, cols].
#include <limits>
#include <utility>

#include "binding/job.h"
#include "core/errors.h"

namespace tera {
namespace binding {
namespace {

Job prepareGemm(const Napi::CallbackInfo& info) {
  Arguments args(info, "gemm");
  const bool transA = args.boolean(0), transB = args.boolean(1);
  const int64_t m = args.integer(2, 1), n = args.integer(3, 1), k = args.integer(4, 1);
  const float alpha = float(args.number(5));
  Storage *a = args.storage(6), *b = args.storage(7);
  const float beta = float(args.number(8));
  Storage* c = args.storage(9);
  // BLAS (OpenBLAS, cuBLAS) takes sizes as 32-bit ints, on either backend.
  for (const auto& [name, size] : {std::pair<const char*, int64_t>{"m", m}, {"n", n}, {"k", k}}) {
    if (size > std::numeric_limits<int32_t>::max()) {
      throw Error(std::string("gemm: ") + name + " = " + std::to_string(size) +
                  " exceeds the BLAS 32-bit index limit (2^31 - 1)");
    }
  }
  JobBuilder job("gemm");
  job.distinct(c, {a, b});
  const float* pa = job.use(a, job.product({m, k}, "a [m, k]"), "a");
  const float* pb = job.use(b, job.product({k, n}, "b [k, n]"), "b");
  float* pc = job.use(c, job.product({m, n}, "c [m, n]"), "c");
  Backend* backend = &a->backend();
  return job.finish([=] {
    backend->gemm(transA, transB, m, n, k, alpha, pa, pb, beta, pc);
    return kNoResult;
  });
}

Job prepareScaleMatrix(const Napi::CallbackInfo& info) {
  Arguments args(info, "scaleMatrix");
  Storage *out = args.storage(0), *x = args.storage(1), *v = args.storage(2);
  const int64_t rows = args.integer(3, 1), cols = args.integer(4, 1);
  const bool perColumn = args.boolean(5);
  JobBuilder job("scaleMatrix");
  job.distinct(out, {v});
  const int64_t size = job.product({rows, cols}, "matrix [rows, cols]");
  float* po = job.use(out, size, "output");
  const float* px = job.use(x, size, "x");
  const float* pv = job.use(v, perColumn ? cols : rows, "scale vector");
  Backend* backend = &out->backend();
  return job.finish([=] {
    backend->scaleMatrix(po, px, pv, rows, cols, perColumn);
    return kNoResult;
  });
}

Job prepareAddRowVector(const Napi::CallbackInfo& info) {
  Arguments args(info, "addRowVector");
  Storage *x = args.storage(0), *v = args.storage(1);
  const int64_t rows = args.integer(2, 1), cols = args.integer(3, 1);
  JobBuilder job("addRowVector");
  job.distinct(x, {v});
  float* px = job.use(x, job.product({rows, cols}, "x [rows, cols]"), "x");
  const float* pv = job.use(v, cols, "row vector");
  Backend* backend = &x->backend();
  return job.finish([=] {
    backend->addRowVector(px, pv, rows, cols);
    return kNoResult;
  });
}

Job prepareSumAxis(const Napi::CallbackInfo& info) {
  Arguments args(info, "sumAxis");
  Storage *out = args.storage(0), *x = args.storage(1);
  const int64_t rows = args.integer(2, 1), cols = args.integer(3, 1);
  const bool overColumns = args.boolean(4);
  const float beta = float(args.number(5));
  JobBuilder job("sumAxis");
  job.distinct(out, {x});
  float* po = job.use(out, overColumns ? rows : cols, "output");
  const float* px = job.use(x, job.product({rows, cols}, "x [rows, cols]"), "x");
  Backend* backend = &out->backend();
  return job.finish([=] {
    backend->sumAxis(po, px, rows, cols, overColumns, beta);
    return kNoResult;
  });
}

Job prepareSoftmaxCrossEntropy(const Napi::CallbackInfo& info) {
  Arguments args(info, "softmaxCrossEntropy");
  Storage *logits = args.storage(0), *labels = args.storage(1);
  const int64_t rows = args.integer(2, 1), classes = args.integer(3, 1);
  Storage* grad = args.optionalStorage(4);
  const float scale = float(args.number(5));
  // Optional: labels equal to it are skipped (any integer, e.g. -100 as torch's default).
  const int64_t ignoreIndex = args.given(6) ? args.integer(6, -kMaxElements) : kNoIgnoreIndex;
  JobBuilder job("softmaxCrossEntropy");
  if (grad) job.distinct(grad, {logits, labels});
  const int64_t size = job.product({rows, classes}, "logits [rows, classes]");
  const float* pl = job.use(logits, size, "logits");
  const float* plab = job.use(labels, rows, "labels");
  float* pg = job.use(grad, size, "grad");
  Backend* backend = &logits->backend();
  return job.finish([=] {
    return backend->softmaxCrossEntropy(pl, plab, rows, classes, ignoreIndex, pg, scale);
  });
}

Job prepareArgmaxRows(const Napi::CallbackInfo& info) {
  Arguments args(info, "argmaxRows");
  Storage *out = args.storage(0), *x = args.storage(1);
  const int64_t rows = args.integer(2, 1), cols = args.integer(3, 1);
  if (cols > (int64_t(1) << 24)) {
    throw Error("argmaxRows: rows of " + std::to_string(cols) +
                " values have indices past 2^24, which float32 cannot hold exactly");
  }
  JobBuilder job("argmaxRows");
  job.distinct(out, {x});
  float* po = job.use(out, rows, "output");
  const float* px = job.use(x, job.product({rows, cols}, "x [rows, cols]"), "x");
  Backend* backend = &out->backend();
  return job.finish([=] {
    backend->argmaxRows(po, px, rows, cols);
    return kNoResult;
  });
}

}  // namespace

std::vector<KernelEntry> matrixKernels() {
  return {
      {"gemm", prepareGemm, true},
      {"scaleMatrix", prepareScaleMatrix, false},
      {"addRowVector", prepareAddRowVector, false},
      {"sumAxis", prepareSumAxis, false},
      {"softmaxCrossEntropy", prepareSoftmaxCrossEntropy, false},
      {"argmaxRows", prepareArgmaxRows, false},
  };
}

}  // namespace binding
}  // namespace tera
