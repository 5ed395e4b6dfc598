#include "binding/storage.h"

#include <sys/mman.h>

#include <cstdint>

#include "binding/errors.h"
#include "core/errors.h"

namespace tera {
namespace binding {

namespace {

// CPU storages start on a cache line, as vector loads and stores prefer; the
// buffer is this much longer so the aligned start always fits.
constexpr size_t kHostAlignment = 64;

// An ArrayBuffer of `bytes` that Node has not zero-filled (Buffer.allocUnsafeSlow
// gives each call its own buffer), or nullptr to fall back to a zero-filled one
// (also when the size exceeds Buffer's limit, 4 GiB on Node 20).
napi_value uninitializedBuffer(Napi::Env env, size_t bytes) {
  AddonData* addon = env.GetInstanceData<AddonData>();
  if (addon->allocUnsafeSlow.IsEmpty()) return nullptr;
  Napi::Value view;
  try {
    view = addon->allocUnsafeSlow.Call({Napi::Number::New(env, double(bytes))});
  } catch (const Napi::Error&) {
    return nullptr;
  }
  if (!view.IsTypedArray()) return nullptr;
  Napi::TypedArray array = view.As<Napi::TypedArray>();
  Napi::ArrayBuffer buffer = array.ArrayBuffer();
  if (array.ByteOffset() != 0 || buffer.ByteLength() != bytes) return nullptr;
  return buffer;
}

// Large buffers are mostly first touched by the kernel that fills them, one
// page fault per 4 KiB page: 16384 for a 64 MiB result, measured at half the
// reconstruction kernel's own time. With transparent huge pages in "madvise"
// mode, as distributions ship it, asking for 2 MiB pages makes those faults
// 512 times fewer (and TLB misses rarer). Only whole 2 MiB pages inside the
// buffer are advised; where THP is off, madvise fails harmlessly.
void adviseHugePages(void* data, size_t bytes) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  if (bytes < 2 * kHugePage) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

}  // namespace

std::mutex& executionLock(const Backend& backend) {
  static std::mutex cpuLock, cudaLock;
  return backend.device() == Device::Cpu ? cpuLock : cudaLock;
}

Backend& backendFor(const std::string& device) {
  if (device == "cpu") return cpuBackend();
  if (device == "cuda") {
    std::string reason;
    Backend* cuda = cudaBackend(&reason);
    if (!cuda) throw Error("device 'cuda' was requested but CUDA is unavailable: " + reason);
    return *cuda;
  }
  throw Error("unknown device '" + device + "': expected 'cpu' or 'cuda'");
}

Napi::Function Storage::define(Napi::Env env) {
  return DefineClass(
      env, "Storage",
      {InstanceAccessor<&Storage::device>("device"), InstanceAccessor<&Storage::length>("length"),
       InstanceAccessor<&Storage::disposedGetter>("disposed"),
       InstanceAccessor<&Storage::refCount>("refCount"),
       InstanceMethod<&Storage::retainMethod>("retain"),
       InstanceMethod<&Storage::releaseMethod>("release"), InstanceMethod<&Storage::read>("read"),
       InstanceMethod<&Storage::write>("write"), InstanceMethod<&Storage::copyFrom>("copyFrom")});
}

Storage* Storage::from(Napi::Value value, const char* what) {
  if (!value.IsObject() ||
      !value.As<Napi::Object>().InstanceOf(
          value.Env().GetInstanceData<AddonData>()->storageConstructor.Value())) {
    throw Error(std::string(what) + " is not a tensor storage");
  }
  Storage* storage = Unwrap(value.As<Napi::Object>());
  if (storage->disposed()) throw Error(std::string(what) + " has been disposed");
  return storage;
}

Storage::Storage(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Storage>(info) {
  guard(info.Env(), [&] {
    const bool uninitializedGiven = info.Length() == 3 && info[2].IsBoolean();
    if ((info.Length() != 2 && !uninitializedGiven) || !info[0].IsNumber() || !info[1].IsString()) {
      throw Error(
          "Storage(length, device, uninitialized?) takes a number, 'cpu' or 'cuda', and a boolean");
    }
    const double length = info[0].As<Napi::Number>().DoubleValue();
    if (!(length >= 0) || length != double(int64_t(length)) || length > double(kMaxElements)) {
      throw Error("storage length " + info[0].ToString().Utf8Value() +
                  " is not an integer in [0, 2^48]");
    }
    const bool zeroFill = !uninitializedGiven || !info[2].As<Napi::Boolean>().Value();
    backend_ = &backendFor(info[1].As<Napi::String>().Utf8Value());
    length_ = int64_t(length);
    if (backend_->device() == Device::Cpu) {
      allocateHost(info.Env(), zeroFill);
    } else {
      data_ = backend_->allocate(length_);
      Napi::MemoryManagement::AdjustExternalMemory(info.Env(), length_ * int64_t(sizeof(float)));
    }
  });
}

void Storage::allocateHost(Napi::Env env, bool zeroFill) {
  const size_t bytes = size_t(length_) * sizeof(float) + kHostAlignment;
  napi_value buffer = zeroFill ? nullptr : uninitializedBuffer(env, bytes);
  AddonData* addon = env.GetInstanceData<AddonData>();
  if (!buffer) {
    try {
      buffer = addon->arrayBuffer.New({Napi::Number::New(env, double(bytes))});
    } catch (const Napi::Error& e) {
      throw Error("out of host memory allocating a tensor of " + std::to_string(length_) +
                  " floats (" + std::to_string(bytes) + " bytes): " + e.Message());
    }
  }
  void* raw = nullptr;
  size_t byteLength = 0;
  NAPI_THROW_IF_FAILED_VOID(env, napi_get_arraybuffer_info(env, buffer, &raw, &byteLength));
  const uintptr_t start =
      (reinterpret_cast<uintptr_t>(raw) + kHostAlignment - 1) & ~uintptr_t(kHostAlignment - 1);
  addon->weakMapSet.Call(addon->hostBuffers.Value(), {Value(), buffer});
  NAPI_THROW_IF_FAILED_VOID(env, napi_create_reference(env, buffer, 0, &hostBuffer_));
  data_ = reinterpret_cast<float*>(start);
  adviseHugePages(raw, byteLength);
}

void Storage::Finalize(Napi::Env env) {
  freeMemory(env);
  if (hostBuffer_) napi_delete_reference(env, hostBuffer_);
  hostBuffer_ = nullptr;
}

// Runs from finalizers too, possibly while the environment is torn down: it
// must not throw, so N-API statuses are deliberately not turned into Errors.
void Storage::freeMemory(Napi::Env env) {
  if (!data_) return;
  float* const data = data_;
  data_ = nullptr;
  if (backend_->device() == Device::Cpu) {
    // Detaching frees the buffer's memory now. If the buffer was collected with
    // this object (the weak reference is then empty), V8 has freed it already.
    napi_value buffer = nullptr;
    if (napi_get_reference_value(env, hostBuffer_, &buffer) == napi_ok && buffer) {
      napi_detach_arraybuffer(env, buffer);
    }
    return;
  }
  {
    std::lock_guard<std::mutex> lock(executionLock(*backend_));
    backend_->release(data);
  }
  int64_t adjusted = 0;
  napi_adjust_external_memory(env, -length_ * int64_t(sizeof(float)), &adjusted);
}

void Storage::release(Napi::Env env) {
  if (refs_ > 0 && --refs_ == 0) freeMemory(env);
}

Napi::Value Storage::device(const Napi::CallbackInfo& info) {
  if (!backend_) return info.Env().Undefined();
  return Napi::String::New(info.Env(), backend_->device() == Device::Cpu ? "cpu" : "cuda");
}

Napi::Value Storage::length(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), double(length_));
}

Napi::Value Storage::disposedGetter(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), disposed());
}

Napi::Value Storage::refCount(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), refs_);
}

void Storage::retainMethod(const Napi::CallbackInfo& info) {
  guard(info.Env(), [&] {
    if (disposed()) throw Error("cannot retain a disposed storage");
    retain();
  });
}

void Storage::releaseMethod(const Napi::CallbackInfo& info) { release(info.Env()); }

Napi::Value Storage::read(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    if (disposed()) throw Error("cannot read a disposed tensor");
    Napi::Float32Array out = Napi::Float32Array::New(info.Env(), size_t(length_));
    std::lock_guard<std::mutex> lock(executionLock(*backend_));
    backend_->download(out.Data(), data_, length_);
    return out;
  });
}

void Storage::write(const Napi::CallbackInfo& info) {
  guard(info.Env(), [&] {
    if (disposed()) throw Error("cannot write to a disposed tensor");
    if (info.Length() < 1 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
      throw Error("write() takes a Float32Array");
    }
    Napi::Float32Array data = info[0].As<Napi::Float32Array>();
    if (int64_t(data.ElementLength()) != length_) {
      throw Error("write(): the Float32Array has " + std::to_string(data.ElementLength()) +
                  " elements but the storage holds " + std::to_string(length_));
    }
    std::lock_guard<std::mutex> lock(executionLock(*backend_));
    backend_->upload(data_, data.Data(), length_);
  });
}

void Storage::copyFrom(const Napi::CallbackInfo& info) {
  guard(info.Env(), [&] {
    if (disposed()) throw Error("cannot copy into a disposed tensor");
    Storage* source = from(info[0], "copyFrom() source");
    if (source->length_ != length_ || &source->backend() != backend_) {
      throw Error("copyFrom(): source has " + std::to_string(source->length_) + " elements on " +
                  source->backend().name() + ", target has " + std::to_string(length_) + " on " +
                  backend_->name());
    }
    std::lock_guard<std::mutex> lock(executionLock(*backend_));
    backend_->copy(data_, source->data_, length_);
  });
}

}  // namespace binding
}  // namespace tera
