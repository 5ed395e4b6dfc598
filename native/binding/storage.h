// Storage: a reference-counted block of float32 memory on one backend, exposed
// to JavaScript. Tensors in lib/ are views (shape + storage).
//
// Who owns the memory:
// - CPU: a V8 ArrayBuffer, reachable only through a private WeakMap keyed by
//   the storage object. V8 therefore counts the bytes as external memory,
//   collects dropped storages under memory pressure and frees their buffers
//   during garbage collection itself. Memory freed by an N-API finalizer would
//   wait for the event loop (Node defers those finalizers), so a synchronous
//   loop dropping tensors would grow without bound.
// - CUDA: device memory from the backend, reported to V8 with
//   AdjustExternalMemory and freed by the finalizer.
// release() down to zero references frees the memory at once on both (the CPU
// buffer is detached, which returns its memory to the allocator).
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

  // JavaScript: new Storage(length, device, uninitialized = false). An
  // uninitialized storage is for outputs that a kernel overwrites entirely.
  explicit Storage(const Napi::CallbackInfo& info);
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
  void allocateHost(Napi::Env env, bool zeroFill);
  void freeMemory(Napi::Env env);

  Backend* backend_ = nullptr;
  float* data_ = nullptr;
  int64_t length_ = 0;
  int refs_ = 1;
  napi_ref hostBuffer_ = nullptr;  // CPU only; weak: the WeakMap entry keeps the buffer alive
};

// Kernels on one backend run one at a time (each uses all of that backend's
// threads or the whole GPU stream); asynchronous ones take this lock too.
std::mutex& executionLock(const Backend& backend);

// The backend for a device name ("cpu" or "cuda"); throws if CUDA is unusable.
Backend& backendFor(const std::string& device);

}  // namespace binding
}  // namespace tera
