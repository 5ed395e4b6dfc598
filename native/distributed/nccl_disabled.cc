// NCCL in a CPU-only build: never available, and every call says why.
#include "core/errors.h"
#include "distributed/nccl_comm.h"

namespace tera {
namespace distributed {
namespace {

const char* kReason =
    "this binary was built without CUDA (nvcc was not found at build time, or TERA_CUDA=0), so "
    "it has no NCCL support";

[[noreturn]] void unavailable() { throw Error(kReason); }

}  // namespace

NcclStatus ncclStatus() {
  NcclStatus status;
  status.reason = kReason;
  return status;
}

std::string ncclUniqueId() { unavailable(); }
std::string ncclDeviceBusId() { unavailable(); }
void ncclInit(const std::string&, int, int) { unavailable(); }
void ncclDestroy() {}
void ncclAllReduce(Backend&, float*, int64_t, ReduceOp, double) { unavailable(); }
void ncclBroadcast(Backend&, float*, int64_t, int, double) { unavailable(); }

}  // namespace distributed
}  // namespace tera
