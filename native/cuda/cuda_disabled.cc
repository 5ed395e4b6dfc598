// The CUDA backend of a CPU-only build: never available, and says why.
#include "core/backend.h"
#include "cuda/test_hooks.h"

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

namespace cuda {

int capSharedMemoryForTesting(int) { return 0; }

int capGridForTesting(int) { return 0; }

bool deviceMemory(int64_t*, int64_t*) { return false; }

}  // namespace cuda

}  // namespace tera
