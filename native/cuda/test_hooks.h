// Hooks that the native tests use to steer the CUDA backend; plain C++ (no CUDA
// headers), defined by the CUDA backend and, as no-ops, by CPU-only builds.
#pragma once

#include <cstdint>

namespace tera {
namespace cuda {

// Caps the shared memory per block that the fused Tucker planner may use, so
// that small shapes reach the plans large ones need; 0 restores the device's
// limit. Returns the limit now in force in bytes (0 without a CUDA backend).
int capSharedMemoryForTesting(int bytes);

// Caps every grid at `blocks` blocks, so that small sizes run the kernels'
// grid-stride loops; 0 removes the cap. Returns the cap now in force.
int capGridForTesting(int blocks);

// Free and total device memory in bytes; false without a CUDA backend.
bool deviceMemory(int64_t* freeBytes, int64_t* totalBytes);

}  // namespace cuda
}  // namespace tera
