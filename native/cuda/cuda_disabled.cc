// The CUDA backend of a CPU-only build: never available, and says why.
#include "core/backend.h"

namespace tera {

namespace {
const char* kReason =
    "this binary was built without CUDA (nvcc was not found at build time, or TERA_CUDA=0)";
}

Backend* cudaBackend(std::string* reason) {
  if (reason) *reason = kReason;
  return nullptr;
}

CudaStatus cudaStatus() {
  CudaStatus status;
  status.reason = kReason;
  return status;
}

}  // namespace tera
