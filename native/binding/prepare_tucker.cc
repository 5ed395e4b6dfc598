// Preparers of the Tucker kernels: the single mode product, the scaled Tucker
// reconstruction and the scaling-vector gradient. Outputs never share memory
// with inputs: these kernels read their inputs after writing parts of the output.
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
  JobBuilder job("tuckerReconstruct");
  std::vector<Storage*> inputs = factors;
  inputs.push_back(core);
  inputs.insert(inputs.end(), scales.begin(), scales.end());
  job.distinct(out, inputs);
  TuckerOperands t = useTucker(job, args, "tuckerReconstruct", 1, core, factors, scales);
  float* pout = job.use(out, t.shape.fullSize(), "output");
  const float* pcore = core->data();
  Backend* backend = &core->backend();
  return job.finish([=] {
    backend->tuckerReconstruct(t.shape, pcore, t.factors.data(), t.scales.data(), alpha, pout);
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
  if (int(grads.size()) != t.shape.order) {
    throw Error("tuckerScaleGrad: " + std::to_string(grads.size()) +
                " gradient outputs for order " + std::to_string(t.shape.order));
  }
  std::vector<Storage*> inputs = operands;
  inputs.push_back(gradX);
  std::vector<float*> outs;
  for (int n = 0; n < t.shape.order; ++n) {
    job.distinct(grads[size_t(n)], inputs);
    inputs.push_back(grads[size_t(n)]);  // each gradient output has its own memory
    outs.push_back(job.use(grads[size_t(n)], t.shape.ranks[n], "grads[" + std::to_string(n) + "]"));
  }
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
  };
}

}  // namespace binding
}  // namespace tera
