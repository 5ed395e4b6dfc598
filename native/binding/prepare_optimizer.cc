// Preparers of the optimiser steps, which update a parameter and its state
// buffers in place from a gradient.
#include "binding/job.h"

namespace tera {
namespace binding {
namespace {

Job prepareAdamwStep(const Napi::CallbackInfo& info) {
  Arguments args(info, "adamwStep");
  Storage *param = args.storage(0), *grad = args.storage(1), *m = args.storage(2),
          *v = args.storage(3);
  AdamWSettings s{float(args.number(4)), float(args.number(5)), float(args.number(6)),
                  float(args.number(7)), float(args.number(8)), args.integer(9, 1)};
  JobBuilder job("adamwStep");
  // Each of param, m and v is written, from grad: all four must be distinct.
  job.distinct(param, {grad, m, v});
  job.distinct(m, {grad, v}, "the first moment");
  job.distinct(v, {grad}, "the second moment");
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
  job.distinct(momentum, {grad}, "the momentum buffer");
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

}  // namespace

std::vector<KernelEntry> optimizerKernels() {
  return {
      {"adamwStep", prepareAdamwStep, false},
      {"sgdStep", prepareSgdStep, false},
  };
}

}  // namespace binding
}  // namespace tera
