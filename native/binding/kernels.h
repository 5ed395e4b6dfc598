// The kernel entry points of the addon. Each kernel is described once as a
// "prepared job" (validated arguments plus the work to run, see job.h); the
// synchronous entry runs it at once, the *Async entry runs it on a libuv worker
// thread and returns a Promise.
#pragma once

#include <napi.h>

namespace tera {
namespace binding {

void registerKernels(Napi::Env env, Napi::Object exports);

}  // namespace binding
}  // namespace tera
