// Binding-wide helpers: per-addon data and the guard that turns any C++
// exception into a JavaScript Error, so no input can take the process down.
#pragma once

#include <napi.h>

#include <exception>
#include <string>

namespace tera {
namespace binding {

struct AddonData {
  Napi::FunctionReference* storageConstructor = nullptr;
  ~AddonData() { delete storageConstructor; }
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
