// Division by a run-time constant by multiply and shift (Granlund-Montgomery,
// as in CUTLASS's FastDivmod): built on the host by the planners, applied in
// the kernels' shared-memory index maps (fastDiv in kernel_common.cuh).
#pragma once

#include <cstdint>

namespace tera {
namespace cuda {

// n / d == (n * mul) >> (32 + shr) for 0 <= n < 2^31; d == 1 needs no multiply.
struct FastDiv {
  uint32_t d = 1, mul = 0, shr = 0;
};

inline FastDiv makeFastDiv(uint32_t d) {
  FastDiv f;
  f.d = d;
  if (d > 1) {
    uint32_t log2Ceil = 0;
    while ((uint64_t(1) << log2Ceil) < d) ++log2Ceil;
    const uint32_t p = 31 + log2Ceil;
    f.mul = uint32_t(((uint64_t(1) << p) + d - 1) / d);
    f.shr = p - 32;
  }
  return f;
}

}  // namespace cuda
}  // namespace tera
