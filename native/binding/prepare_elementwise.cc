// Preparers of the elementwise kernels (fills, axpby, products, activations)
// and the full reductions (sum, dot). Elementwise outputs may be their own
// inputs: each element is read before it is written.
#include <cmath>
#include <limits>

#include "binding/job.h"
#include "core/errors.h"

namespace tera {
namespace binding {
namespace {

Activation parseActivation(const std::string& name) {
  if (name == "relu") return Activation::Relu;
  if (name == "gelu") return Activation::Gelu;
  if (name == "tanh") return Activation::Tanh;
  if (name == "geluTanh") return Activation::GeluTanh;
  if (name == "silu") return Activation::Silu;
  throw Error("unknown activation '" + name + "': expected relu, gelu, tanh, geluTanh or silu");
}

Job prepareRandomFill(const Napi::CallbackInfo& info) {
  Arguments args(info, "randomFill");
  Storage* out = args.storage(0);
  const std::string kind = args.string(1);
  if (kind != "uniform" && kind != "normal") {
    throw Error("randomFill: distribution must be 'uniform' or 'normal', got '" + kind + "'");
  }
  const uint64_t seed = args.bigUint(2), stream = args.bigUint(3);
  const double a = args.number(4), b = args.number(5);
  // Parameters that would not give the distribution asked for (as float32).
  const double limit = std::numeric_limits<float>::max();
  if (!(std::fabs(a) <= limit && std::fabs(b) <= limit)) {
    throw Error("randomFill: parameters must be finite float32 numbers");
  }
  if (kind == "normal" && b < 0) {
    throw Error("randomFill: the standard deviation must be >= 0, got " + std::to_string(b));
  }
  if (kind == "uniform" && !(a <= b && b - a <= limit)) {
    throw Error("randomFill: uniform needs low <= high with high - low finite in float32");
  }
  JobBuilder job("randomFill");
  float* pout = job.use(out, -1, "output");
  const int64_t count = out->length();
  Backend* backend = &out->backend();
  const Distribution distribution = kind == "normal" ? Distribution::Normal : Distribution::Uniform;
  return job.finish([=] {
    backend->randomFill(pout, count, distribution, seed, stream, float(a), float(b));
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

}  // namespace

std::vector<KernelEntry> elementwiseKernels() {
  return {
      {"randomFill", prepareRandomFill, false},
      {"fill", prepareFill, false},
      {"axpby", prepareAxpby, false},
      {"multiply", prepareMultiply, false},
      {"activationForward", prepareActivationForward, false},
      {"activationBackward", prepareActivationBackward, false},
      {"sum", prepareSum, false},
      {"dot", prepareDot, false},
  };
}

}  // namespace binding
}  // namespace tera
