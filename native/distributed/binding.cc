// See binding.h.
#include "distributed/binding.h"

#include <string>

#include "binding/errors.h"
#include "core/errors.h"
#include "distributed/nccl_comm.h"
#include "distributed/nccl_loader.h"

namespace tera {
namespace distributed {
namespace {

using binding::guard;

// ncclStatus() -> { available, reason?, library?, version? }
Napi::Value status(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const NcclStatus s = ncclStatus();
    Napi::Object out = Napi::Object::New(info.Env());
    out.Set("available", s.available);
    if (!s.available) out.Set("reason", s.reason);
    if (s.available) {
      out.Set("library", s.library);
      out.Set("version", s.version);
    }
    return out;
  });
}

// ncclUniqueId() -> Uint8Array of kNcclUniqueIdBytes
Napi::Value uniqueId(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    const std::string id = ncclUniqueId();
    Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), id.size());
    for (size_t i = 0; i < id.size(); ++i) out[i] = uint8_t(id[i]);
    return out;
  });
}

Napi::Value deviceBusId(const Napi::CallbackInfo& info) {
  return guard(info.Env(),
               [&]() -> Napi::Value { return Napi::String::New(info.Env(), ncclDeviceBusId()); });
}

// ncclInit(uniqueId: Uint8Array, rank, size): blocks until every rank joined.
Napi::Value init(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    if (info.Length() != 3 || !info[0].IsTypedArray() ||
        info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
        info[0].As<Napi::Uint8Array>().ElementLength() != size_t(kNcclUniqueIdBytes) ||
        !info[1].IsNumber() || !info[2].IsNumber()) {
      throw Error("ncclInit(uniqueId, rank, size) takes a Uint8Array of " +
                  std::to_string(kNcclUniqueIdBytes) + " bytes and two integers");
    }
    Napi::Uint8Array id = info[0].As<Napi::Uint8Array>();
    const double rank = info[1].As<Napi::Number>().DoubleValue();
    const double size = info[2].As<Napi::Number>().DoubleValue();
    if (rank != double(int(rank)) || size != double(int(size))) {
      throw Error("ncclInit: rank and size must be integers");
    }
    ncclInit(std::string(reinterpret_cast<const char*>(id.Data()), id.ByteLength()), int(rank),
             int(size));
    return info.Env().Undefined();
  });
}

Napi::Value destroy(const Napi::CallbackInfo& info) {
  return guard(info.Env(), [&]() -> Napi::Value {
    ncclDestroy();
    return info.Env().Undefined();
  });
}

}  // namespace

void registerDistributed(Napi::Env env, Napi::Object exports) {
  exports.Set("ncclStatus", Napi::Function::New(env, status));
  exports.Set("ncclUniqueId", Napi::Function::New(env, uniqueId));
  exports.Set("ncclDeviceBusId", Napi::Function::New(env, deviceBusId));
  exports.Set("ncclInit", Napi::Function::New(env, init));
  exports.Set("ncclDestroy", Napi::Function::New(env, destroy));
}

}  // namespace distributed
}  // namespace tera
