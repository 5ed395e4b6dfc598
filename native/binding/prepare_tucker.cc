// Preparers of the Tucker kernels: the single mode product, the scaled Tucker
// reconstruction, the scaling-vector gradients (from the full-size gradient or
// from its core-space projection), and the factored path's Kronecker row
// products and scalings. Outputs never share memory with inputs (kroneckerScale
// aside, which may work in place): these kernels read their inputs after
// writing parts of the output.
#include "binding/job.h"
#include "core/errors.h"

namespace tera {
namespace binding {
namespace {

Job prepareModeProduct(const Napi::CallbackInfo& info) {
  Arguments args(info, "modeProduct");
  Storage* x = args.storage(0);
  const std::vector<int64_t> shape = args.dims(1);
  const int64_t mode = args.integer(2, 0);
  Storage* matrix = args.storage(3);
  const int64_t rows = args.integer(4, 1);
  Storage* scale = args.optionalStorage(5);
  Storage* y = args.storage(6);
  if (shape.empty() || shape.size() > size_t(kMaxOrder)) {
    throw Error("modeProduct: tensor order must be 1.." + std::to_string(kMaxOrder));
  }
  if (mode >= int64_t(shape.size())) {
    throw Error("modeProduct: mode " + std::to_string(mode) + " is out of range for order " +
                std::to_string(shape.size()));
  }
  std::vector<int64_t> outShape = shape;
  outShape[size_t(mode)] = rows;
  const int64_t inSize = checkedProduct(shape.data(), int(shape.size()), "modeProduct input");
  const int64_t outSize =
      checkedProduct(outShape.data(), int(outShape.size()), "modeProduct output");
  JobBuilder job("modeProduct");
  job.distinct(y, {x, matrix, scale});
  const float* px = job.use(x, inSize, "x");
  const float* pm =
      job.use(matrix, job.product({rows, shape[size_t(mode)]}, "matrix [rows, K]"), "matrix");
  const float* ps = job.use(scale, shape[size_t(mode)], "scale");
  float* py = job.use(y, outSize, "output");
  Backend* backend = &x->backend();
  const int order = int(shape.size());
  return job.finish([=] {
    backend->modeProduct(shape.data(), order, int(mode), px, pm, rows, ps, py);
    return kNoResult;
  });
}

// Shared by reconstruction and the scale gradient: the Tucker shape and the
// per-mode factor / scale pointers, validated against the core.
struct TuckerOperands {
  TuckerShape shape;
  std::vector<const float*> factors, scales;
};

TuckerOperands useTucker(JobBuilder& job, const Arguments& args, const char* kernel,
                         size_t modesArg, Storage* core, const std::vector<Storage*>& factors,
                         const std::vector<Storage*>& scales) {
  TuckerOperands t;
  t.shape = TuckerShape::make(args.dims(modesArg), args.dims(modesArg + 1));
  const int N = t.shape.order;
  if (int(factors.size()) != N) {
    throw Error(std::string(kernel) + ": " + std::to_string(factors.size()) +
                " factors for a core of order " + std::to_string(N));
  }
  if (int(scales.size()) > N) {
    throw Error(std::string(kernel) + ": " + std::to_string(scales.size()) +
                " scale vectors for order " + std::to_string(N));
  }
  job.use(core, t.shape.coreSize(), "core");
  for (int n = 0; n < N; ++n) {
    const std::string index = "[" + std::to_string(n) + "]";
    const int64_t factorSize = job.product({t.shape.modes[n], t.shape.ranks[n]}, "factors" + index);
    t.factors.push_back(job.use(factors[size_t(n)], factorSize, "factors" + index));
    Storage* s = n < int(scales.size()) ? scales[size_t(n)] : nullptr;
    t.scales.push_back(job.use(s, t.shape.ranks[n], "scales" + index));
  }
  return t;
}

Job prepareTuckerReconstruct(const Napi::CallbackInfo& info) {
  Arguments args(info, "tuckerReconstruct");
  Storage* core = args.storage(0);
  const std::vector<Storage*> factors = args.storages(3, false);
  const std::vector<Storage*> scales = args.storages(4, true);
  const float alpha = float(args.number(5));
  Storage* out = args.storage(6);
  Storage* base = args.optionalStorage(7);
  JobBuilder job("tuckerReconstruct");
  std::vector<Storage*> inputs = factors;
  inputs.push_back(core);
  inputs.insert(inputs.end(), scales.begin(), scales.end());
  inputs.push_back(base);
  job.distinct(out, inputs);
  TuckerOperands t = useTucker(job, args, "tuckerReconstruct", 1, core, factors, scales);
  float* pout = job.use(out, t.shape.fullSize(), "output");
  const float* pbase = job.use(base, t.shape.fullSize(), "base");
  const float* pcore = core->data();
  Backend* backend = &core->backend();
  return job.finish([=] {
    backend->tuckerReconstruct(t.shape, pcore, t.factors.data(), t.scales.data(), alpha, pout,
                               pbase);
    return kNoResult;
  });
}

// One gradient output per entry of `ranks`, each with its own memory, distinct
// from every input.
std::vector<float*> useGradients(JobBuilder& job, const char* kernel,
                                 const std::vector<Storage*>& grads,
                                 const std::vector<int64_t>& ranks, std::vector<Storage*> inputs) {
  if (grads.size() != ranks.size()) {
    throw Error(std::string(kernel) + ": " + std::to_string(grads.size()) +
                " gradient outputs for order " + std::to_string(ranks.size()));
  }
  std::vector<float*> outs;
  for (size_t n = 0; n < ranks.size(); ++n) {
    job.distinct(grads[n], inputs);
    inputs.push_back(grads[n]);
    outs.push_back(job.use(grads[n], ranks[n], "grads[" + std::to_string(n) + "]"));
  }
  return outs;
}

// Ranks (an array of 1..8 positive sizes) and one optional scale vector per rank.
struct ScaledRanks {
  std::vector<int64_t> ranks;
  std::vector<const float*> scales;
  int64_t size = 1;  // the product of the ranks
};

ScaledRanks useScaledRanks(JobBuilder& job, const Arguments& args, const char* kernel,
                           size_t ranksArg, const std::vector<Storage*>& scales) {
  ScaledRanks s;
  s.ranks = args.dims(ranksArg);
  if (s.ranks.empty() || s.ranks.size() > size_t(kMaxOrder)) {
    throw Error(std::string(kernel) + ": " + std::to_string(s.ranks.size()) +
                " ranks; orders 1 to " + std::to_string(kMaxOrder) + " are supported");
  }
  if (scales.size() != s.ranks.size()) {
    throw Error(std::string(kernel) + ": " + std::to_string(scales.size()) + " scale vectors for " +
                std::to_string(s.ranks.size()) + " ranks");
  }
  s.size = checkedProduct(s.ranks.data(), int(s.ranks.size()), "the product of the ranks");
  for (size_t n = 0; n < s.ranks.size(); ++n) {
    s.scales.push_back(job.use(scales[n], s.ranks[n], "scales[" + std::to_string(n) + "]"));
  }
  return s;
}

Job prepareTuckerCoreGrad(const Napi::CallbackInfo& info) {
  Arguments args(info, "tuckerCoreGrad");
  Storage* z = args.storage(0);
  Storage* core = args.storage(1);
  const std::vector<Storage*> scales = args.storages(3, true);
  const std::vector<Storage*> grads = args.storages(4, false);
  JobBuilder job("tuckerCoreGrad");
  const ScaledRanks s = useScaledRanks(job, args, "tuckerCoreGrad", 2, scales);
  const float* pz = job.use(z, s.size, "z");
  const float* pcore = job.use(core, s.size, "core");
  std::vector<Storage*> inputs = scales;
  inputs.push_back(z);
  inputs.push_back(core);
  const std::vector<float*> outs = useGradients(job, "tuckerCoreGrad", grads, s.ranks, inputs);
  Backend* backend = &z->backend();
  return job.finish([=] {
    backend->tuckerCoreGrad(int(s.ranks.size()), s.ranks.data(), pz, pcore, s.scales.data(),
                            outs.data());
    return kNoResult;
  });
}

Job prepareKroneckerRows(const Napi::CallbackInfo& info) {
  Arguments args(info, "kroneckerRows");
  Storage* x = args.storage(0);
  const int64_t rows = args.integer(1, 1);
  const std::vector<Storage*> factors = args.storages(4, false);
  const std::vector<Storage*> scales = args.storages(5, true);
  const float alpha = float(args.number(6));
  const bool contract = args.boolean(7);
  Storage* y = args.storage(8);
  JobBuilder job("kroneckerRows");
  std::vector<Storage*> inputs = factors;
  inputs.insert(inputs.end(), scales.begin(), scales.end());
  inputs.push_back(x);
  job.distinct(y, inputs);
  // Validated like a Tucker problem whose "core" is one row of x or y.
  const TuckerShape shape = TuckerShape::make(args.dims(2), args.dims(3));
  const int N = shape.order;
  if (int(factors.size()) != N || int(scales.size()) != N) {
    throw Error("kroneckerRows: " + std::to_string(factors.size()) + " factors and " +
                std::to_string(scales.size()) + " scale vectors for " + std::to_string(N) +
                " modes");
  }
  std::vector<const float*> pfactors, pscales;
  for (int n = 0; n < N; ++n) {
    const std::string index = "[" + std::to_string(n) + "]";
    pfactors.push_back(job.use(factors[size_t(n)],
                               job.product({shape.modes[n], shape.ranks[n]}, "factors" + index),
                               "factors" + index));
    pscales.push_back(job.use(scales[size_t(n)], shape.ranks[n], "scales" + index));
  }
  const int64_t inRow = contract ? shape.fullSize() : shape.coreSize();
  const int64_t outRow = contract ? shape.coreSize() : shape.fullSize();
  const float* px = job.use(x, job.product({rows, inRow}, "x [rows, row size]"), "x");
  float* py = job.use(y, job.product({rows, outRow}, "y [rows, row size]"), "y");
  Backend* backend = &x->backend();
  return job.finish([=] {
    backend->kroneckerRows(rows, shape, pfactors.data(), pscales.data(), alpha, contract, px, py);
    return kNoResult;
  });
}

Job prepareKroneckerScale(const Napi::CallbackInfo& info) {
  Arguments args(info, "kroneckerScale");
  Storage* x = args.storage(0);
  const int64_t rows = args.integer(1, 1);
  const std::vector<Storage*> scales = args.storages(3, true);
  const float alpha = float(args.number(4));
  Storage* y = args.storage(5);
  JobBuilder job("kroneckerScale");
  job.distinct(y, scales);  // y may be x: the scaling is elementwise
  const ScaledRanks s = useScaledRanks(job, args, "kroneckerScale", 2, scales);
  const int64_t size = job.product({rows, s.size}, "x [rows, prod ranks]");
  const float* px = job.use(x, size, "x");
  float* py = job.use(y, size, "y");
  Backend* backend = &x->backend();
  return job.finish([=] {
    backend->kroneckerScale(rows, int(s.ranks.size()), s.ranks.data(), s.scales.data(), alpha, px,
                            py);
    return kNoResult;
  });
}

Job prepareKroneckerScaleGrad(const Napi::CallbackInfo& info) {
  Arguments args(info, "kroneckerScaleGrad");
  Storage* a = args.storage(0);
  Storage* b = args.storage(1);
  const int64_t rows = args.integer(2, 1);
  const std::vector<Storage*> scales = args.storages(4, true);
  const float alpha = float(args.number(5));
  const std::vector<Storage*> grads = args.storages(6, false);
  JobBuilder job("kroneckerScaleGrad");
  const ScaledRanks s = useScaledRanks(job, args, "kroneckerScaleGrad", 3, scales);
  const int64_t size = job.product({rows, s.size}, "a [rows, prod ranks]");
  const float* pa = job.use(a, size, "a");
  const float* pb = job.use(b, size, "b");
  std::vector<Storage*> inputs = scales;
  inputs.push_back(a);
  inputs.push_back(b);
  const std::vector<float*> outs = useGradients(job, "kroneckerScaleGrad", grads, s.ranks, inputs);
  Backend* backend = &a->backend();
  return job.finish([=] {
    backend->kroneckerScaleGrad(rows, int(s.ranks.size()), s.ranks.data(), pa, pb, s.scales.data(),
                                alpha, outs.data());
    return kNoResult;
  });
}

Job prepareTuckerScaleGrad(const Napi::CallbackInfo& info) {
  Arguments args(info, "tuckerScaleGrad");
  Storage* gradX = args.storage(0);
  Storage* core = args.storage(1);
  const std::vector<Storage*> factors = args.storages(4, false);
  const std::vector<Storage*> scales = args.storages(5, true);
  const std::vector<Storage*> grads = args.storages(6, false);
  const bool overwriteGradX = args.boolean(7);
  JobBuilder job("tuckerScaleGrad");
  std::vector<Storage*> operands = factors;
  operands.push_back(core);
  operands.insert(operands.end(), scales.begin(), scales.end());
  // Overwritten, gradX is the projection's workspace: if it were also the core, a
  // factor or a scale vector, the kernel would read its own scratch (Z * Z, not Z * G).
  if (overwriteGradX) job.distinct(gradX, operands, "gradX, overwritten as workspace,");
  TuckerOperands t = useTucker(job, args, "tuckerScaleGrad", 2, core, factors, scales);
  job.use(gradX, t.shape.fullSize(), "gradX");
  std::vector<Storage*> inputs = operands;
  inputs.push_back(gradX);
  const std::vector<float*> outs =
      useGradients(job, "tuckerScaleGrad", grads,
                   std::vector<int64_t>(t.shape.ranks, t.shape.ranks + t.shape.order), inputs);
  const float* pcore = core->data();
  float* pgrad = gradX->data();
  Backend* backend = &core->backend();
  return job.finish([=] {
    backend->tuckerScaleGrad(t.shape, pgrad, pcore, t.factors.data(), t.scales.data(), outs.data(),
                             overwriteGradX);
    return kNoResult;
  });
}

}  // namespace

std::vector<KernelEntry> tuckerKernels() {
  return {
      {"modeProduct", prepareModeProduct, true},
      {"tuckerReconstruct", prepareTuckerReconstruct, true},
      {"tuckerScaleGrad", prepareTuckerScaleGrad, true},
      {"tuckerCoreGrad", prepareTuckerCoreGrad, true},
      {"kroneckerRows", prepareKroneckerRows, true},
      {"kroneckerScale", prepareKroneckerScale, true},
      {"kroneckerScaleGrad", prepareKroneckerScaleGrad, true},
  };
}

}  // namespace binding
}  // namespace tera
