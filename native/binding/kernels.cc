// Registers every kernel of the prepare_*.cc tables: the synchronous entry runs
// the prepared Job at once under the backend's lock; the *Async entry hands the
// same Job to a JobWorker, which runs it on a libuv worker thread and settles a
// Promise. Both entries share one preparer, so they validate identically.
#include "binding/kernels.h"

#include "binding/errors.h"
#include "binding/job.h"

namespace tera {
namespace binding {
namespace {

Napi::Value resultValue(Napi::Env env, const Result& result) {
  return result ? Napi::Number::New(env, *result) : env.Undefined();
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
  Result result_;
};

void registerKernel(Napi::Env env, Napi::Object exports, const KernelEntry& entry) {
  const Preparer prepare = entry.prepare;
  exports.Set(entry.name, Napi::Function::New(env, [prepare](const Napi::CallbackInfo& info) {
                return guard(info.Env(), [&]() -> Napi::Value {
                  Job job = prepare(info);
                  Result result;
                  {
                    std::lock_guard<std::mutex> lock(executionLock(*job.backend));
                    result = job.work();
                  }
                  return resultValue(info.Env(), result);
                });
              }));
  if (!entry.hasAsync) return;
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

}  // namespace

void registerKernels(Napi::Env env, Napi::Object exports) {
  for (auto table : {matrixKernels, tuckerKernels, elementwiseKernels, optimizerKernels,
                     distributedKernels, transformerKernels}) {
    for (const KernelEntry& entry : table()) registerKernel(env, exports, entry);
  }
}

}  // namespace binding
}  // namespace tera
