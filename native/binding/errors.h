// Binding-wide helpers: per-addon data and the guard that turns any C++
// exception into a JavaScript Error, so no input can take the process down.
#pragma once

#include <napi.h>

#include <exception>
#include <string>

namespace tera {
namespace binding {

struct AddonData {
  Napi::FunctionReference storageConstructor;
  // CPU storages' ArrayBuffers, keyed by the storage object: a WeakMap that no
  // JavaScript code can reach, so a buffer lives exactly as long as its storage
  // and nobody else can detach or transfer it (see storage.h).
  Napi::ObjectReference hostBuffers;
  Napi::FunctionReference weakMapSet;
  // The ArrayBuffer constructor (zero-filled; throws a RangeError when memory
  // runs out, where napi_create_arraybuffer would abort the process) and
  // Buffer.allocUnsafeSlow, the one way to get an ArrayBuffer Node does not
  // zero-fill, for outputs a kernel overwrites entirely.
  Napi::FunctionReference arrayBuffer;
  Napi::FunctionReference allocUnsafeSlow;
};

template <typename Body>
auto guard(Napi::Env env, Body body) -> decltype(body()) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw Napi::Error::New(env, "out of memory");
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

}  // namespace binding
}  // namespace tera
