// Module entry: registers the Storage class, the kernels, thread control, the
// Philox block function (for known-answer tests), backendInfo() and the NCCL
// set-up functions of distributed training.
#include <cblas.h>
#include <napi.h>

#include <cmath>

#include "binding/errors.h"
#include "binding/kernels.h"
#include "binding/storage.h"
#include "core/backend.h"
#include "core/errors.h"
#include "core/philox.h"
#include "cpu/thread_pool.h"
#include "distributed/binding.h"

namespace tera {
namespace binding {
namespace {

Napi::Value setNumThreads(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsNumber()) throw Error("setNumThreads(n) takes a number");
    const double n = info[0].As<Napi::Number>().DoubleValue();
    if (!(n >= 0 && n <= cpu::kMaxThreads) || n != std::floor(n)) {
      throw Error("setNumThreads: " + info[0].ToString().Utf8Value() +
                  " is not an integer in [0, " + std::to_string(cpu::kMaxThreads) +
                  "] (0 restores the default)");
    }
    std::lock_guard<std::mutex> lock(executionLock(cpuBackend()));
    cpu::setNumThreads(int(n));
    return info.Env().Undefined();
  });
}

Napi::Value getNumThreads(const Napi::CallbackInfo& info) {
  return guard(info.Env(),
               [&]() -> Napi::Value { return Napi::Number::New(info.Env(), cpu::numThreads()); });
}

Napi::Value philox4x32(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    if (info.Length() < 2 || !info[0].IsArray() || !info[1].IsArray() ||
        info[0].As<Napi::Array>().Length() != 4 || info[1].As<Napi::Array>().Length() != 2) {
      throw Error("philox4x32(counter, key) takes arrays of 4 and 2 uint32 words");
    }
    auto word = [](Napi::Array a, uint32_t i) {
      Napi::Value v = a.Get(i);
      const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
      if (d < 0 || d > 4294967295.0 || d != double(uint32_t(d)))
        throw Error("philox4x32: words must be uint32");
      return uint32_t(d);
    };
    Napi::Array counter = info[0].As<Napi::Array>(), key = info[1].As<Napi::Array>();
    philox::Block block = {
        {word(counter, 0), word(counter, 1), word(counter, 2), word(counter, 3)}};
    block = philox::philox4x32_10(block, word(key, 0), word(key, 1));
    Napi::Array out = Napi::Array::New(info.Env(), 4);
    for (uint32_t i = 0; i < 4; ++i) out.Set(i, Napi::Number::New(info.Env(), block.v[i]));
    return out;
  });
}

Napi::Object describeBackends(Napi::Env env) {
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("threads", cpu::numThreads());
  cpu.Set("defaultThreads", cpu::defaultNumThreads());
  cpu.Set("blas", std::string(openblas_get_config()));
  cpu.Set("blasCore", std::string(openblas_get_corename()));
  cpu.Set("simd",
          __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? "avx2+fma" : "scalar");

  const CudaStatus status = cudaStatus();
  Napi::Object cuda = Napi::Object::New(env);
  cuda.Set("built", status.built);
  cuda.Set("available", status.available);
  if (!status.reason.empty()) cuda.Set("reason", status.reason);
  if (status.built) cuda.Set("archs", status.archs);
  if (status.available) {
    cuda.Set("device", status.deviceName);
    cuda.Set("computeCapability", status.computeCapability / 10.0);
    cuda.Set("totalMemory", double(status.totalMemory));
    cuda.Set("cublas", status.cublasLibrary);
  }
  if (status.driverVersion) cuda.Set("driverVersion", status.driverVersion);
  if (status.runtimeVersion) cuda.Set("runtimeVersion", status.runtimeVersion);

  Napi::Object result = Napi::Object::New(env);
  result.Set("cpu", cpu);
  result.Set("cuda", cuda);
  result.Set("napiVersion", NAPI_VERSION);
  return result;
}

Napi::Value backendInfo(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value { return describeBackends(info.Env()); });
}

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);
  data->storageConstructor = Napi::Persistent(Storage::define(env));
  Napi::Object global = env.Global();
  Napi::Object hostBuffers = global.Get("WeakMap").As<Napi::Function>().New({});
  data->weakMapSet = Napi::Persistent(hostBuffers.Get("set").As<Napi::Function>());
  data->hostBuffers = Napi::Persistent(hostBuffers);
  data->arrayBuffer = Napi::Persistent(global.Get("ArrayBuffer").As<Napi::Function>());
  Napi::Value buffer = global.Get("Buffer");
  if (buffer.IsObject()) {
    Napi::Value allocUnsafeSlow = buffer.As<Napi::Object>().Get("allocUnsafeSlow");
    if (allocUnsafeSlow.IsFunction()) {
      data->allocUnsafeSlow = Napi::Persistent(allocUnsafeSlow.As<Napi::Function>());
    }
  }
  exports.Set("Storage", data->storageConstructor.Value());
  registerKernels(env, exports);
  exports.Set("setNumThreads", Napi::Function::New(env, setNumThreads));
  exports.Set("getNumThreads", Napi::Function::New(env, getNumThreads));
  exports.Set("philox4x32", Napi::Function::New(env, philox4x32));
  exports.Set("backendInfo", Napi::Function::New(env, backendInfo));
  distributed::registerDistributed(env, exports);
  return exports;
}

}  // namespace binding
}  // namespace tera

static Napi::Object InitTeraAddon(Napi::Env env, Napi::Object exports) {
  return tera::binding::init(env, exports);
}

NODE_API_MODULE(tera, InitTeraAddon)
