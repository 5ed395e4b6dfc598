#include "binding/kernels.h"

#include <functional>
#include <vector>

#include "binding/errors.h"
#include "binding/storage.h"
#include "core/errors.h"
#include "distributed/nccl_comm.h"

namespace tera {
namespace binding {
namespace {

// A validated kernel call: the storages it touches (retained while it runs
// asynchronously) and the work, which returns a number or NaN for "no result".
struct Job {
  Backend* backend = nullptr;
  std::vector<Storage*> storages;
  std::function<double()> work;
};

class Arguments {
 public:
  Arguments(const Napi::CallbackInfo& info, const char* kernel) : info_(info), kernel_(kernel) {}

  std::string where(size_t i) const {
    return std::string(kernel_) + " argument " + std::to_string(i);
  }

  double number(size_t i) const {
    if (!info_[i].IsNumber()) throw Error(where(i) + " must be a number");
    return info_[i].As<Napi::Number>().DoubleValue();
  }

  int64_t integer(size_t i, int64_t minimum) const {
    const double value = number(i);
    if (value != double(int64_t(value)) || value < double(minimum) ||
        value > double(kMaxElements)) {
      throw Error(where(i) + " must be an integer >= " + std::to_string(minimum) + ", got " +
                  info_[i].ToString().Utf8Value());
    }
    return int64_t(value);
  }

  bool boolean(size_t i) const {
    if (!info_[i].IsBoolean()) throw Error(where(i) + " must be a boolean");
    return info_[i].As<Napi::Boolean>().Value();
  }

  std::string string(size_t i) const {
    if (!info_[i].IsString()) throw Error(where(i) + " must be a string");
    return info_[i].As<Napi::String>().Utf8Value();
  }

  uint64_t bigUint(size_t i) const {
    if (!info_[i].IsBigInt()) throw Error(where(i) + " must be a BigInt");
    bool lossless = false;
    const uint64_t value = info_[i].As<Napi::BigInt>().Uint64Value(&lossless);
    if (!lossless) throw Error(where(i) + " must fit in an unsigned 64-bit integer");
    return value;
  }

  std::vector<int64_t> dims(size_t i) const {
    if (!info_[i].IsArray()) throw Error(where(i) + " must be an array of dimensions");
    Napi::Array array = info_[i].As<Napi::Array>();
    std::vector<int64_t> dims(array.Length());
    for (uint32_t k = 0; k < array.Length(); ++k) {
      Napi::Value v = array.Get(k);
      const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
      if (d != double(int64_t(d)) || d < 1 || d > double(kMaxElements)) {
        throw Error(where(i) + "[" + std::to_string(k) + "] must be a positive integer");
      }
      dims[k] = int64_t(d);
    }
    return dims;
  }

  // An array of integers >= minimum (offsets may be 0, unlike dims).
  std::vector<int64_t> integers(size_t i, int64_t minimum) const {
    if (!info_[i].IsArray()) throw Error(where(i) + " must be an array of integers");
    Napi::Array array = info_[i].As<Napi::Array>();
    std::vector<int64_t> out(array.Length());
    for (uint32_t k = 0; k < array.Length(); ++k) {
      Napi::Value v = array.Get(k);
      const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
      if (d != double(int64_t(d)) || d < double(minimum) || d > double(kMaxElements)) {
        throw Error(where(i) + "[" + std::to_string(k) +
                    "] must be an integer >= " + std::to_string(minimum));
      }
      out[k] = int64_t(d);
    }
    return out;
  }

  Storage* storage(size_t i) const { return Storage::from(info_[i], where(i).c_str()); }

  Storage* optionalStorage(size_t i) const {
    return info_[i].IsNull() || info_[i].IsUndefined() ? nullptr : storage(i);
  }

  // An array of storages; entries may be null when allowNull.
  std::vector<Storage*> storages(size_t i, bool allowNull) const {
    if (!info_[i].IsArray()) throw Error(where(i) + " must be an array of tensors");
    Napi::Array array = info_[i].As<Napi::Array>();
    std::vector<Storage*> out(array.Length());
    for (uint32_t k = 0; k < array.Length(); ++k) {
      Napi::Value v = array.Get(k);
      if (allowNull && (v.IsNull() || v.IsUndefined())) continue;
      out[k] = Storage::from(v, (where(i) + "[" + std::to_string(k) + "]").c_str());
    }
    return out;
  }

 private:
  const Napi::CallbackInfo& info_;
  const char* kernel_;
};

// Checks that every storage lives on one backend and has the expected length.
class JobBuilder {
 public:
  explicit JobBuilder(const char* kernel) : kernel_(kernel) {}

  float* use(Storage* s, int64_t expectedLength, const std::string& what) {
    if (!s) return nullptr;
    if (!job_.backend) {
      job_.backend = &s->backend();
    } else if (job_.backend != &s->backend()) {
      throw Error(std::string(kernel_) + ": " + what + " is on " + s->backend().name() +
                  " but the other tensors are on " + job_.backend->name() +
                  "; move them to one device first");
    }
    if (expectedLength >= 0 && s->length() != expectedLength) {
      throw Error(std::string(kernel_) + ": " + what + " has " + std::to_string(s->length()) +
                  " elements, expected " + std::to_string(expectedLength));
    }
    job_.storages.push_back(s);
    return s->data();
  }

  // Outputs of gemm and the Tucker kernels must not share memory with inputs.
  void distinct(Storage* out, const std::vector<Storage*>& inputs) const {
    for (Storage* in : inputs) {
      if (in == out) {
        throw Error(std::string(kernel_) + ": the output tensor must not also be an input");
      }
    }
  }

  Job finish(std::function<double()> work) {
    job_.work = std::move(work);
    return std::move(job_);
  }

 private:
  const char* kernel_;
  Job job_;
};

constexpr double kNoResult = __builtin_nan("");

Activation parseActivation(const std::string& name) {
  if (name == "relu") return Activation::Relu;
  if (name == "gelu") return Activation::Gelu;
  if (name == "tanh") return Activation::Tanh;
  throw Error("unknown activation '" + name + "': expected relu, gelu or tanh");
}

using Preparer = Job (*)(const Napi::CallbackInfo&);

Job prepareGemm(const Napi::CallbackInfo& info) {
  Arguments args(info, "gemm");
  const bool transA = args.boolean(0), transB = args.boolean(1);
  const int64_t m = args.integer(2, 1), n = args.integer(3, 1), k = args.integer(4, 1);
  const float alpha = float(args.number(5));
  Storage *a = args.storage(6), *b = args.storage(7);
  const float beta = float(args.number(8));
  Storage* c = args.storage(9);
  JobBuilder job("gemm");
  job.distinct(c, {a, b});
  const float* pa = job.use(a, m * k, "a");
  const float* pb = job.use(b, k * n, "b");
  float* pc = job.use(c, m * n, "c");
  Backend* backend = &a->backend();
  return job.finish([=] {
    backend->gemm(transA, transB, m, n, k, alpha, pa, pb, beta, pc);
    return kNoResult;
  });
}

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
  const float* pm = job.use(matrix, rows * shape[size_t(mode)], "matrix");
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
    t.factors.push_back(
        job.use(factors[size_t(n)], t.shape.modes[n] * t.shape.ranks[n], "factors" + index));
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
  TuckerOperands t = useTucker(job, args, "tuckerScaleGrad", 2, core, factors, scales);
  job.use(gradX, t.shape.fullSize(), "gradX");
  if (int(grads.size()) != t.shape.order) {
    throw Error("tuckerScaleGrad: " + std::to_string(grads.size()) +
                " gradient outputs for order " + std::to_string(t.shape.order));
  }
  std::vector<Storage*> inputs = factors;
  inputs.push_back(core);
  inputs.push_back(gradX);
  inputs.insert(inputs.end(), scales.begin(), scales.end());
  std::vector<float*> outs;
  for (int n = 0; n < t.shape.order; ++n) {
    job.distinct(grads[size_t(n)], inputs);
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

Job prepareRandomFill(const Napi::CallbackInfo& info) {
  Arguments args(info, "randomFill");
  Storage* out = args.storage(0);
  const std::string kind = args.string(1);
  if (kind != "uniform" && kind != "normal") {
    throw Error("randomFill: distribution must be 'uniform' or 'normal', got '" + kind + "'");
  }
  const uint64_t seed = args.bigUint(2), stream = args.bigUint(3);
  const float a = float(args.number(4)), b = float(args.number(5));
  JobBuilder job("randomFill");
  float* pout = job.use(out, -1, "output");
  const int64_t count = out->length();
  Backend* backend = &out->backend();
  const Distribution distribution = kind == "normal" ? Distribution::Normal : Distribution::Uniform;
  return job.finish([=] {
    backend->randomFill(pout, count, distribution, seed, stream, a, b);
    return kNoResult;
  });
}

Job prepareFill(const Napi::CallbackInfo& info) {
  Arguments args(info, "fill");
  Storage* out = args.storage(0);
  const float value = float(args.number(1));
  JobBuilder job("fill");
  float* p = job.use(out, -1, "output");
  const int64_t count = out->length();
  Backend* backend = &out->backend();
  return job.finish([=] {
    backend->fill(p, count, value);
    return kNoResult;
  });
}

Job prepareAxpby(const Napi::CallbackInfo& info) {
  Arguments args(info, "axpby");
  Storage *y = args.storage(0), *x = args.storage(1);
  const float a = float(args.number(2)), b = float(args.number(3));
  JobBuilder job("axpby");
  float* py = job.use(y, -1, "y");
  const float* px = job.use(x, y->length(), "x");
  const int64_t count = y->length();
  Backend* backend = &y->backend();
  return job.finish([=] {
    backend->axpby(py, px, count, a, b);
    return kNoResult;
  });
}

Job prepareMultiply(const Napi::CallbackInfo& info) {
  Arguments args(info, "multiply");
  Storage *out = args.storage(0), *x = args.storage(1), *y = args.storage(2);
  JobBuilder job("multiply");
  float* po = job.use(out, -1, "output");
  const float* px = job.use(x, out->length(), "x");
  const float* py = job.use(y, out->length(), "y");
  const int64_t count = out->length();
  Backend* backend = &out->backend();
  return job.finish([=] {
    backend->multiply(po, px, py, count);
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
  float* po = job.use(out, rows * cols, "output");
  const float* px = job.use(x, rows * cols, "x");
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
  float* px = job.use(x, rows * cols, "x");
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
  const float* px = job.use(x, rows * cols, "x");
  Backend* backend = &out->backend();
  return job.finish([=] {
    backend->sumAxis(po, px, rows, cols, overColumns, beta);
    return kNoResult;
  });
}

Job prepareActivationForward(const Napi::CallbackInfo& info) {
  Arguments args(info, "activationForward");
  const Activation activation = parseActivation(args.string(0));
  Storage *y = args.storage(1), *x = args.storage(2);
  JobBuilder job("activationForward");
  float* py = job.use(y, -1, "output");
  const float* px = job.use(x, y->length(), "x");
  const int64_t count = y->length();
  Backend* backend = &y->backend();
  return job.finish([=] {
    backend->activationForward(activation, py, px, count);
    return kNoResult;
  });
}

Job prepareActivationBackward(const Napi::CallbackInfo& info) {
  Arguments args(info, "activationBackward");
  const Activation activation = parseActivation(args.string(0));
  Storage *dx = args.storage(1), *x = args.storage(2), *dy = args.storage(3);
  const float beta = float(args.number(4));
  JobBuilder job("activationBackward");
  float* pdx = job.use(dx, -1, "dx");
  const float* px = job.use(x, dx->length(), "x");
  const float* pdy = job.use(dy, dx->length(), "dy");
  const int64_t count = dx->length();
  Backend* backend = &dx->backend();
  return job.finish([=] {
    backend->activationBackward(activation, pdx, px, pdy, count, beta);
    return kNoResult;
  });
}

Job prepareSum(const Napi::CallbackInfo& info) {
  Arguments args(info, "sum");
  Storage* x = args.storage(0);
  JobBuilder job("sum");
  const float* px = job.use(x, -1, "x");
  const int64_t count = x->length();
  Backend* backend = &x->backend();
  return job.finish([=] { return backend->sum(px, count); });
}

Job prepareDot(const Napi::CallbackInfo& info) {
  Arguments args(info, "dot");
  Storage *x = args.storage(0), *y = args.storage(1);
  JobBuilder job("dot");
  const float* px = job.use(x, -1, "x");
  const float* py = job.use(y, x->length(), "y");
  const int64_t count = x->length();
  Backend* backend = &x->backend();
  return job.finish([=] { return backend->dot(px, py, count); });
}

Job prepareSoftmaxCrossEntropy(const Napi::CallbackInfo& info) {
  Arguments args(info, "softmaxCrossEntropy");
  Storage *logits = args.storage(0), *labels = args.storage(1);
  const int64_t rows = args.integer(2, 1), classes = args.integer(3, 1);
  Storage* grad = args.optionalStorage(4);
  const float scale = float(args.number(5));
  JobBuilder job("softmaxCrossEntropy");
  if (grad) job.distinct(grad, {logits, labels});
  const float* pl = job.use(logits, rows * classes, "logits");
  const float* plab = job.use(labels, rows, "labels");
  float* pg = job.use(grad, rows * classes, "grad");
  Backend* backend = &logits->backend();
  return job.finish(
      [=] { return backend->softmaxCrossEntropy(pl, plab, rows, classes, pg, scale); });
}

Job prepareArgmaxRows(const Napi::CallbackInfo& info) {
  Arguments args(info, "argmaxRows");
  Storage *out = args.storage(0), *x = args.storage(1);
  const int64_t rows = args.integer(2, 1), cols = args.integer(3, 1);
  JobBuilder job("argmaxRows");
  job.distinct(out, {x});
  float* po = job.use(out, rows, "output");
  const float* px = job.use(x, rows * cols, "x");
  Backend* backend = &out->backend();
  return job.finish([=] {
    backend->argmaxRows(po, px, rows, cols);
    return kNoResult;
  });
}

Job prepareAdamwStep(const Napi::CallbackInfo& info) {
  Arguments args(info, "adamwStep");
  Storage *param = args.storage(0), *grad = args.storage(1), *m = args.storage(2),
          *v = args.storage(3);
  AdamWSettings s{float(args.number(4)), float(args.number(5)), float(args.number(6)),
                  float(args.number(7)), float(args.number(8)), args.integer(9, 1)};
  JobBuilder job("adamwStep");
  job.distinct(param, {grad, m, v});
  float* pp = job.use(param, -1, "param");
  const int64_t count = param->length();
  const float* pg = job.use(grad, count, "grad");
  float* pm = job.use(m, count, "first moment");
  float* pv = job.use(v, count, "second moment");
  Backend* backend = &param->backend();
  return job.finish([=] {
    backend->adamwStep(pp, pg, pm, pv, count, s);
    return kNoResult;
  });
}

Job prepareSgdStep(const Napi::CallbackInfo& info) {
  Arguments args(info, "sgdStep");
  Storage *param = args.storage(0), *grad = args.storage(1), *momentum = args.optionalStorage(2);
  SgdSettings s{float(args.number(3)), float(args.number(4)), float(args.number(5)),
                args.boolean(6)};
  JobBuilder job("sgdStep");
  job.distinct(param, {grad, momentum});
  float* pp = job.use(param, -1, "param");
  const int64_t count = param->length();
  const float* pg = job.use(grad, count, "grad");
  float* pm = job.use(momentum, count, "momentum buffer");
  Backend* backend = &param->backend();
  return job.finish([=] {
    backend->sgdStep(pp, pg, pm, count, s);
    return kNoResult;
  });
}

// --- Distributed training (lib/distributed) -----------------------------------

// packInto(bucket, sources, offsets, scale): bucket[offsets[i] ...] = scale * sources[i];
// unpackFrom(bucket, targets, offsets, scale): targets[i] = scale * bucket[offsets[i] ...].
// One flat bucket per collective instead of one call per tensor. The bucket is
// a tensor on the tensors' device, or for CPU tensors a Float32Array: the host
// buffer MPI reduces in place (these kernels are synchronous, so JavaScript
// holds the array while they run).
Job prepareBucket(const Napi::CallbackInfo& info, const char* kernel, bool pack) {
  Arguments args(info, kernel);
  const std::vector<Storage*> tensors = args.storages(1, false);
  const std::vector<int64_t> offsets = args.integers(2, 0);
  const float scale = float(args.number(3));
  if (tensors.empty()) throw Error(std::string(kernel) + ": no tensors");
  if (offsets.size() != tensors.size()) {
    throw Error(std::string(kernel) + ": " + std::to_string(tensors.size()) + " tensors but " +
                std::to_string(offsets.size()) + " offsets");
  }
  JobBuilder job(kernel);
  float* pb = nullptr;
  int64_t bucketLength = 0;
  if (info[0].IsTypedArray()) {
    if (info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
      throw Error(std::string(kernel) + ": the bucket must be a tensor or a Float32Array");
    }
    if (tensors[0]->backend().device() != Device::Cpu) {
      throw Error(std::string(kernel) +
                  ": a Float32Array bucket takes CPU tensors; tensor 0 is on " +
                  tensors[0]->backend().name());
    }
    Napi::Float32Array host = info[0].As<Napi::Float32Array>();
    pb = host.Data();
    bucketLength = int64_t(host.ElementLength());
  } else {
    Storage* bucket = args.storage(0);
    job.distinct(bucket, tensors);
    pb = job.use(bucket, -1, "bucket");
    bucketLength = bucket->length();
  }
  std::vector<std::pair<float*, int64_t>> segments;  // (tensor data, count), by offset
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string name = (pack ? "sources[" : "targets[") + std::to_string(i) + "]";
    float* p = job.use(tensors[i], -1, name);
    const int64_t count = tensors[i]->length();
    if (offsets[i] > bucketLength - count) {
      throw Error(std::string(kernel) + ": " + name + " (" + std::to_string(count) +
                  " elements at offset " + std::to_string(offsets[i]) +
                  ") does not fit in the bucket of " + std::to_string(bucketLength));
    }
    segments.emplace_back(p, count);
  }
  Backend* backend = &tensors[0]->backend();
  return job.finish([=] {
    for (size_t i = 0; i < segments.size(); ++i) {
      float* slot = pb + offsets[i];
      float* dst = pack ? slot : segments[i].first;
      const float* src = pack ? segments[i].first : slot;
      if (scale == 1.0f) {
        backend->copy(dst, src, segments[i].second);
      } else {
        backend->axpby(dst, src, segments[i].second, scale, 0.0f);
      }
    }
    return kNoResult;
  });
}

Job preparePackInto(const Napi::CallbackInfo& info) {
  return prepareBucket(info, "packInto", true);
}
Job prepareUnpackFrom(const Napi::CallbackInfo& info) {
  return prepareBucket(info, "unpackFrom", false);
}

// The NCCL collectives work in place on one CUDA tensor (native/distributed/nccl_comm.h).
struct NcclOperand {
  Backend* backend;
  float* data;
  int64_t count;
  double timeoutSeconds;
};

NcclOperand useNcclOperand(JobBuilder& job, const Arguments& args, const char* kernel,
                           size_t timeoutArg) {
  Storage* data = args.storage(0);
  if (data->backend().device() != Device::Cuda) {
    throw Error(std::string(kernel) + ": NCCL moves CUDA tensors; this one is on " +
                data->backend().name());
  }
  const double timeout = args.number(timeoutArg);
  if (!(timeout > 0)) throw Error(std::string(kernel) + ": the timeout must be positive");
  return {&data->backend(), job.use(data, -1, "data"), data->length(), timeout};
}

distributed::ReduceOp parseReduceOp(const std::string& name) {
  if (name == "sum") return distributed::ReduceOp::Sum;
  if (name == "max") return distributed::ReduceOp::Max;
  if (name == "min") return distributed::ReduceOp::Min;
  throw Error("ncclAllReduce: op must be 'sum', 'max' or 'min', got '" + name + "'");
}

Job prepareNcclAllReduce(const Napi::CallbackInfo& info) {
  Arguments args(info, "ncclAllReduce");
  const std::string name = args.string(1);
  const distributed::ReduceOp op = parseReduceOp(name);
  JobBuilder job("ncclAllReduce");
  const NcclOperand x = useNcclOperand(job, args, "ncclAllReduce", 2);
  return job.finish([=] {
    distributed::ncclAllReduce(*x.backend, x.data, x.count, op, x.timeoutSeconds);
    return kNoResult;
  });
}

Job prepareNcclBroadcast(const Napi::CallbackInfo& info) {
  Arguments args(info, "ncclBroadcast");
  const int root = int(args.integer(1, 0));
  JobBuilder job("ncclBroadcast");
  const NcclOperand x = useNcclOperand(job, args, "ncclBroadcast", 2);
  return job.finish([=] {
    distributed::ncclBroadcast(*x.backend, x.data, x.count, root, x.timeoutSeconds);
    return kNoResult;
  });
}

Napi::Value resultValue(Napi::Env env, double result) {
  return result != result ? env.Undefined() : Napi::Number::New(env, result);
}

class JobWorker : public Napi::AsyncWorker {
 public:
  JobWorker(Napi::Env env, Job job, std::vector<Napi::ObjectReference> holders)
      : Napi::AsyncWorker(env, "tera-peft kernel"),
        deferred_(Napi::Promise::Deferred::New(env)),
        job_(std::move(job)),
        holders_(std::move(holders)) {
    for (Storage* s : job_.storages) s->retain();
  }

  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    try {
      std::lock_guard<std::mutex> lock(executionLock(*job_.backend));
      result_ = job_.work();
      job_.backend->synchronize();
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }

  void OnOK() override {
    releaseAll();
    deferred_.Resolve(resultValue(Env(), result_));
  }

  void OnError(const Napi::Error& error) override {
    releaseAll();
    deferred_.Reject(error.Value());
  }

 private:
  void releaseAll() {
    for (Storage* s : job_.storages) s->release(Env());
  }

  Napi::Promise::Deferred deferred_;
  Job job_;
  std::vector<Napi::ObjectReference> holders_;  // keep the storages from being collected
  double result_ = kNoResult;
};

struct KernelEntry {
  const char* name;
  Preparer prepare;
  bool hasAsync;
};

const KernelEntry kKernels[] = {
    {"gemm", prepareGemm, true},
    {"modeProduct", prepareModeProduct, true},
    {"tuckerReconstruct", prepareTuckerReconstruct, true},
    {"tuckerScaleGrad", prepareTuckerScaleGrad, true},
    {"randomFill", prepareRandomFill, false},
    {"fill", prepareFill, false},
    {"axpby", prepareAxpby, false},
    {"multiply", prepareMultiply, false},
    {"scaleMatrix", prepareScaleMatrix, false},
    {"addRowVector", prepareAddRowVector, false},
    {"sumAxis", prepareSumAxis, false},
    {"activationForward", prepareActivationForward, false},
    {"activationBackward", prepareActivationBackward, false},
    {"sum", prepareSum, false},
    {"dot", prepareDot, false},
    {"softmaxCrossEntropy", prepareSoftmaxCrossEntropy, false},
    {"argmaxRows", prepareArgmaxRows, false},
    {"adamwStep", prepareAdamwStep, false},
    {"sgdStep", prepareSgdStep, false},
    {"packInto", preparePackInto, false},
    {"unpackFrom", prepareUnpackFrom, false},
    {"ncclAllReduce", prepareNcclAllReduce, true},
    {"ncclBroadcast", prepareNcclBroadcast, true},
};

}  // namespace

void registerKernels(Napi::Env env, Napi::Object exports) {
  for (const KernelEntry& entry : kKernels) {
    const Preparer prepare = entry.prepare;
    exports.Set(entry.name, Napi::Function::New(env, [prepare](const Napi::CallbackInfo& info) {
                  return guard(info.Env(), [&]() -> Napi::Value {
                    Job job = prepare(info);
                    double result;
                    {
                      std::lock_guard<std::mutex> lock(executionLock(*job.backend));
                      result = job.work();
                    }
                    return resultValue(info.Env(), result);
                  });
                }));
    if (!entry.hasAsync) continue;
    exports.Set(std::string(entry.name) + "Async",
                Napi::Function::New(env, [prepare](const Napi::CallbackInfo& info) {
                  return guard(info.Env(), [&]() -> Napi::Value {
                    Job job = prepare(info);
                    std::vector<Napi::ObjectReference> holders;
                    for (Storage* s : job.storages) holders.push_back(Napi::Persistent(s->Value()));
                    auto* worker = new JobWorker(info.Env(), std::move(job), std::move(holders));
                    Napi::Promise promise = worker->promise();
                    worker->Queue();
                    return promise;
                  });
                }));
  }
}

}  // namespace binding
}  // namespace tera
