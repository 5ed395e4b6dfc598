// Storage: a reference-counted block of float32 memory on one backend, exposed
// to JavaScript. Tensors in lib/ are views (shape + storage). Memory is freed
// when the last holder releases it or when the garbage collector finalises the
// object, and its size is reported to V8 so large tensors prompt collection.
#pragma once

#include <napi.h>

#include <mutex>

#include "core/backend.h"

namespace tera {
namespace binding {

class Storage : public Napi::ObjectWrap<Storage> {
 public:
  static Napi::Function define(Napi::Env env);
  // The Storage behind `value`, or a thrown Error naming `what` if `value` is not a
  // live Storage.
  static Storage* from(Napi::Value value, const char* what);

  explicit Storage(const Napi::CallbackInfo& info);
  ~Storage() override;
  void Finalize(Napi::Env env) override;

  Backend& backend() const { return *backend_; }
  float* data() const { return data_; }
  int64_t length() const { return length_; }
  bool disposed() const { return data_ == nullptr; }
  // Held by asynchronous kernels so a release() meanwhile cannot free the memory.
  void retain() { ++refs_; }
  void release(Napi::Env env);

 private:
  Napi::Value device(const Napi::CallbackInfo& info);
  Napi::Value length(const Napi::CallbackInfo& info);
  Napi::Value disposedGetter(const Napi::CallbackInfo& info);
  Napi::Value refCount(const Napi::CallbackInfo& info);
  void retainMethod(const Napi::CallbackInfo& info);
  void releaseMethod(const Napi::CallbackInfo& info);
  Napi::Value read(const Napi::CallbackInfo& info);
  void write(const Napi::CallbackInfo& info);
  void copyFrom(const Napi::CallbackInfo& info);
  void freeMemory(Napi::Env env);

  Backend* backend_ = nullptr;
  float* data_ = nullptr;
  int64_t length_ = 0;
  int refs_ = 1;
};

// Kernels on one backend run one at a time (each uses all of that backend's
// threads or the whole GPU stream); asynchronous ones take this lock too.
std::mutex& executionLock(const Backend& backend);

// The backend for a device name ("cpu" or "cuda"); throws if CUDA is unusable.
Backend& backendFor(const std::string& device);

}  // namespace binding
}  // namespace tera
